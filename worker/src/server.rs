//! The worker's own gRPC server: `grpc.health.v1`, so that Kubernetes can probe the worker,
//! and the ring all-reduce's `CollectiveService` (worker → worker) on the same port.
//!
//! Health: the `liveness` service is SERVING while the process serves at all; the overall
//! status (service `""`, what a probe without a service name asks) is SERVING only while the
//! worker is registered with a coordinator that answers its heartbeats, so a readiness probe
//! on it says whether the worker can take part in jobs.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::WorkerConfig;
use crate::error::WorkerError;

/// The health service name that stays SERVING while the process serves.
pub use graft_common::net::LIVENESS_SERVICE;

/// The worker's readiness as its health service reports it.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
}

impl Readiness {
    /// SERVING (registered, the coordinator answers) or NOT_SERVING.
    pub async fn set(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

/// The server, bound but not yet serving.
pub struct WorkerServer {
    /// The bound address (the real port when configured with port 0).
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl WorkerServer {
    /// Binds `listen` so that a port in use stops the start before the worker registers.
    ///
    /// # Errors
    /// [`WorkerError::Setup`] naming the address.
    pub async fn bind(cfg: &WorkerConfig) -> Result<Self, WorkerError> {
        let addr = cfg
            .listen_addr()
            .map_err(|e| WorkerError::Setup(e.to_string()))?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            WorkerError::Setup(format!(
                "listen: cannot bind {addr}: {e} (port 0 picks a free port)"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| WorkerError::Setup(format!("listen: {e}")))?;
        if let Some(f) = &cfg.ready_file {
            graft_common::fs::write_atomic(f, addr.to_string().as_bytes())
                .map_err(|e| WorkerError::Setup(format!("ready_file: {e}")))?;
        }
        Ok(Self { addr, listener })
    }

    /// Starts serving until `shutdown` is cancelled; the worker starts NOT_SERVING.
    pub async fn start(
        self,
        shutdown: CancellationToken,
        collective: crate::ring::CollectiveApi,
        cluster_token: Option<&str>,
    ) -> (Readiness, tokio::task::JoinHandle<()>) {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        tracing::info!(addr = %self.addr, "worker serving health and the ring");
        let links = (collective.inbox(), collective.wait());
        // Peers send the cluster token, as workers do to the coordinator.
        let collective = tonic::service::interceptor::InterceptedService::new(
            graft_proto::v1::collective_service_server::CollectiveServiceServer::new(collective)
                .max_decoding_message_size(graft_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(graft_proto::MAX_MESSAGE_BYTES),
            graft_common::auth::TokenCheck::new(cluster_token),
        );
        // What the services are, for grpcurl-style tools; it says nothing of a job, so it needs
        // no token. The descriptors are built in: failing here would be a build defect, and
        // the ring serves without reflection rather than not at all.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(graft_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Only what this server serves (graft.proto also holds the coordinator's).
            .with_service_name("graft.v1.CollectiveService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .build_v1()
            .inspect_err(|e| tracing::error!(error = %e, "no gRPC reflection"))
            .ok();
        // Ring links (raw TCP) and gRPC share the port: the links are served apart.
        let incoming = crate::ring::split_incoming(self.listener, links.0, links.1);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .initial_stream_window_size(crate::ring::RING_WINDOW)
                .initial_connection_window_size(crate::ring::RING_WINDOW)
                .max_frame_size(Some(1 << 20))
                .add_service(health)
                .add_optional_service(reflection)
                .add_service(collective)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the worker's gRPC server stopped");
            }
        });
        (Readiness { reporter }, task)
    }
}
