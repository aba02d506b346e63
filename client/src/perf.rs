//! `graft bench allreduce` and `graft bench train`: figures for docs/PERFORMANCE.md.
//!
//! `allreduce` starts W real processes on loopback (`graft-worker bench-peer`, hidden) that sum a
//! gradient of S bytes with graft's ring (over raw TCP links or gRPC streams between their own
//! servers) or star (a real coordinator's ReduceGradients), and in the same run stream raw bytes round the same
//! ring over plain TCP, every link busy at once: the transport's bound on this machine,
//! against which the ring's bus bandwidth is read.
//!
//! `train` runs a whole job through a local coordinator and W workers on generated data and
//! reads rank 0's step breakdown from the job's progress events.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use graft_common::bench::PeerReport;
use graft_proto::v1 as pb;
use graft_transfer::JobSpec;
use serde::{Deserialize, Serialize};

use crate::local::{LocalCluster, LocalOptions};

/// One all-reduce configuration's figures, as `--json` prints them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AllReduceRow {
    /// `ring` or `star`.
    pub algorithm: String,
    /// The ring's transport, `tcp` or `grpc` (the star's is always gRPC).
    #[serde(default)]
    pub transport: String,
    /// Processes.
    pub workers: usize,
    /// Gradient bytes.
    pub bytes: u64,
    /// Median seconds of one all-reduce (the slowest rank of each iteration).
    pub seconds: f64,
    /// bytes / seconds, GiB/s.
    pub algbw_gib_s: f64,
    /// algbw · 2(W−1)/W (nccl-tests' bus bandwidth).
    pub busbw_gib_s: f64,
    /// Raw TCP round the same ring, every link busy: bytes per second per link, GiB/s.
    pub baseline_gib_s: f64,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A moons MLP whose trainable parameters are `n` values give or take a few: the star
/// reduces exactly the network's gradient, so the bench job is sized to the bytes asked.
fn star_spec(n: usize, workers: usize, steps: usize) -> anyhow::Result<(JobSpec, usize)> {
    // 2 inputs, hidden [k, m], 2 classes: 2k + k + km + m + 2m + 2 parameters (one layer of
    // k when that is enough; widths are capped at 65 536).
    let (hidden, len) = if n < 5 * 1024 {
        let h = (n.saturating_sub(2) / 5).max(1);
        (format!("[{h}]"), 5 * h + 2)
    } else {
        let k = 1024;
        let m = ((n - 3 * k - 2) / (k + 3)).max(1);
        (format!("[{k}, {m}]"), 3 * k + k * m + 3 * m + 2)
    };
    let text = format!(
        r#"
name = "bench-star"
allreduce = "star"
[model]
kind = "mlp"
hidden = {hidden}
[method]
kind = "supervised"
[[datasets]]
name = "moons"
role = "source"
samples = 1000
[[datasets]]
name = "moons"
split = "test"
role = "eval"
samples = 10
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = {workers}
steps = {steps}
fingerprint_interval = 1000000
[workers]
min = {workers}
max = {workers}
"#
    );
    Ok((toml::from_str(&text)?, len))
}

/// Runs one configuration: W peers, their reports combined.
///
/// # Errors
/// When a peer fails; its stderr is in the message.
pub async fn allreduce_once(
    algorithm: &str,
    transport: &str,
    workers: usize,
    bytes: u64,
    iters: usize,
) -> anyhow::Result<AllReduceRow> {
    let exe = crate::local::sibling_binary("graft-worker")?;
    let dir = tempfile::tempdir()?;
    let mut n = (bytes / 4) as usize;
    let mut cluster = None;
    if algorithm == "star" {
        let (spec, len) = star_spec(n, workers, iters + 2)?;
        n = len;
        let state = dir.path().join("coordinator");
        let c = LocalCluster::start(&LocalOptions {
            workers: 0,
            device: "cpu",
            state_dir: &state,
            heartbeat_timeout_ms: 600_000,
            // In a temporary directory, read by no one.
            log_format: graft_common::logging::LogFormat::Plain,
            regroup_timeout_ms: None,
            max_restarts: 0,
        })?;
        let mut client = crate::Client::connect(&c.url, None).await?;
        client.submit(&spec).await?;
        cluster = Some(c);
    }
    let real_bytes = (n * 4) as u64;
    let mut children = Vec::new();
    for r in 0..workers {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench-peer", "--rank", &r.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(["--bytes", &real_bytes.to_string()])
            .args(["--iters", &iters.to_string()])
            .args(["--algorithm", algorithm])
            .args(["--transport", transport])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = &cluster {
            cmd.args(["--coordinator", &c.url]);
        }
        children.push(cmd.spawn().context("starting a bench peer")?);
    }
    let mut reports = Vec::new();
    for (r, child) in children.into_iter().enumerate() {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
        if !out.status.success() {
            bail!(
                "peer {r} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let rep: PeerReport = serde_json::from_str(line.trim())
            .with_context(|| format!("peer {r} printed {line:?}"))?;
        reports.push(rep);
    }
    drop(cluster);
    let slowest = |f: fn(&PeerReport) -> &Vec<f64>| -> Vec<f64> {
        (0..iters)
            .map(|i| {
                reports
                    .iter()
                    .filter_map(|p| f(p).get(i).copied())
                    .fold(0.0, f64::max)
            })
            .collect()
    };
    let seconds = median(&mut slowest(|p| &p.reduce_s));
    let tcp = median(&mut slowest(|p| &p.tcp_s));
    let gib = (1u64 << 30) as f64;
    let algbw = real_bytes as f64 / seconds / gib;
    Ok(AllReduceRow {
        algorithm: algorithm.to_string(),
        transport: if algorithm == "star" {
            "grpc".to_string()
        } else {
            transport.to_string()
        },
        workers,
        bytes: real_bytes,
        seconds,
        algbw_gib_s: algbw,
        busbw_gib_s: algbw * 2.0 * (workers as f64 - 1.0) / workers as f64,
        baseline_gib_s: real_bytes as f64 / tcp / gib,
    })
}

/// Parses `4KiB`, `16MiB`, `1048576`.
///
/// # Errors
/// A clear message naming the text.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((t, 1));
    let v: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4KiB, 16MiB or 1048576"))?;
    let b = v * mult;
    if b < 4 || !b.is_multiple_of(4) {
        return Err(format!(
            "{s:?}: sizes are whole f32 values (a multiple of 4 bytes)"
        ));
    }
    Ok(b)
}

/// Timed iterations for a size: more for small ones, whose times are noisy.
pub fn iters_for(bytes: u64) -> usize {
    ((256u64 << 20) / bytes.max(1)).clamp(5, 50) as usize
}

/// One `graft bench train` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainRow {
    /// `mlp` or `dann`.
    pub workload: String,
    /// Workers.
    pub workers: usize,
    /// Their device.
    pub device: String,
    /// `ring` or `star`.
    pub allreduce: String,
    /// The ring's transport, `tcp` or `grpc`.
    #[serde(default)]
    pub ring_transport: String,
    /// Training samples per second over the group (the first stream's).
    pub samples_per_s: f64,
    /// Rank 0's medians, milliseconds per step.
    pub step_ms: f64,
    /// Forward and backward.
    pub compute_ms: f64,
    /// Gradients into flat buckets.
    pub flatten_ms: f64,
    /// Waiting for the all-reduce beyond the flattening.
    pub comm_ms: f64,
    /// The optimizer's update.
    pub optimizer_ms: f64,
    /// The rest of the step (drawing the batches, rank 0's report): the median of each step's
    /// remainder, since medians of the phases need not add up to the median step.
    pub other_ms: f64,
    /// Steps measured (after the warm-up).
    pub steps: usize,
}

/// The job of a workload: the issue's fixed recipes on generated data.
///
/// # Errors
/// For an unknown workload.
pub fn train_spec(
    workload: &str,
    workers: usize,
    steps: u64,
    allreduce: &str,
) -> anyhow::Result<(JobSpec, u64)> {
    let w = workers as u64;
    let text = match workload {
        // 784-512-512-10, ReLU, cross-entropy, SGD momentum 0.9, 128 per worker.
        "mlp" => format!(
            r#"
name = "bench-mlp"
seed = 1
allreduce = "{allreduce}"
[model]
kind = "mlp"
hidden = [512, 512]
[method]
kind = "supervised"
[[datasets]]
name = "random"
role = "source"
samples = {samples}
[[datasets]]
name = "random"
split = "test"
role = "eval"
samples = 100
[optimizer]
kind = "sgd"
lr = 0.01
momentum = 0.9
[training]
global_batch_size = {batch}
steps = {steps}
fingerprint_interval = 50
[workers]
min = {workers}
max = {workers}
"#,
            batch = 128 * w,
            samples = (128 * w * 20).min(100_000),
        ),
        // The digits CNN with the DANN domain head (768 -> 100 -> 1), 64 + 64 per worker.
        "dann" => format!(
            r#"
name = "bench-dann"
seed = 1
allreduce = "{allreduce}"
[model]
kind = "digits_cnn"
[method]
kind = "dann"
domain_hidden = [100]
target_batch_size = {batch}
[[datasets]]
name = "random"
role = "source"
samples = {samples}
[[datasets]]
name = "random"
split = "test"
role = "target_unlabelled"
samples = {samples}
[[datasets]]
name = "random"
split = "test"
role = "eval"
samples = 100
[optimizer]
kind = "sgd"
lr = 0.01
momentum = 0.9
[schedule]
kind = "dann"
[training]
global_batch_size = {batch}
steps = {steps}
fingerprint_interval = 50
[workers]
min = {workers}
max = {workers}
"#,
            batch = 64 * w,
            samples = (64 * w * 20).min(100_000),
        ),
        other => bail!("unknown workload {other:?}: mlp or dann"),
    };
    let spec: JobSpec = toml::from_str(&text)?;
    let batch = spec.training.global_batch_size as u64;
    Ok((spec, batch))
}

/// Runs a workload through a local coordinator and `workers` workers and reads rank 0's
/// step breakdown off the progress events.
///
/// # Errors
/// When the cluster cannot start or the job does not complete.
pub async fn train(
    workload: &str,
    workers: usize,
    device: &str,
    steps: u64,
    allreduce: &str,
    ring_transport: graft_transfer::spec::RingTransport,
) -> anyhow::Result<TrainRow> {
    let (mut spec, batch) = train_spec(workload, workers, steps, allreduce)?;
    spec.ring_transport = ring_transport;
    let dir = tempfile::tempdir()?;
    let mut cluster = LocalCluster::start(&LocalOptions {
        workers,
        device,
        state_dir: dir.path(),
        heartbeat_timeout_ms: 30_000,
        // In a temporary directory, read by no one.
        log_format: graft_common::logging::LogFormat::Plain,
        regroup_timeout_ms: None,
        // A bench reports a process that stopped (`exited`) rather than restart it.
        max_restarts: 0,
    })?;
    let mut client = crate::Client::connect(&cluster.url, None).await?;
    let job = client.submit(&spec).await?;
    let mut events = client.watch(&job.id).await?;
    // The first steps pay for shard transfers and warm caches.
    let warm = (steps / 5).max(3);
    let mut rows: Vec<pb::StepTimes> = Vec::new();
    let mut first_at: Option<(Instant, u64)> = None;
    let mut last_at: Option<(Instant, u64)> = None;
    loop {
        let ev = tokio::select! {
            e = events.message() => e?,
            () = tokio::time::sleep(Duration::from_secs(2)) => {
                let gone = cluster.exited();
                if !gone.is_empty() {
                    bail!("a local process stopped:\n{}", gone.join("\n"));
                }
                continue;
            }
        };
        let Some(ev) = ev else { break };
        match ev.event {
            Some(pb::job_event::Event::Progress(p)) if p.step > warm => {
                let now = Instant::now();
                if first_at.is_none() {
                    first_at = Some((now, p.step));
                }
                last_at = Some((now, p.step));
                if let Some(t) = p.times {
                    rows.push(t);
                }
            }
            Some(pb::job_event::Event::Finished(j)) => {
                if let Some(e) = ended_badly(&j) {
                    bail!("{e}");
                }
                break;
            }
            _ => {}
        }
    }
    let (Some((t0, s0)), Some((t1, s1))) = (first_at, last_at) else {
        bail!("the job reported no progress after {warm} warm-up steps");
    };
    let samples_per_s = if s1 > s0 {
        (s1 - s0) as f64 * batch as f64 / (t1 - t0).as_secs_f64()
    } else {
        f64::NAN
    };
    let col = |f: fn(&pb::StepTimes) -> f64| median(&mut rows.iter().map(f).collect::<Vec<_>>());
    Ok(TrainRow {
        workload: workload.to_string(),
        workers,
        device: device.to_string(),
        allreduce: allreduce.to_string(),
        ring_transport: ring_transport.name().to_string(),
        samples_per_s,
        step_ms: col(|t| t.step_ms),
        compute_ms: col(|t| t.compute_ms),
        flatten_ms: col(|t| t.flatten_ms),
        comm_ms: col(|t| t.comm_ms),
        optimizer_ms: col(|t| t.optimizer_ms),
        other_ms: col(|t| t.step_ms - t.compute_ms - t.flatten_ms - t.comm_ms - t.optimizer_ms),
        steps: rows.len(),
    })
}

/// Why a bench job that ended did not complete, with its state spelt as graft spells it;
/// `None` when it completed.
fn ended_badly(j: &pb::Job) -> Option<String> {
    let state = pb::JobState::try_from(j.state).unwrap_or_default();
    (state != pb::JobState::Completed).then(|| {
        format!(
            "the bench job ended {}: {}",
            graft_common::wire::state_name(state),
            j.reason
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bench_job_names_its_state() {
        let j = pb::Job {
            state: pb::JobState::Failed as i32,
            reason: "a worker left".into(),
            ..Default::default()
        };
        // It printed the enum's number: "the bench job ended 5: a worker left".
        assert_eq!(
            ended_badly(&j).as_deref(),
            Some("the bench job ended FAILED: a worker left")
        );
        let done = pb::Job {
            state: pb::JobState::Completed as i32,
            ..Default::default()
        };
        assert_eq!(ended_badly(&done), None);
    }

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("4KiB"), Ok(4096));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("3").unwrap_err().contains("multiple of 4"));
        assert!(parse_bytes("lots").unwrap_err().contains("\"lots\""));
    }

    #[test]
    fn workloads_are_the_issues_recipes() {
        let (mlp, b) = train_spec("mlp", 2, 10, "ring").expect("mlp");
        assert_eq!(b, 256);
        assert_eq!(
            mlp.model,
            graft_transfer::spec::ModelSpec::Mlp {
                hidden: vec![512, 512]
            }
        );
        let (_, b) = train_spec("dann", 2, 10, "star").expect("dann");
        assert_eq!(b, 128);
        assert!(train_spec("resnet", 2, 10, "ring").is_err());
        let (star, n) = star_spec(1 << 18, 4, 5).expect("star");
        assert_eq!(star.allreduce, graft_transfer::spec::AllReduce::Star);
        assert!((n as i64 - (1 << 18)).abs() < 2000, "{n}");
        let (_, n) = star_spec(64 << 20, 4, 5).expect("star");
        assert!((n as i64 - (64 << 20)).abs() < 70_000, "{n}");
    }
}
