//! The graft coordinator: it owns the jobs, forms worker groups, plans the shards, runs the
//! star all-reduce, evaluates and checkpoints.
//!
//! - [`config`]: configuration (file, `GRAFT_COORDINATOR_*`, flags).
//! - [`admission`]: what a `Register` may say, and the probe of the worker's address.
//! - [`state`]: the jobs and membership as one owner — a plain `State`, `Event`s and the
//!   pure transition `apply` that turns them into `Action`s.
//! - [`core`]: the shell that stamps events with the time, applies them under one lock and
//!   runs their actions (the store, the watchers, the curves).
//! - [`service`]: the gRPC adapters (`JobService`, `ClusterService`).
//! - [`reduce`]: one step's star all-reduce.
//! - [`rescue`]: a group below `workers.min` has its survivors' state checkpointed.
//! - [`upload`]: evaluation, checkpoint and completion from rank 0's state.
//! - [`initial`]: the evaluation before the first step (`evaluation.at_start`).
//! - [`checkpoint`]: atomic, verified checkpoints.
//! - [`export`]: a checkpoint's weights in PyTorch's layout.
//! - [`store`]: the embedded job store (redb).
//! - [`jobdata`]: a job's datasets, network and stages.
//! - [`job`]: the persisted job record.
//! - [`plot`]: training curves as SVG and PNG.
//! - [`tensorboard`]: TensorBoard event files of each job's steps and evaluations.
//! - [`metrics`]: the Prometheus `/metrics` endpoint.
//! - [`server`]: binding, serving, and the orderly shutdown.
//! - [`error`]: the coordinator's errors and their gRPC codes.
//!
//! Wire conversions, auth, TLS and logging live in `graft-common`, which the workers and
//! the client share.

pub mod admission;
pub mod checkpoint;
pub mod config;
pub mod core;
pub mod error;
pub mod export;
pub mod initial;
pub mod job;
pub mod jobdata;
pub mod metrics;
pub mod plot;
pub mod reduce;
pub mod rescue;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod tensorboard;
pub mod upload;

#[cfg(test)]
mod testing;

pub use config::{CoordinatorArgs, CoordinatorConfig};
pub use error::CoordinatorError;

/// The coordinator's entry point (`graft-coordinator`).
///
/// # Errors
/// A configuration, binding or serving error, for the binary to print.
pub async fn main_with(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&args)?;
    if args.check_config {
        println!("{}", toml::to_string_pretty(&config.redacted())?);
        return Ok(());
    }
    graft_common::logging::init(config.log_format, "info");
    server::run(config).await?;
    Ok(())
}
