//! `graft-worker`: computes gradients for the jobs the coordinator assigns.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "graft-worker",
    version,
    about = "graft worker: the gradient loop of data-parallel transfer learning"
)]
struct Cli {
    #[command(flatten)]
    args: graft_worker::WorkerArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = graft_worker::main_with(cli.args).await {
        eprintln!("graft-worker: {e:#}");
        std::process::exit(1);
    }
}
