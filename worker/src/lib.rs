//! The graft worker: it registers with the coordinator, takes assignments, and runs the
//! gradient loop of each on its own thread.
//!
//! - [`config`]: configuration (file, `GRAFT_WORKER_*`, flags).
//! - [`agent`]: registration, heartbeats, the assignment loop.
//! - [`replica`]: a job's parameters, optimizer state and progress on this worker; it
//!   outlives the group it trains in.
//! - [`group`]: one generation of the group — rank, world, reducer, shards.
//! - [`handover`]: a survivor's replica served to the workers of the next generation.
//! - [`reducer`]: the [`Reducer`](reducer::Reducer) interface, star and ring.
//! - [`trainer`]: one job's step loop.
//! - [`rpc`]: chunked calls to the coordinator (shards, gradients, state).
//! - [`server`]: the worker's own gRPC server (health, the ring's collective service).
//! - [`ring`]: the ring all-reduce between workers.
//! - [`bench_peer`]: one process of `graft bench allreduce`.
//! - [`error`]: the worker's errors.

pub mod agent;
pub mod bench_peer;
pub mod config;
pub mod error;
pub mod group;
pub mod handover;
pub mod reducer;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod trainer;

pub use config::{WorkerArgs, WorkerConfig};

/// The worker's entry point (`graft-worker`).
///
/// # Errors
/// A configuration or start-up error, for the binary to print.
pub async fn main_with(args: WorkerArgs) -> anyhow::Result<()> {
    let config = WorkerConfig::load(&args)?;
    if args.check_config {
        let shown = WorkerConfig {
            cluster_token: config
                .cluster_token
                .as_ref()
                .map(|_| "<redacted>".to_string()),
            ..config.clone()
        };
        println!("{}", toml::to_string_pretty(&shown)?);
        return Ok(());
    }
    graft_common::logging::init(config.log_format, "info");
    let server = server::WorkerServer::bind(&config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        graft_common::signal::wait_for_signal().await;
        tracing::info!("shutting down");
        s.cancel();
    });
    let serve_stop = tokio_util::sync::CancellationToken::new();
    let timeout = std::time::Duration::from_millis(config.collective_timeout_ms);
    let inbox = std::sync::Arc::new(ring::Inbox::default());
    let handover = handover::Handover::default();
    let probe_key = graft_common::group_key::random().map_err(|e| anyhow::anyhow!(e))?;
    let peer = agent::Peer {
        probe_key,
        addr: config.advertise.clone().unwrap_or_else(|| {
            if server.addr.ip().is_unspecified() {
                format!(":{}", server.addr.port())
            } else {
                server.addr.to_string()
            }
        }),
        inbox: inbox.clone(),
        bearer: graft_common::auth::Bearer::new(config.cluster_token.as_deref())
            .map_err(|e| anyhow::anyhow!("cluster_token: {e}"))?,
        timeout,
        handover: handover.clone(),
    };
    let collective = ring::CollectiveApi::new(inbox.clone(), timeout)
        .with_handover(handover)
        .with_probe_key(probe_key);
    let (ready, serving) = server
        .start(
            serve_stop.clone(),
            collective,
            config.cluster_token.as_deref(),
        )
        .await;
    let outcome = agent::run(config, shutdown, ready, peer).await;
    // In-flight ring streams would otherwise hold the server's graceful stop.
    inbox.stop();
    serve_stop.cancel();
    let _ = serving.await;
    outcome?;
    Ok(())
}
