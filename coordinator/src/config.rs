//! The coordinator's configuration: a TOML file, then `GRAFT_COORDINATOR_*` environment
//! variables, then flags. Unknown keys are errors.

use std::path::PathBuf;

use graft_transfer::device::DeviceName;
use serde::{Deserialize, Serialize};

use graft_common::JobId;
pub use graft_common::config::{ConfigError, layered};
use graft_common::logging::LogFormat;

/// Everything the coordinator reads at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address to serve on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Address of the Prometheus `/metrics` endpoint (none: not served).
    pub metrics_listen: Option<String>,
    /// Where the job store and checkpoints live.
    pub state_dir: PathBuf,
    /// Where the datasets are (overridden by `GRAFT_DATA_DIR`).
    pub data_dir: PathBuf,
    /// A worker silent this long is lost: its group re-forms without it.
    pub heartbeat_timeout_ms: u64,
    /// How long a job whose group fell below `workers.min` waits in RECONFIGURING for
    /// workers before it fails.
    pub regroup_timeout_ms: u64,
    /// How often workers send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// How long a job that could start with fewer than `workers.max` waits for more.
    pub gather_window_ms: u64,
    /// A reduction that waits longer than this for the rest of the group fails its job.
    pub step_timeout_ms: u64,
    /// Bearer token clients must send (none: no check).
    pub api_token: Option<String>,
    /// Bearer token workers must send (none: no check).
    pub cluster_token: Option<String>,
    /// Serve TLS with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// After binding, write the address here (for tools that start the coordinator on port 0).
    pub ready_file: Option<PathBuf>,
    /// On SIGTERM, how long to wait for every running job's checkpoint before exiting.
    pub shutdown_grace_ms: u64,
    /// Where evaluation runs: `cpu` (flex), `libtorch-cpu` or `cuda:N` (the `tch` build). The
    /// workers' devices are their own; parameters reach the coordinator as host `f32`.
    pub eval_device: String,
    /// The cluster's size: no more workers than this are registered at once, and a job
    /// whose `workers.min` exceeds it is refused at submission (it could never start).
    pub max_workers: u32,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7070".into(),
            metrics_listen: None,
            state_dir: PathBuf::from("graft-state"),
            data_dir: PathBuf::from("../shared/data"),
            heartbeat_timeout_ms: 5_000,
            regroup_timeout_ms: 600_000,
            heartbeat_interval_ms: 500,
            gather_window_ms: 1_000,
            step_timeout_ms: 300_000,
            api_token: None,
            cluster_token: None,
            tls_cert: None,
            tls_key: None,
            ready_file: None,
            shutdown_grace_ms: 30_000,
            eval_device: "cpu".into(),
            max_workers: 1024,
            log_format: LogFormat::Plain,
        }
    }
}

/// The coordinator's flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoordinatorArgs {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to serve on.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Directory for the job store and checkpoints.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Directory of the datasets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Heartbeat timeout in milliseconds.
    #[arg(long)]
    pub heartbeat_timeout_ms: Option<u64>,
    /// How long a group below `workers.min` waits for workers, in milliseconds.
    #[arg(long)]
    pub regroup_timeout_ms: Option<u64>,
    /// The cluster's size: no more workers are registered at once.
    #[arg(long)]
    pub max_workers: Option<u32>,
    /// Serve TLS with this certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Write the bound address to this file once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Device evaluation runs on: cpu, libtorch-cpu, cuda:N.
    #[arg(long)]
    pub eval_device: Option<String>,
    /// `plain` or `json`.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Check the configuration, print it and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl CoordinatorConfig {
    /// File, then `GRAFT_COORDINATOR_*`, then flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming what is wrong.
    pub fn load(args: &CoordinatorArgs) -> Result<Self, ConfigError> {
        let mut c: CoordinatorConfig = layered(args.config.as_deref(), "GRAFT_COORDINATOR")?;
        if let Some(v) = &args.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &args.metrics_listen {
            c.metrics_listen = Some(v.clone());
        }
        if let Some(v) = &args.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &args.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = args.heartbeat_timeout_ms {
            c.heartbeat_timeout_ms = v;
        }
        if let Some(v) = args.max_workers {
            c.max_workers = v;
        }
        if let Some(v) = args.regroup_timeout_ms {
            c.regroup_timeout_ms = v;
        }
        if let Some(v) = &args.tls_cert {
            c.tls_cert = Some(v.clone());
        }
        if let Some(v) = &args.tls_key {
            c.tls_key = Some(v.clone());
        }
        if let Some(v) = &args.ready_file {
            c.ready_file = Some(v.clone());
        }
        if let Some(v) = &args.eval_device {
            c.eval_device = v.clone();
        }
        if let Some(v) = args.log_format {
            c.log_format = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks value ranges.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "listen: {:?} is not an address like 0.0.0.0:7070",
                self.listen
            )));
        }
        if let Some(m) = &self.metrics_listen
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError(format!(
                "metrics_listen: {m:?} is not an address like 0.0.0.0:9090"
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError(
                "tls_cert and tls_key: give both or neither".into(),
            ));
        }
        if self.step_timeout_ms == 0 {
            return Err(ConfigError("step_timeout_ms: must be > 0".into()));
        }
        if self.shutdown_grace_ms == 0 {
            return Err(ConfigError("shutdown_grace_ms: must be > 0".into()));
        }
        if self.max_workers == 0 {
            return Err(ConfigError("max_workers: must be > 0".into()));
        }
        // At start-up, so that a coordinator that cannot evaluate does not accept jobs.
        self.eval_device()?;
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError("heartbeat_interval_ms: must be > 0".into()));
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError(
                "heartbeat_timeout_ms: must be > heartbeat_interval_ms".into(),
            ));
        }
        for (k, v) in [
            ("api_token", &self.api_token),
            ("cluster_token", &self.cluster_token),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError(format!(
                    "{k}: must not be empty (leave it unset for no check)"
                )));
            }
        }
        Ok(())
    }

    /// The device evaluation runs on.
    ///
    /// # Errors
    /// [`ConfigError`] naming `eval_device` when the name is unknown, or the device is not
    /// built into this binary or not present here.
    pub fn eval_device(&self) -> Result<burn::tensor::Device, ConfigError> {
        self.eval_device
            .parse::<DeviceName>()
            .and_then(DeviceName::device)
            .map_err(|e| ConfigError(format!("eval_device: {e}")))
    }

    /// The configuration as `--check-config` prints it: tokens redacted.
    pub fn redacted(&self) -> Self {
        let hide = |t: &Option<String>| t.as_ref().map(|_| "<redacted>".to_string());
        Self {
            api_token: hide(&self.api_token),
            cluster_token: hide(&self.cluster_token),
            ..self.clone()
        }
    }

    /// Where the datasets are: `GRAFT_DATA_DIR` wins over `data_dir`.
    pub fn datasets_dir(&self) -> PathBuf {
        crate::jobdata::data_dir(&self.data_dir)
    }

    /// A job's directory under the state directory.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.state_dir.join("jobs").join(&job.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_device_is_checked_at_load_naming_the_key() {
        let ok = CoordinatorConfig::default();
        assert!(ok.validate().is_ok());
        assert!(ok.eval_device().is_ok(), "cpu (flex) is always there");
        let unknown = CoordinatorConfig {
            eval_device: "gpu".into(),
            ..CoordinatorConfig::default()
        };
        let e = unknown.validate().expect_err("unknown device").to_string();
        assert!(e.contains("eval_device") && e.contains("\"gpu\""), "{e}");
        let absent = CoordinatorConfig {
            eval_device: "cuda:4096".into(),
            ..CoordinatorConfig::default()
        };
        let e = absent
            .validate()
            .expect_err("no such device here")
            .to_string();
        assert!(e.contains("eval_device") && e.contains("cuda:4096"), "{e}");
    }
}
