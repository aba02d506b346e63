//! The typed client library: a `JobService` connection with the API token, and calls that
//! take and return domain types.

use graft_common::auth::Bearer;
use graft_common::wire::spec_to_pb;
use graft_proto::MAX_MESSAGE_BYTES;
use graft_proto::v1 as pb;
use graft_proto::v1::job_service_client::JobServiceClient;
use graft_transfer::JobSpec;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator cannot be reached.
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The coordinator answered with an error.
    #[error("{0}")]
    Status(String),
    /// Something local.
    #[error("{0}")]
    Local(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            tonic::Code::InvalidArgument => "invalid argument",
            tonic::Code::NotFound => "not found",
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::FailedPrecondition => "refused",
            tonic::Code::Unavailable => "unavailable",
            _ => "error",
        };
        ClientError::Status(format!("{code}: {}", s.message()))
    }
}

/// A connection to a coordinator's `JobService`.
#[derive(Clone)]
pub struct Client {
    inner: JobServiceClient<InterceptedService<Channel, Bearer>>,
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:7070`) with an optional API token.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no connection can be made within a few seconds.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Self, ClientError> {
        Self::connect_tls(url, token, None).await
    }

    /// Connects to `url`, trusting the CA certificate `tls_ca` (PEM) for `https://`.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no connection can be made within a few seconds.
    pub async fn connect_tls(
        url: &str,
        token: Option<&str>,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let endpoint = graft_common::tls::client_endpoint(url, tls_ca)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(graft_common::tls::chain(&e)))?;
        let bearer = Bearer::new(token).map_err(|e| ClientError::Local(e.to_string()))?;
        let inner = JobServiceClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { inner })
    }

    /// Submits a job.
    ///
    /// # Errors
    /// [`ClientError::Status`] naming the field the coordinator refused.
    pub async fn submit(&mut self, spec: &JobSpec) -> Result<pb::Job, ClientError> {
        let r = self
            .inner
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec_to_pb(spec)),
                spec_toml: String::new(),
            })
            .await?;
        r.into_inner()
            .job
            .ok_or_else(|| ClientError::Local("empty answer".into()))
    }

    /// One job.
    ///
    /// # Errors
    /// [`ClientError::Status`] for an unknown job.
    pub async fn get(&mut self, id: &str) -> Result<pb::Job, ClientError> {
        let r = self
            .inner
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await?;
        r.into_inner()
            .job
            .ok_or_else(|| ClientError::Local("empty answer".into()))
    }

    /// Every job.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list(&mut self) -> Result<Vec<pb::Job>, ClientError> {
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .inner
                .list_jobs(pb::ListJobsRequest {
                    page_size: 0,
                    page_token,
                })
                .await?
                .into_inner();
            jobs.extend(page.jobs);
            if page.next_page_token.is_empty() {
                return Ok(jobs);
            }
            page_token = page.next_page_token;
        }
    }

    /// Deletes a finished job and its files.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delete(&mut self, id: &str) -> Result<pb::Job, ClientError> {
        self.inner
            .delete_job(pb::DeleteJobRequest { job_id: id.into() })
            .await?
            .into_inner()
            .job
            .ok_or_else(|| ClientError::Local("empty answer".into()))
    }

    /// Cancels a job.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn cancel(&mut self, id: &str) -> Result<pb::Job, ClientError> {
        let r = self
            .inner
            .cancel_job(pb::CancelJobRequest { job_id: id.into() })
            .await?;
        r.into_inner()
            .job
            .ok_or_else(|| ClientError::Local("empty answer".into()))
    }

    /// The job's event stream.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn watch(&mut self, id: &str) -> Result<tonic::Streaming<pb::JobEvent>, ClientError> {
        Ok(self.watch_status(id).await?)
    }

    /// [`Client::watch`] with the call's status as it came, so that a caller can tell a
    /// coordinator that is away (and will come back) from one that refuses.
    ///
    /// # Errors
    /// The call's status.
    pub async fn watch_status(
        &mut self,
        id: &str,
    ) -> Result<tonic::Streaming<pb::JobEvent>, tonic::Status> {
        Ok(self
            .inner
            .watch_job(pb::WatchJobRequest { job_id: id.into() })
            .await?
            .into_inner())
    }

    /// The job's checkpoints.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn checkpoints(&mut self, id: &str) -> Result<Vec<pb::CheckpointInfo>, ClientError> {
        Ok(self
            .inner
            .list_checkpoints(pb::ListCheckpointsRequest { job_id: id.into() })
            .await?
            .into_inner()
            .checkpoints)
    }

    /// The weights of a checkpoint (the latest without `step`), as safetensors bytes in
    /// `format`'s layout.
    ///
    /// # Errors
    /// [`ClientError`] when there is no such checkpoint, the network has no such layout or
    /// the stream is inconsistent.
    pub async fn export(
        &mut self,
        id: &str,
        step: Option<u64>,
        format: pb::ExportFormat,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let mut s = self
            .inner
            .export_model(pb::ExportModelRequest {
                job_id: id.into(),
                step,
                format: format.into(),
            })
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        let mut total = None;
        let mut at_step = 0;
        while let Some(m) = s.message().await? {
            if m.offset != bytes.len() as u64 {
                return Err(ClientError::Local(format!(
                    "export stream jumped to byte {} at {}",
                    m.offset,
                    bytes.len()
                )));
            }
            total = Some(m.total_bytes);
            at_step = m.step;
            bytes.extend_from_slice(&m.data);
        }
        if total != Some(bytes.len() as u64) {
            return Err(ClientError::Local(format!(
                "export ended after {} of {:?} bytes",
                bytes.len(),
                total
            )));
        }
        Ok((at_step, bytes))
    }
}
