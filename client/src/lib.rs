//! The graft client: a typed library over `JobService` and the `graft` CLI.
//!
//! - [`api`]: the typed client.
//! - [`jobfile`]: job files (TOML plus `GRAFT_JOB_*` overrides).
//! - [`watch`]: following a job with a progress bar.
//! - [`summary`]: the JSON line and the human summary of a finished job.
//! - [`local`]: a coordinator and workers as child processes (`graft local`, `graft demo`).
//! - [`demo`]: the built-in demonstration jobs.

pub mod api;
pub mod bench;
pub mod chaos;
pub mod demo;
pub mod jobfile;
pub mod local;
pub mod perf;
pub mod summary;
pub mod watch;

pub use api::{Client, ClientError};
