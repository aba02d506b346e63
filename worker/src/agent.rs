//! The worker's life: connect, register, heartbeat, take assignments one at a time and run
//! each on its own thread; register again when the coordinator forgets it (a restart).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graft_common::auth::Bearer;
use graft_proto::PROTOCOL_VERSION;
use graft_proto::v1 as pb;
use graft_transfer::device::DeviceName;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::handover::Snapshot;
use crate::replica::Replica;
use crate::rpc::{Cluster, cluster};
use crate::server::Readiness;
use crate::trainer::{JobContext, JobEnd, run_job};

/// A replica kept when its group fell apart, and what this worker saw of the fall.
struct Kept {
    replica: Replica,
    /// The generation it trained in.
    generation: u64,
    /// Why the group fell apart.
    why: String,
    /// The neighbour's rank the failure points at, where the ring knows one.
    suspect: Option<u32>,
}

/// The replica a worker names to the coordinator (in `Register` and `NextAssignment`).
fn held_of(kept: &Option<Kept>) -> Option<pb::HeldReplica> {
    kept.as_ref().map(|k| pb::HeldReplica {
        job_id: k.replica.job.clone(),
        generation: k.generation,
        step: k.replica.step,
        fingerprint: k.replica.fingerprint(),
        why: k.why.clone(),
        suspect_rank: k.suspect,
    })
}

/// Whether a job's thread ended because its group fell apart (a neighbour died, the
/// coordinator stopped the generation or re-forms the group) rather than because of this
/// worker: then the replica is kept for the next generation instead of failing the job.
fn group_failed(e: &WorkerError) -> bool {
    match e {
        WorkerError::Ring(_) | WorkerError::Aborted(_) => true,
        // Unavailable: the coordinator went away; a restarted one continues from the
        // replicas its workers still hold.
        // Unknown and Cancelled: the transport broke mid-call (the coordinator was killed
        // with a report in flight), which is the same as Unavailable.
        WorkerError::Rpc { code, .. } => matches!(
            code,
            tonic::Code::Aborted
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// This worker as a ring peer.
#[derive(Clone)]
pub struct Peer {
    /// Where its CollectiveService listens, as sent to the coordinator (`host:port`, or
    /// `:port` for the address the coordinator sees).
    pub addr: String,
    /// Where the service hands over incoming ring streams.
    pub inbox: Arc<crate::ring::Inbox>,
    /// Sent to the neighbours (the cluster token).
    pub bearer: Bearer,
    /// A silent neighbour fails the step after this long.
    pub timeout: Duration,
    /// The replica snapshot the CollectiveService serves to the next generation.
    pub handover: crate::handover::Handover,
    /// The key the CollectiveService answers the coordinator's admission probe with.
    pub probe_key: [u8; graft_common::group_key::KEY_BYTES],
}

/// What the heartbeat task shares with the job loop.
#[derive(Default)]
struct Shared {
    /// The job being trained (empty when idle).
    job: Mutex<String>,
    /// Steps done in it.
    progress: Arc<AtomicU64>,
    /// The generation of the group it trains in.
    generation: AtomicU64,
    /// Set when the coordinator says to stop the current job.
    abort: Arc<AtomicBool>,
    /// Set when the coordinator no longer knows this worker.
    reregister: AtomicBool,
}

async fn connect(cfg: &WorkerConfig) -> Result<Channel, WorkerError> {
    let endpoint = graft_common::tls::client_endpoint(&cfg.coordinator, cfg.tls_ca.as_deref())
        .map_err(|e| WorkerError::Setup(format!("coordinator: {e}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "coordinator not reachable yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(WorkerError::Setup(format!(
                    "cannot reach the coordinator at {}: {}",
                    cfg.coordinator,
                    graft_common::tls::chain(&e)
                )));
            }
        }
    }
}

/// Runs the worker until `shutdown` is cancelled; `ready` reports whether it is registered.
///
/// # Errors
/// [`WorkerError::Setup`] when the coordinator cannot be reached at start-up or the device
/// is unavailable.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: CancellationToken,
    ready: Readiness,
    peer: Peer,
) -> Result<(), WorkerError> {
    let device_name: DeviceName = cfg
        .device
        .parse()
        .map_err(|e: graft_transfer::device::DeviceError| WorkerError::Setup(e.to_string()))?;
    let device = device_name
        .device()
        .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let bearer = Bearer::new(cfg.cluster_token.as_deref())
        .map_err(|e| WorkerError::Setup(format!("cluster_token: {e}")))?;
    let channel = connect(&cfg).await?;
    let mut client = cluster(channel.clone(), bearer.clone());
    // The replica kept when a group fell apart, and the generation it trained in; it
    // outlives a registration, so that a restarted coordinator can continue from it.
    let mut kept: Option<Kept> = None;
    loop {
        let reg = pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            name: cfg.name.clone(),
            device: device_name.to_string(),
            collective_addr: peer.addr.clone(),
            held: held_of(&kept),
            probe_key: peer.probe_key.to_vec(),
        };
        let resp = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = client.register(reg) => r,
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(WorkerError::rpc("Register", s));
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "cannot register; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let worker = resp.worker_id;
        tracing::info!(%worker, name = %cfg.name, device = %device_name, "registered");
        // Every later call proves it is this worker's.
        let mut client = cluster(
            channel.clone(),
            bearer
                .with_worker_secret(&resp.worker_secret)
                .map_err(|e| WorkerError::Protocol(format!("worker secret: {e}")))?,
        );
        ready.set(true).await;
        let shared = Arc::new(Shared::default());
        let beat = Duration::from_millis(resp.heartbeat_interval_ms.max(50));
        let hb_stop = shutdown.child_token();
        let hb = tokio::spawn(heartbeat(
            client.clone(),
            worker.clone(),
            shared.clone(),
            beat,
            hb_stop.clone(),
            ready.clone(),
        ));
        let grace = Duration::from_millis(cfg.shutdown_grace_ms);
        let outcome = serve_assignments(
            &mut client,
            &worker,
            &shared,
            &device,
            &shutdown,
            grace,
            &peer,
            &mut kept,
        )
        .await;
        hb_stop.cancel();
        let _ = hb.await;
        ready.set(false).await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "registering again"),
        }
    }
}

/// Takes assignments until shutdown (`Ok`) or until the worker must register again (`Err`).
#[allow(clippy::too_many_arguments)]
async fn serve_assignments(
    client: &mut Cluster,
    worker: &str,
    shared: &Arc<Shared>,
    device: &burn::tensor::Device,
    shutdown: &CancellationToken,
    grace: Duration,
    peer: &Peer,
    kept: &mut Option<Kept>,
) -> Result<(), WorkerError> {
    loop {
        if shared.reregister.load(Ordering::Relaxed) {
            return Err(WorkerError::Setup(
                "the coordinator no longer knows this worker".into(),
            ));
        }
        let req = pb::NextAssignmentRequest {
            worker_id: worker.to_string(),
            held: held_of(kept),
        };
        let resp = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = client.next_assignment(req) => r,
        };
        let (assignment, drop_held) = match resp {
            Ok(r) => {
                let r = r.into_inner();
                (r.assignment, r.drop_held)
            }
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                return Err(WorkerError::rpc("NextAssignment", s));
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "cannot get an assignment; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if drop_held && let Some(Kept { replica: r, .. }) = kept.take() {
            tracing::info!(job = %r.job, step = r.step, "dropping the replica: its job ended or went on without this worker");
            peer.handover.clear();
        }
        let Some(a) = assignment else { continue };
        let job = a.job_id.clone();
        tracing::info!(%job, rank = a.rank, world = a.world_size, generation = a.generation, start_step = a.start_step, state_from = %a.state_from, "assigned");
        let carried = match kept.take() {
            Some(k) if k.replica.job == job => Some(k.replica),
            Some(_) => {
                // Another job: the old one is over.
                peer.handover.clear();
                None
            }
            None => None,
        };
        if let Ok(mut j) = shared.job.lock() {
            j.clone_from(&job);
        }
        shared.abort.store(false, Ordering::Relaxed);
        shared.progress.store(a.start_step, Ordering::Relaxed);
        shared.generation.store(a.generation, Ordering::Relaxed);
        let generation = a.generation;
        let ctx = JobContext {
            rt: tokio::runtime::Handle::current(),
            cluster: client.clone(),
            worker: worker.to_string(),
            assignment: a,
            abort: shared.abort.clone(),
            progress: shared.progress.clone(),
            device: device.clone(),
            inbox: peer.inbox.clone(),
            bearer: peer.bearer.clone(),
            collective_timeout: peer.timeout,
        };
        let abort = shared.abort.clone();
        let mut task = tokio::task::spawn_blocking(move || run_job(ctx, carried));
        let result = tokio::select! {
            r = &mut task => r,
            _ = shutdown.cancelled() => {
                abort.store(true, Ordering::Relaxed);
                // Tell the coordinator now rather than let it wait for the heartbeat timeout:
                // the group re-forms without this worker.
                let req = pb::LeaveJobRequest { worker_id: worker.to_string(), job_id: job.clone(), reason: "the worker is shutting down".into(), graceful: true };
                let _ = tokio::time::timeout(Duration::from_secs(2), client.leave_job(req)).await;
                // The training thread stops at its next check of `abort` (after the step in
                // flight) or when its call to the coordinator fails; exit once it has, or
                // after the grace period, whichever comes first.
                match tokio::time::timeout(grace, &mut task).await {
                    Ok(_) => tracing::info!(%job, "left the job"),
                    Err(_) => tracing::warn!(%job, grace_ms = grace.as_millis() as u64, "the step in flight did not end within the grace period; exiting anyway"),
                }
                return Ok(());
            }
        };
        let failure = match result {
            Ok(JobEnd { result: Ok(()), .. }) => {
                tracing::info!(%job, "finished my part of the job");
                peer.handover.clear();
                None
            }
            Ok(JobEnd {
                result: Err(WorkerError::Drained(_)),
                ..
            }) => {
                tracing::info!(%job, "stopped with the group for the coordinator's shutdown");
                None
            }
            // The coordinator went away before the replica existed: nobody to tell.
            Ok(JobEnd {
                replica: None,
                result:
                    Err(WorkerError::Rpc {
                        code: tonic::Code::Unavailable,
                        ref status,
                        call,
                    }),
            }) => {
                tracing::warn!(%job, %call, %status, "the coordinator is unavailable; dropping the job");
                None
            }
            Ok(JobEnd {
                replica: Some(replica),
                result: Err(e),
            }) if group_failed(&e) => {
                tracing::info!(%job, step = replica.step, generation, reason = %e, "the group fell apart; keeping the replica for the next generation");
                peer.handover.offer(Snapshot::of(&replica));
                let suspect = match &e {
                    WorkerError::Ring(r) => r.peer().and_then(|p| u32::try_from(p).ok()),
                    _ => None,
                };
                *kept = Some(Kept {
                    replica,
                    generation,
                    why: e.to_string(),
                    suspect,
                });
                None
            }
            // The group failed before this worker had a replica (a joiner whose fetch failed):
            // nothing of its own went wrong, so the group goes on without it.
            Ok(JobEnd {
                replica: None,
                result: Err(e),
            }) if group_failed(&e) => {
                tracing::warn!(%job, reason = %e, "no replica to keep; leaving the group");
                let req = pb::LeaveJobRequest {
                    worker_id: worker.to_string(),
                    job_id: job.clone(),
                    reason: e.to_string(),
                    graceful: true,
                };
                if let Err(s) = client.leave_job(req).await {
                    tracing::debug!(%job, error = %s.message(), "leave not recorded");
                }
                None
            }
            Ok(JobEnd { result: Err(e), .. }) => Some(e.to_string()),
            Err(e) => Some(format!("training thread panicked: {e}")),
        };
        if let Some(reason) = failure {
            tracing::warn!(%job, %reason, "leaving the job");
            let req = pb::LeaveJobRequest {
                worker_id: worker.to_string(),
                job_id: job.clone(),
                reason,
                graceful: false,
            };
            // The job may already have ended (a peer died first); nothing more to do then.
            if let Err(s) = client.leave_job(req).await {
                tracing::debug!(%job, error = %s.message(), "leave not recorded");
            }
        }
        if let Ok(mut j) = shared.job.lock() {
            j.clear();
        }
        shared.generation.store(0, Ordering::Relaxed);
    }
}

async fn heartbeat(
    mut client: Cluster,
    worker: String,
    shared: Arc<Shared>,
    every: Duration,
    stop: CancellationToken,
    ready: Readiness,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let job = shared.job.lock().map(|j| j.clone()).unwrap_or_default();
        let req = pb::HeartbeatRequest {
            worker_id: worker.clone(),
            protocol_version: PROTOCOL_VERSION,
            job_id: job.clone(),
            step: shared.progress.load(Ordering::Relaxed),
            generation: shared.generation.load(Ordering::Relaxed),
        };
        match client.heartbeat(req).await {
            Ok(r) => {
                let r = r.into_inner();
                // Only if still on that job: the answer may arrive after the next job started.
                let still = shared.job.lock().map(|j| *j == job).unwrap_or(false);
                if !job.is_empty() && still && r.abort_jobs.contains(&job) {
                    tracing::warn!(%job, "coordinator stopped the job");
                    shared.abort.store(true, Ordering::Relaxed);
                }
                if r.reregister {
                    shared.reregister.store(true, Ordering::Relaxed);
                    shared.abort.store(true, Ordering::Relaxed);
                }
                ready.set(!r.reregister).await;
            }
            Err(s) => {
                ready.set(false).await;
                tracing::warn!(error = %s.message(), "heartbeat failed");
            }
        }
    }
}
