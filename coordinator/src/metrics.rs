//! Prometheus metrics: a plain-text `/metrics` endpoint on its own port (`metrics_listen`),
//! for scrapers and for the Kubernetes Service. Written by hand — a few counters and gauges
//! in the text exposition format need no metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Coordinator;

/// Counters updated on the step path (atomics: no lock on the hot path).
#[derive(Debug, Default)]
pub struct Counters {
    steps: AtomicU64,
    samples: AtomicU64,
    allreduce_nanos: AtomicU64,
    allreduce_bytes: AtomicU64,
}

impl Counters {
    /// Records a completed reduction round.
    pub fn round(&self, samples: u64, elapsed: Duration, bytes: u64) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples, Ordering::Relaxed);
        self.allreduce_nanos.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        self.allreduce_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One job's gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct JobGauges {
    /// Its id.
    pub id: String,
    /// Its state's name.
    pub state: &'static str,
    /// Steps done.
    pub step: u64,
    /// Steps in all.
    pub total_steps: u64,
    /// Group size.
    pub workers: u32,
    /// Smoothed training throughput.
    pub samples_per_s: f64,
    /// Mean training loss of the latest step the curves kept (every step, or every
    /// `stride`-th of a long job); `None` before the first.
    pub train_loss: Option<f64>,
    /// Training accuracy of that step.
    pub train_accuracy: Option<f64>,
    /// Latest evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// The group's generation.
    pub generation: u64,
    /// How often the group began re-forming, by cause (`lost`, `left`, `group-failed`,
    /// `joining`).
    pub regroups: BTreeMap<String, u64>,
}

/// What a scrape reports besides the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Registered workers.
    pub workers: usize,
    /// Every job.
    pub jobs: Vec<JobGauges>,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of the counters and a snapshot.
pub fn render(c: &Counters, s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "graft_workers",
        "gauge",
        "Registered workers.",
        vec![(String::new(), s.workers as f64)],
    );
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &s.jobs {
        *by_state.entry(j.state).or_default() += 1;
    }
    metric(
        "graft_jobs",
        "gauge",
        "Jobs by state.",
        by_state
            .iter()
            .map(|(k, v)| (format!("{{state=\"{k}\"}}"), *v as f64))
            .collect(),
    );
    metric(
        "graft_steps_total",
        "counter",
        "Synchronous steps completed, all jobs.",
        vec![(String::new(), get(&c.steps))],
    );
    metric(
        "graft_samples_total",
        "counter",
        "Training samples processed, all jobs.",
        vec![(String::new(), get(&c.samples))],
    );
    metric(
        "graft_allreduce_seconds_total",
        "counter",
        "Time from the first rank's gradient to the group's sum, summed over steps.",
        vec![(String::new(), get(&c.allreduce_nanos) / 1e9)],
    );
    metric(
        "graft_allreduce_bytes_total",
        "counter",
        "Gradient bytes moved by the all-reduce, all jobs: the ring's as the ranks send them to their neighbours, the star's as the coordinator receives and sends them.",
        vec![(String::new(), get(&c.allreduce_bytes))],
    );
    let running: Vec<&JobGauges> = s.jobs.iter().filter(|j| j.state == "RUNNING").collect();
    let per_job = |f: &dyn Fn(&JobGauges) -> f64| {
        running
            .iter()
            .map(|j| (format!("{{job=\"{}\"}}", label(&j.id)), f(j)))
            .collect()
    };
    metric(
        "graft_job_step",
        "gauge",
        "Steps done by a running job.",
        per_job(&|j| j.step as f64),
    );
    metric(
        "graft_job_total_steps",
        "gauge",
        "Steps of a running job.",
        per_job(&|j| j.total_steps as f64),
    );
    metric(
        "graft_job_group_size",
        "gauge",
        "Workers in a running job's group.",
        per_job(&|j| j.workers as f64),
    );
    metric(
        "graft_job_samples_per_second",
        "gauge",
        "Training throughput of a running job.",
        per_job(&|j| j.samples_per_s),
    );
    let latest = |f: fn(&JobGauges) -> Option<f64>| {
        s.jobs
            .iter()
            .filter_map(|j| f(j).map(|v| (format!("{{job=\"{}\"}}", label(&j.id)), v)))
            .collect()
    };
    metric(
        "graft_job_train_loss",
        "gauge",
        "Mean training loss of a job's latest step.",
        latest(|j| j.train_loss),
    );
    metric(
        "graft_job_train_accuracy",
        "gauge",
        "Training accuracy of a job's latest step.",
        latest(|j| j.train_accuracy),
    );
    metric(
        "graft_job_generation",
        "gauge",
        "The generation of each job's group: bumped at every membership change.",
        s.jobs
            .iter()
            .map(|j| (format!("{{job=\"{}\"}}", label(&j.id)), j.generation as f64))
            .collect(),
    );
    metric(
        "graft_job_regroups_total",
        "counter",
        "Membership changes that made each job's group re-form, by cause: lost (a worker without heartbeats), left (a graceful leave), group-failed (a member's collective failed), joining (free workers admitted).",
        s.jobs
            .iter()
            .flat_map(|j| {
                j.regroups.iter().map(move |(cause, n)| {
                    (
                        format!("{{job=\"{}\",cause=\"{}\"}}", label(&j.id), label(cause)),
                        *n as f64,
                    )
                })
            })
            .collect(),
    );
    let evals = s
        .jobs
        .iter()
        .flat_map(|j| {
            j.metrics.iter().map(move |(k, v)| {
                (
                    format!("{{job=\"{}\",metric=\"{}\"}}", label(&j.id), label(k)),
                    *v,
                )
            })
        })
        .collect();
    metric(
        "graft_job_evaluation",
        "gauge",
        "Latest evaluation metrics of each job.",
        evals,
    );
    out
}

/// Scrapes served at once; more wait for a place.
const MAX_CONNECTIONS: usize = 16;

/// Longest a scrape may take, reading and writing; a slower client is dropped.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` until `shutdown`.
pub async fn serve(listener: TcpListener, coord: Arc<Coordinator>, shutdown: CancellationToken) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let coord = coord.clone();
        tokio::spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(stream, &coord)).await;
        });
    }
}

/// Answers one request on `stream`. Only the first 4 KiB of the request are read: enough
/// for the request line, which is all that is looked at.
async fn scrape(mut stream: tokio::net::TcpStream, coord: &Coordinator) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let m = stream.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..n]);
    let response = if request.starts_with("GET /metrics ") || request.starts_with("GET / ") {
        let body = render(&coord.counters, &coord.metrics_snapshot());
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_in_the_text_format() {
        let c = Counters::default();
        c.round(128, Duration::from_millis(5), 4096);
        c.round(128, Duration::from_millis(5), 4096);
        let s = Snapshot {
            workers: 2,
            jobs: vec![
                JobGauges {
                    id: "job-1".into(),
                    state: "RUNNING",
                    step: 10,
                    total_steps: 100,
                    workers: 2,
                    samples_per_s: 900.0,
                    train_loss: Some(0.25),
                    train_accuracy: Some(0.875),
                    metrics: BTreeMap::from([("target_accuracy".into(), 0.9)]),
                    generation: 3,
                    regroups: BTreeMap::from([("lost".into(), 1), ("joining".into(), 1)]),
                },
                JobGauges {
                    id: "job-2".into(),
                    state: "COMPLETED",
                    step: 5,
                    total_steps: 5,
                    workers: 1,
                    samples_per_s: 0.0,
                    train_loss: Some(0.5),
                    train_accuracy: Some(0.75),
                    metrics: BTreeMap::new(),
                    generation: 0,
                    regroups: BTreeMap::new(),
                },
                JobGauges {
                    id: "job-3".into(),
                    state: "PENDING",
                    step: 0,
                    total_steps: 5,
                    workers: 0,
                    samples_per_s: 0.0,
                    train_loss: None,
                    train_accuracy: None,
                    metrics: BTreeMap::new(),
                    generation: 0,
                    regroups: BTreeMap::new(),
                },
            ],
        };
        let text = render(&c, &s);
        assert!(text.contains("graft_steps_total 2\n"), "{text}");
        assert!(text.contains("graft_samples_total 256\n"));
        assert!(text.contains("graft_allreduce_seconds_total 0.01\n"));
        assert!(
            text.contains("graft_jobs{state=\"RUNNING\"} 1\n")
                && text.contains("graft_jobs{state=\"COMPLETED\"} 1\n")
        );
        assert!(
            text.contains("graft_job_step{job=\"job-1\"} 10\n")
                && !text.contains("graft_job_step{job=\"job-2\"}")
        );
        assert!(
            text.contains("graft_job_evaluation{job=\"job-1\",metric=\"target_accuracy\"} 0.9\n")
        );
        assert!(text.contains("# TYPE graft_steps_total counter"));
        assert!(
            text.contains("graft_job_generation{job=\"job-1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("graft_job_regroups_total{job=\"job-1\",cause=\"lost\"} 1\n"));
        assert!(text.contains("graft_job_regroups_total{job=\"job-1\",cause=\"joining\"} 1\n"));
        assert!(!text.contains("graft_job_regroups_total{job=\"job-2\""));
        // The latest step's training figures, for every job that has one.
        assert!(
            text.contains("# TYPE graft_job_train_loss gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("graft_job_train_loss{job=\"job-1\"} 0.25\n"),
            "{text}"
        );
        assert!(text.contains("graft_job_train_accuracy{job=\"job-1\"} 0.875\n"));
        assert!(text.contains("graft_job_train_loss{job=\"job-2\"} 0.5\n"));
        assert!(!text.contains("graft_job_train_loss{job=\"job-3\"}"));
        // The ring's bytes count as much as the star's.
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP graft_allreduce_bytes_total "))
            .expect("help line");
        assert!(help.contains("ring") && help.contains("star"), "{help}");
    }
}
