//! The worker's configuration: a TOML file, then `GRAFT_WORKER_*` environment variables,
//! then flags. Unknown keys are errors.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use graft_common::config::{ConfigError, layered};
use graft_common::logging::LogFormat;
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
    /// Address of the worker's own gRPC server (health now, the ring all-reduce later).
    /// An IPv6 host may be written without brackets (`fd00::7:7071`), as Kubernetes'
    /// `$(POD_IP):7071` gives it.
    pub listen: String,
    /// The address ring peers dial to reach this worker's `listen` server (`host:port`).
    /// Unset: the listen address, or — when listening on all interfaces — its port on the
    /// address the coordinator sees the worker's registration come from.
    pub advertise: Option<String>,
    /// A ring neighbour that sends or takes nothing for this long fails the step.
    pub collective_timeout_ms: u64,
    /// After binding, write the address here (for tools that start the worker on port 0).
    pub ready_file: Option<PathBuf>,
    /// On SIGTERM, how long to wait for the step in flight to end before exiting.
    pub shutdown_grace_ms: u64,
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
            listen: "0.0.0.0:7071".into(),
            advertise: None,
            collective_timeout_ms: 30_000,
            ready_file: None,
            shutdown_grace_ms: 10_000,
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
    /// Address of the worker's gRPC server (health), e.g. 0.0.0.0:7071 (port 0: a free one).
    #[arg(long)]
    pub listen: Option<String>,
    /// Write the bound address of the worker's server to this file once serving.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
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
        if let Some(v) = &args.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &args.ready_file {
            c.ready_file = Some(v.clone());
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
        self.listen_addr()?;
        if self.collective_timeout_ms == 0 {
            return Err(ConfigError("collective_timeout_ms: must be > 0".into()));
        }
        if let Some(a) = &self.advertise
            && a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(ConfigError(format!(
                "advertise: {a:?} is not an address like 10.0.0.7:7071"
            )));
        }
        if self.shutdown_grace_ms == 0 {
            return Err(ConfigError("shutdown_grace_ms: must be > 0".into()));
        }
        if self.cluster_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError(
                "cluster_token: must not be empty (leave it unset for no token)".into(),
            ));
        }
        Ok(())
    }

    /// The address to serve on: `listen` as a socket address, or as `HOST:PORT` with an
    /// unbracketed IPv6 host.
    ///
    /// # Errors
    /// [`ConfigError`] naming `listen`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Ok(a) = self.listen.parse() {
            return Ok(a);
        }
        self.listen
            .rsplit_once(':')
            .and_then(|(host, port)| {
                Some(SocketAddr::new(
                    host.parse::<IpAddr>().ok()?,
                    port.parse().ok()?,
                ))
            })
            .ok_or_else(|| {
                ConfigError(format!(
                    "listen: {:?} is not an address like 0.0.0.0:7071",
                    self.listen
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_listen(listen: &str) -> WorkerConfig {
        WorkerConfig {
            listen: listen.into(),
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn listen_takes_ipv4_bracketed_and_bare_ipv6() {
        let port = |l: &str| with_listen(l).listen_addr().map(|a| (a.ip(), a.port()));
        assert_eq!(port("10.1.2.3:7071").unwrap().1, 7071);
        assert_eq!(
            port("[fd00::7]:7071").unwrap(),
            port("fd00::7:7071").unwrap()
        );
        for bad in [
            "",
            "7071",
            "worker-0:7071",
            "10.1.2.3",
            "10.1.2.3:x",
            ":7071",
        ] {
            let e = with_listen(bad).validate().unwrap_err().to_string();
            assert!(e.contains("listen:"), "{bad:?}: {e}");
        }
    }
}
