//! `graft-worker`: computes gradients for the jobs the coordinator assigns.

use clap::Parser;

/// mimalloc keeps freed megabyte buffers for reuse where glibc unmaps them; see the
/// allocator section of docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "graft-worker",
    version,
    about = "graft worker: the gradient loop of data-parallel transfer learning"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    args: graft_worker::WorkerArgs,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// One process of `graft bench allreduce` (started by it).
    #[command(hide = true)]
    BenchPeer(graft_worker::bench_peer::PeerArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Sub::BenchPeer(a)) => graft_worker::bench_peer::run_peer(a).await,
        None => graft_worker::main_with(cli.args).await,
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("graft-worker: {e:#}");
            1
        }
    };
    // Exit now: a training thread still inside its step would otherwise hold the runtime's
    // shutdown past the grace period the worker has already waited.
    std::process::exit(code);
}
