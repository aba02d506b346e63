//! What every graft process shares — the coordinator, the workers and the client — so that
//! none of them needs another's crate.
//!
//! - [`ids`]: the id newtypes that travel in signatures (`JobId`, `WorkerId`, `Rank`,
//!   `Step`, `Generation`).
//! - [`wire`]: proto ↔ domain conversions (job spec, methods, stages, step sums, states).
//! - [`auth`]: bearer tokens, checked in constant time.
//! - [`group_key`]: a group's secret, and the proof each ring stream gives of it.
//! - [`bench`]: what a benchmark peer reports to `graft bench`.
//! - [`tls`]: rustls for servers and clients.
//! - [`logging`]: `tracing` to stderr, plain or JSON.
//! - [`config`]: layered configuration (file, environment, flags).
//! - [`net`]: the no-Nagle listener every server accepts through, and the liveness name.
//! - [`reduce`]: the group's mean gradient, summed in rank order.
//! - [`signal`]: waiting for SIGINT or SIGTERM.
//! - [`fs`]: atomic file writes and checksums.
//! - [`clock`]: wall-clock milliseconds.

pub mod auth;
pub mod bench;
pub mod clock;
pub mod config;
pub mod fs;
pub mod group_key;
pub mod ids;
pub mod logging;
pub mod net;
pub mod reduce;
pub mod signal;
pub mod tls;
pub mod wire;

mod error;

pub use error::CommonError;
pub use ids::{Generation, JobId, Rank, Step, WorkerId};
