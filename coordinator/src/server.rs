//! Serving: binds the address, wires the services, runs the monitor, and on a signal
//! checkpoints the running jobs before it shuts down.
//!
//! Health (`grpc.health.v1`): the `liveness` service is SERVING while the process serves;
//! the overall status (service `""`) and the two graft services are SERVING until the
//! shutdown begins, so a readiness probe takes the coordinator out of its Service while it
//! drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use graft_proto::MAX_MESSAGE_BYTES;
use graft_proto::v1::cluster_service_server::ClusterServiceServer;
use graft_proto::v1::job_service_server::JobServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorConfig;
use crate::core::Coordinator;
use crate::error::CoordinatorError;
use crate::service::cluster::ClusterApi;
use crate::service::jobs::JobApi;
use crate::store::Store;
use graft_common::auth::TokenCheck;
use graft_common::net::{LIVENESS_SERVICE, nodelay_incoming};
use graft_common::signal::wait_for_signal;

/// How often the monitor looks for dead workers and startable jobs.
const TICK: Duration = Duration::from_millis(200);

/// A coordinator bound to its address.
pub struct Server {
    /// The address it serves on (the real port when configured with port 0).
    pub addr: SocketAddr,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    coord: Arc<Coordinator>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    health: tonic_health::server::HealthReporter,
}

impl Server {
    /// Opens the store, resumes its jobs and binds the listen address.
    ///
    /// # Errors
    /// [`CoordinatorError`] when the state directory, the store or the address cannot be used.
    pub async fn bind(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| CoordinatorError::Io {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let store = Store::open(&config.state_dir.join("graft.redb"))?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| CoordinatorError::Io {
                    path: config.listen.clone(),
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| CoordinatorError::Io {
                path: config.listen.clone(),
                source,
            })?;
        // Read the certificate now, so that a bad one stops the start, before anything serves.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(graft_common::tls::server_config(cert, key)?),
            _ => None,
        };
        let metrics = match &config.metrics_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| CoordinatorError::Io {
                        path: addr.clone(),
                        source,
                    })?;
                tracing::info!(addr = %addr, "metrics serving");
                Some(l)
            }
            None => None,
        };
        let coord = Arc::new(Coordinator::new(config, store)?);
        Ok(Self {
            health: tonic_health::server::HealthReporter::new(),
            tls,
            metrics,
            addr,
            listener,
            coord,
        })
    }

    /// Reports NOT_SERVING for the overall status and the graft services (liveness stays
    /// SERVING): the coordinator accepts no new work.
    pub fn health(&self) -> tonic_health::server::HealthReporter {
        self.health.clone()
    }

    /// The coordinator behind the server.
    pub fn coordinator(&self) -> Arc<Coordinator> {
        self.coord.clone()
    }

    /// Serves until `shutdown` is cancelled.
    ///
    /// # Errors
    /// [`CoordinatorError::Internal`] when the transport fails.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
        let coord = self.coord.clone();
        let config = coord.config.clone();
        // Everything that can fail comes first, so that nothing is left running on an error.
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls).map_err(|e| {
                CoordinatorError::Internal(format!("TLS: {}", graft_common::tls::chain(&e)))
            })?;
        }
        let health = self.health.clone();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        health
            .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        health.set_serving::<JobServiceServer<JobApi>>().await;
        health
            .set_serving::<ClusterServiceServer<ClusterApi>>()
            .await;
        // Read past the limit, so that a request over it is answered RESOURCE_EXHAUSTED
        // naming the limit (service::jobs) rather than cut off mid-stream, which clients
        // report as a bare HTTP/2 error.
        let jobs = JobServiceServer::new(JobApi::new(coord.clone(), shutdown.clone()))
            .max_decoding_message_size(crate::service::jobs::READ_LIMIT_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let cluster = ClusterServiceServer::new(ClusterApi::new(coord.clone(), shutdown.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Reflection answers what the services are, never anything of a job, so it needs no
        // token, as health does.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(graft_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Only what this server serves (graft.proto also holds the workers' service).
            .with_service_name("graft.v1.JobService")
            .with_service_name("graft.v1.ClusterService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .build_v1()
            .map_err(|e| CoordinatorError::Internal(format!("reflection: {e}")))?;
        let incoming = nodelay_incoming(self.listener);
        if let Some(f) = &config.ready_file {
            graft_common::fs::write_atomic(f, self.addr.to_string().as_bytes())?;
        }
        tracing::info!(addr = %self.addr, state_dir = %config.state_dir.display(), data_dir = %config.datasets_dir().display(), "coordinator serving");
        let monitor = {
            let coord = coord.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TICK);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = every.tick() => coord.tick(),
                    }
                }
            })
        };
        if let Some(requests) = coord.take_save_requests() {
            tokio::spawn(crate::rescue::run(
                coord.clone(),
                requests,
                shutdown.clone(),
            ));
        }
        if let Some(listener) = self.metrics {
            tokio::spawn(crate::metrics::serve(
                listener,
                coord.clone(),
                shutdown.clone(),
            ));
        }
        let result = builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                jobs,
                TokenCheck::new(config.api_token.as_deref()),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                cluster,
                TokenCheck::new(config.cluster_token.as_deref()),
            ))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        monitor.abort();
        result.map_err(|e| CoordinatorError::Internal(format!("transport: {e}")))
    }
}

/// Runs a coordinator until SIGINT or SIGTERM. On the signal it stops being ready, lets
/// every running job checkpoint after its current step (up to `shutdown_grace_ms`; a second
/// signal cuts that short), then stops serving.
///
/// # Errors
/// [`CoordinatorError`] from binding or serving.
pub async fn run(config: CoordinatorConfig) -> Result<(), CoordinatorError> {
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let server = Server::bind(config).await?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let coord = server.coordinator();
    let health = server.health();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        set_not_serving(&health).await;
        tokio::select! {
            _ = coord.drain(grace) => {}
            _ = wait_for_signal() => tracing::warn!("second signal: exiting without waiting for checkpoints"),
        }
        s.cancel();
    });
    server.serve(shutdown).await
}

async fn set_not_serving(health: &tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::NotServing;
    health.set_service_status("", NotServing).await;
    health.set_not_serving::<JobServiceServer<JobApi>>().await;
    health
        .set_not_serving::<ClusterServiceServer<ClusterApi>>()
        .await;
}
