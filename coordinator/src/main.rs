//! `graft-coordinator`: serves jobs to clients and steps to workers.

use clap::Parser;

/// mimalloc keeps freed megabyte buffers for reuse where glibc unmaps them; see the
/// allocator section of docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "graft-coordinator",
    version,
    about = "graft coordinator: jobs, groups, all-reduce, checkpoints"
)]
struct Cli {
    #[command(flatten)]
    args: graft_coordinator::CoordinatorArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = graft_coordinator::main_with(cli.args).await {
        eprintln!("graft-coordinator: {e:#}");
        std::process::exit(1);
    }
}
