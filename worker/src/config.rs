//! The worker's configuration: a TOML file, then `GRAFT_WORKER_*` environment variables,
//! then flags. Unknown keys are errors.

use std::path::PathBuf;

use graft_coordinator::config::{ConfigError, layered};
use graft_coordinator::logging::LogFormat;
use graft_transfer::device::DeviceName;
use serde::{Deserialize, Serialize};

/// Everything a worker reads at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The coordinator's URL.
    pub coordinator: String,
    /// A name for logs and status (default: host name and process id).
    pub name: String,
    /// `cpu` (flex), `libtorch-cpu` or `cuda:N`.
    pub device: String,
    /// Bearer token for the coordinator's cluster service.
    pub cluster_token: Option<String>,
    /// CA certificate (PEM) to trust for an `https://` coordinator.
    pub tls_ca: Option<PathBuf>,
    /// Give up if the coordinator cannot be reached for this long at start-up.
    pub connect_timeout_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        Self {
            coordinator: "http://127.0.0.1:7070".into(),
            name: format!("{host}-{}", std::process::id()),
            device: "cpu".into(),
            cluster_token: None,
            tls_ca: None,
            connect_timeout_ms: 30_000,
            log_format: LogFormat::Plain,
        }
    }
}

/// The worker's flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The coordinator's URL, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Name for logs and status.
    #[arg(long)]
    pub name: Option<String>,
    /// Device: cpu, libtorch-cpu, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// CA certificate (PEM) to trust for an https:// coordinator.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// `plain` or `json`.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Check the configuration, print it and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl WorkerConfig {
    /// File, then `GRAFT_WORKER_*`, then flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming what is wrong.
    pub fn load(args: &WorkerArgs) -> Result<Self, ConfigError> {
        let mut c: WorkerConfig = layered(args.config.as_deref(), "GRAFT_WORKER")?;
        if let Some(v) = &args.coordinator {
            c.coordinator = v.clone();
        }
        if let Some(v) = &args.name {
            c.name = v.clone();
        }
        if let Some(v) = &args.device {
            c.device = v.clone();
        }
        if let Some(v) = &args.tls_ca {
            c.tls_ca = Some(v.clone());
        }
        if let Some(v) = args.log_format {
            c.log_format = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the values, including that this binary can provide the device.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(ConfigError(format!(
                "coordinator: {:?} must be a URL like http://host:7070",
                self.coordinator
            )));
        }
        let device: DeviceName = self
            .device
            .parse()
            .map_err(|e| ConfigError(format!("device: {e}")))?;
        device
            .device()
            .map_err(|e| ConfigError(format!("device: {e}")))?;
        if self.cluster_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError(
                "cluster_token: must not be empty (leave it unset for no token)".into(),
            ));
        }
        Ok(())
    }
}
