//! `JobService`: what clients call.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use graft_proto::MAX_MESSAGE_BYTES;
use graft_proto::v1 as pb;
use graft_proto::v1::job_service_server::JobService;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::checkpoint::CheckpointDir;
use crate::core::Coordinator;
use crate::error::CoordinatorError;
use crate::initial;
use crate::job::{JobId, JobRecord};
use crate::jobdata::JobData;
use graft_common::wire::spec_from_pb;
use graft_transfer::JobSpec;

/// The job a `SubmitJob` names: its spec message, or its job file's text.
fn spec_of(r: pb::SubmitJobRequest) -> Result<JobSpec, Status> {
    match (r.spec, r.spec_toml.trim().is_empty()) {
        (Some(_), false) => Err(Status::invalid_argument(
            "spec, spec_toml: send one of them, not both",
        )),
        (None, true) => Err(Status::invalid_argument("spec: missing (or spec_toml)")),
        (Some(spec), true) => Ok(spec_from_pb(&spec)?),
        (None, false) => toml::from_str::<JobSpec>(&r.spec_toml)
            .map_err(|e| Status::invalid_argument(format!("spec_toml: {}", e.to_string().trim()))),
    }
}

/// The client-facing service.
pub struct JobApi {
    coord: Arc<Coordinator>,
    /// Cancelled when the server shuts down; ends open `WatchJob` streams so that shutdown
    /// does not wait for jobs to finish.
    shutdown: CancellationToken,
}

impl JobApi {
    /// A service over `coord`.
    pub fn new(coord: Arc<Coordinator>, shutdown: CancellationToken) -> Self {
        Self { coord, shutdown }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        within_limit(req.get_ref())?;
        let spec = spec_of(req.into_inner())?;
        spec.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Before the data is loaded: a job the cluster can never run costs nothing.
        Coordinator::check_admissible(&spec, self.coord.config.max_workers)?;
        let dir = self.coord.config.datasets_dir();
        let spec2 = spec.clone();
        let config = self.coord.config.clone();
        let (data, start) = tokio::task::spawn_blocking(move || {
            let data = JobData::load(&spec2, &dir)?;
            let start = spec2
                .evaluation
                .at_start
                .then(|| initial::evaluate(&config, spec2.seed, &data))
                .transpose()?;
            Ok::<_, CoordinatorError>((data, start))
        })
        .await
        .map_err(|e| Status::internal(format!("loading data: {e}")))??;
        let mut record = self.coord.submit(spec, data)?;
        if let Some(eval) = start {
            // Before any worker can report: the job's first evaluation is this one.
            self.coord
                .evaluated(&record.id, eval, Some(initial::PREFIX.to_string()));
            record = self.coord.get(&record.id.0)?;
        }
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(record.to_pb()),
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let rec = self.coord.get(&req.into_inner().job_id)?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(rec.to_pb()),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let (page, next) = page_of(self.coord.list()?, r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.iter().map(JobRecord::to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let rec = self.coord.delete(&req.into_inner().job_id)?;
        Ok(Response::new(pb::DeleteJobResponse {
            job: Some(rec.to_pb()),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let rec = self.coord.cancel(&req.into_inner().job_id)?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(rec.to_pb()),
        }))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let (record, mut rx) = self.coord.watch(&req.into_inner().job_id)?;
        let shutdown = self.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            let terminal = record.state.is_terminal();
            let snapshot = record.to_pb();
            if tx
                .send(Ok(pb::JobEvent {
                    event: Some(pb::job_event::Event::Snapshot(snapshot.clone())),
                }))
                .await
                .is_err()
            {
                return;
            }
            if terminal {
                let _ = tx
                    .send(Ok(pb::JobEvent {
                        event: Some(pb::job_event::Event::Finished(snapshot)),
                    }))
                    .await;
                return;
            }
            loop {
                let next = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down"))).await;
                        return;
                    }
                };
                match next {
                    Ok(ev) => {
                        let last = matches!(ev.event, Some(pb::job_event::Event::Finished(_)));
                        if tx.send(Ok(ev)).await.is_err() || last {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => tracing::debug!(skipped = n, "watcher lagged"),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let rec = self.coord.get(&req.into_inner().job_id)?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: rec.checkpoints.iter().map(|c| c.to_pb()).collect(),
        }))
    }

    type ExportModelStream = BoxStream<pb::ExportModelResponse>;

    async fn export_model(
        &self,
        req: Request<pb::ExportModelRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let req = req.into_inner();
        let rec = self.coord.get(&req.job_id)?;
        let ckpt = match req.step {
            Some(s) => rec
                .checkpoints
                .iter()
                .find(|c| c.step == s)
                .ok_or_else(|| {
                    let have: Vec<String> =
                        rec.checkpoints.iter().map(|c| c.step.to_string()).collect();
                    Status::not_found(format!(
                        "job {} has no checkpoint at step {s} (has: {})",
                        rec.id,
                        have.join(", ")
                    ))
                })?,
            None => rec.checkpoints.last().ok_or_else(|| {
                Status::not_found(format!("job {} has no checkpoint yet", rec.id))
            })?,
        };
        let step = ckpt.step;
        let dir = CheckpointDir::new(
            self.coord
                .job_dir(&JobId(rec.id.0.clone()))
                .join("checkpoints"),
        );
        let format = pb::ExportFormat::try_from(req.format).map_err(|_| {
            Status::invalid_argument(format!(
                "format {} is not an ExportFormat (0 graft, 1 torch)",
                req.format
            ))
        })?;
        let datasets = self.coord.config.datasets_dir();
        let bytes = tokio::task::spawn_blocking(move || {
            let bytes = dir.model_bytes(step)?;
            match format {
                pb::ExportFormat::Graft => Ok(bytes),
                pb::ExportFormat::Torch => crate::export::torch(&rec, step, &bytes, &datasets),
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)?;
        let total = bytes.len() as u64;
        let chunks: Vec<Result<pb::ExportModelResponse, Status>> = bytes
            .chunks(graft_proto::CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| {
                Ok(pb::ExportModelResponse {
                    data: c.to_vec(),
                    offset: (i * graft_proto::CHUNK_BYTES) as u64,
                    total_bytes: total,
                    step,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// A stream fed by a spawned task through a bounded channel.
pub fn async_stream<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl From<graft_common::wire::WireError> for CoordinatorError {
    fn from(e: graft_common::wire::WireError) -> Self {
        CoordinatorError::InvalidSpec {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// How much of one request the server reads before it cuts the stream: a request between
/// [`MAX_MESSAGE_BYTES`] and this is read whole and refused with a clear answer.
pub const READ_LIMIT_BYTES: usize = 4 * MAX_MESSAGE_BYTES;

/// Refuses a request over [`MAX_MESSAGE_BYTES`], naming the limit.
///
/// # Errors
/// `RESOURCE_EXHAUSTED`.
fn within_limit(m: &impl prost::Message) -> Result<(), Status> {
    let n = m.encoded_len();
    if n > MAX_MESSAGE_BYTES {
        return Err(Status::resource_exhausted(format!(
            "the request is {n} bytes; the coordinator takes at most {MAX_MESSAGE_BYTES} bytes \
             ({} MiB) per message",
            MAX_MESSAGE_BYTES >> 20
        )));
    }
    Ok(())
}

/// Jobs in one answer when the request names no page size, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The page of `all` (oldest first) after `token`, and the token of the next page. A token
/// is the creation time and id of the page's last job, so pages stay right while jobs are
/// submitted or deleted between calls.
fn page_of(
    all: Vec<JobRecord>,
    size: u32,
    token: &str,
) -> Result<(Vec<JobRecord>, String), Status> {
    let size = match size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let key = |r: &JobRecord| (r.created_unix_ms, r.id.0.len(), r.id.0.clone());
    let after = if token.is_empty() {
        None
    } else {
        let (ms, id) = token
            .split_once('/')
            .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "page_token: {:?} is not a token a ListJobs answer gave",
                    token.escape_debug().to_string()
                ))
            })?;
        Some((ms, id.len(), id.to_string()))
    };
    let mut rest: Vec<JobRecord> = all
        .into_iter()
        .filter(|r| after.as_ref().is_none_or(|a| key(r) > *a))
        .collect();
    let next = if rest.len() > size {
        rest.truncate(size);
        rest.last()
            .map(|r| format!("{}/{}", r.created_unix_ms, r.id.0))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((rest, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_job_once_in_order_and_a_bad_token_is_refused() {
        let all: Vec<JobRecord> = (0..7u64)
            .map(|i| {
                let mut r = JobRecord::new(
                    JobId(format!("job-{i}-x")),
                    crate::testing::moons_spec((1, 1), 1),
                    1,
                );
                r.created_unix_ms = 1_000 + i / 2;
                r
            })
            .collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = page_of(all.clone(), 3, &token).expect("page");
            assert!(page.len() <= 3);
            seen.extend(page.into_iter().map(|r| r.id.0));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        let want: Vec<String> = all.iter().map(|r| r.id.0.clone()).collect();
        assert_eq!(seen, want);
        let (page, next) = page_of(all.clone(), 0, "").expect("default size");
        assert_eq!((page.len(), next.as_str()), (7, ""));
        let e = page_of(all, 3, "nonsense").expect_err("bad token");
        assert!(e.message().starts_with("page_token"), "{e:?}");
    }
}
