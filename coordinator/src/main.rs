//! `graft-coordinator`: serves jobs to clients and steps to workers.

use clap::Parser;

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
