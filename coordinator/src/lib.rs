//! The graft coordinator: it owns the jobs, forms worker groups, plans the shards, runs the
//! star all-reduce, evaluates and checkpoints.
//!
//! - [`config`]: configuration (file, `GRAFT_COORDINATOR_*`, flags).
//! - [`core`]: the state and its transitions — workers, jobs, groups, rounds.
//! - [`service`]: the gRPC adapters (`JobService`, `ClusterService`).
//! - [`reduce`]: one step's star all-reduce.
//! - [`upload`]: evaluation, checkpoint and completion from rank 0's state.
//! - [`checkpoint`]: atomic, verified checkpoints.
//! - [`store`]: the embedded job store (redb).
//! - [`jobdata`]: a job's datasets, network and stages.
//! - [`job`]: the persisted job record.
//! - [`plot`]: training curves as SVG.
//! - [`metrics`]: the Prometheus `/metrics` endpoint.
//! - [`wire`]: proto ↔ domain conversions, shared with the worker and the client.
//! - [`auth`], [`tls`], [`logging`], [`server`], [`error`].

pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod core;
pub mod error;
pub mod job;
pub mod jobdata;
pub mod logging;
pub mod metrics;
pub mod plot;
pub mod reduce;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod upload;
pub mod wire;

#[cfg(test)]
mod testing;

pub use config::{CoordinatorArgs, CoordinatorConfig};
pub use error::CoordinatorError;

/// Entry point shared by `graft-coordinator` and `graft coordinator`.
///
/// # Errors
/// A configuration, binding or serving error, for the binary to print.
pub async fn main_with(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&args)?;
    if args.check_config {
        println!("{}", toml::to_string_pretty(&config.redacted())?);
        return Ok(());
    }
    logging::init(config.log_format, "info");
    server::run(config).await?;
    Ok(())
}
