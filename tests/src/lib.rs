//! Helpers for the multi-process tests in `tests/tests/`: real binaries on port 0, killed
//! for real.
//!
//! The binaries are the ones built next to the test executable (`cargo test --release`
//! builds them with the workspace); a missing one is a clear panic, not a skipped test.

pub mod python;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory of the workspace's binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    for b in ["graft", "graft-coordinator", "graft-worker"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the workspace first (cargo build --release --workspace)",
            dir.join(b).display()
        );
    }
    dir
}

/// A binary of the workspace.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Where the shared datasets are.
pub fn data_dir() -> PathBuf {
    std::env::var_os("GRAFT_DATA_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")),
        PathBuf::from,
    )
}

/// A coordinator and workers started by hand, as a user would.
pub struct Cluster {
    /// The coordinator's URL.
    pub url: String,
    /// Its state directory.
    pub state: PathBuf,
    coordinator: Option<Child>,
    /// Worker processes by index.
    pub workers: Vec<Option<Child>>,
    /// Keeps the temporary directory alive.
    pub tmp: tempfile::TempDir,
    heartbeat_timeout_ms: u64,
    listen: String,
    extra_args: Vec<String>,
}

impl Cluster {
    /// A coordinator on a free port with `workers` workers.
    pub fn start(workers: usize, heartbeat_timeout_ms: u64) -> Self {
        Self::start_on("127.0.0.1:0", workers, heartbeat_timeout_ms)
    }

    /// A coordinator on a fixed port (so that a restarted one is found again by the workers).
    pub fn start_on_fixed_port(workers: usize, heartbeat_timeout_ms: u64) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(&format!("127.0.0.1:{port}"), workers, heartbeat_timeout_ms)
    }

    /// A coordinator on a free port with extra flags, and `workers` workers.
    pub fn start_with_args(workers: usize, heartbeat_timeout_ms: u64, args: &[&str]) -> Self {
        Self::start_full("127.0.0.1:0", workers, heartbeat_timeout_ms, args)
    }

    /// A coordinator listening on `listen` (an address other processes can reach, such as
    /// a veth's, with port 0 for a free one) with extra flags, and `workers` workers.
    pub fn start_listening(
        listen: &str,
        workers: usize,
        heartbeat_timeout_ms: u64,
        args: &[&str],
    ) -> Self {
        Self::start_full(listen, workers, heartbeat_timeout_ms, args)
    }

    fn start_on(listen: &str, workers: usize, heartbeat_timeout_ms: u64) -> Self {
        Self::start_full(listen, workers, heartbeat_timeout_ms, &[])
    }

    fn start_full(listen: &str, workers: usize, heartbeat_timeout_ms: u64, args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        let mut c = Cluster {
            url: String::new(),
            state,
            coordinator: None,
            workers: Vec::new(),
            tmp,
            heartbeat_timeout_ms,
            listen: listen.to_string(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        c.start_coordinator();
        for _ in 0..workers {
            c.add_worker();
        }
        c
    }

    /// (Re)starts the coordinator on the same state directory.
    pub fn start_coordinator(&mut self) {
        let ready = self.tmp.path().join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("coordinator.log"))
            .expect("log file");
        let child = Command::new(bin("graft-coordinator"))
            .args([
                "--listen",
                &self.listen,
                "--heartbeat-timeout-ms",
                &self.heartbeat_timeout_ms.to_string(),
            ])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--data-dir")
            .arg(data_dir())
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.extra_args)
            .env_remove("GRAFT_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start graft-coordinator");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&ready)
                && !a.is_empty()
            {
                self.url = format!("http://{a}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not start: {}",
                self.log("coordinator")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts one more worker; returns its index.
    pub fn add_worker(&mut self) -> usize {
        self.add_worker_with(&[])
    }

    /// Starts one more worker with extra flags (`--device libtorch-cpu`, say); returns its
    /// index.
    pub fn add_worker_with(&mut self, args: &[&str]) -> usize {
        self.add_worker_via(&[], "127.0.0.1:0", args)
    }

    /// Starts one more worker whose server listens on `listen`, run through the command
    /// `wrapper` when it is not empty (`ip netns exec NS`, which execs the worker, so that
    /// the child is the worker itself); returns its index.
    pub fn add_worker_via(&mut self, wrapper: &[&str], listen: &str, args: &[&str]) -> usize {
        let i = self.workers.len();
        let log = std::fs::File::create(self.tmp.path().join(format!("worker-{i}.log")))
            .expect("log file");
        let worker = bin("graft-worker");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&worker);
                c
            }
            None => Command::new(&worker),
        };
        let child = cmd
            .args([
                "--coordinator",
                &self.url,
                "--name",
                &format!("test-worker-{i}"),
                "--listen",
                listen,
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start graft-worker");
        self.workers.push(Some(child));
        i
    }

    /// Kills worker `i` with SIGKILL.
    pub fn kill_worker(&mut self, i: usize) {
        if let Some(mut c) = self.workers[i].take() {
            c.kill().expect("kill worker");
            c.wait().expect("reap worker");
        }
    }

    /// The process id of worker `i` (which must be running).
    pub fn worker_pid(&self, i: usize) -> libc::pid_t {
        let c = self.workers[i].as_ref().expect("worker running");
        libc::pid_t::try_from(c.id()).expect("pid")
    }

    /// Sends `signal` (`libc::SIGSTOP`, `libc::SIGCONT`, …) to worker `i`.
    pub fn signal_worker(&self, i: usize, signal: libc::c_int) {
        let pid = self.worker_pid(i);
        // SAFETY: kill(2) on a child this process started and has not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill -{signal} {pid}");
    }

    /// Whether worker `i` is still running (not exited, whatever signals it was sent).
    pub fn worker_alive(&mut self, i: usize) -> bool {
        self.workers[i]
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends SIGTERM to the coordinator and waits up to `within` for it to exit.
    pub fn terminate_coordinator(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.coordinator.take().expect("coordinator running");
        terminate(&mut c, within)
            .unwrap_or_else(|| panic!("coordinator still running {within:?} after SIGTERM"))
    }

    /// Sends SIGTERM to worker `i` and waits up to `within` for it to exit.
    pub fn terminate_worker(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let mut c = self.workers[i].take().expect("worker running");
        terminate(&mut c, within)
            .unwrap_or_else(|| panic!("worker {i} still running {within:?} after SIGTERM"))
    }

    /// Kills the coordinator.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            c.kill().expect("kill coordinator");
            c.wait().expect("reap coordinator");
        }
    }

    /// A process's log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs `graft <args>` against this coordinator with extra environment variables.
    pub fn graft_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin("graft"))
            .arg("--coordinator")
            .arg(&self.url)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run graft")
    }

    /// Runs `graft <args>` against this coordinator.
    pub fn graft(&self, args: &[&str]) -> Output {
        Command::new(bin("graft"))
            .arg("--coordinator")
            .arg(&self.url)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run graft")
    }

    /// Writes a job file into the temporary directory.
    pub fn job_file(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        let mut f = std::fs::File::create(&p).expect("job file");
        f.write_all(toml.as_bytes()).expect("write job file");
        p
    }

    /// `graft status ID --json`, parsed.
    pub fn status(&self, id: &str) -> serde_json::Value {
        let out = self.graft(&["status", id, "--json"]);
        last_json(&out)
    }

    /// Writes a job file, submits it with `--watch --json`, checks that it completed and
    /// returns the summary.
    pub fn complete(&self, file: &str, job: &str) -> serde_json::Value {
        let path = self.job_file(file, job);
        let out = self.graft(&["submit", path.to_str().expect("utf-8"), "--watch", "--json"]);
        let r = last_json(&out);
        assert_eq!(r["state"], "COMPLETED", "{file}: {}", show(&out));
        r
    }
}

/// Seed of [`small_mnist_job`], for tests that rebuild its initial parameters.
pub const SMALL_MNIST_SEED: u64 = 11;

/// The small job most multi-process tests run: an MLP with one hidden layer of 64 on the
/// first 3,000 MNIST training images, evaluated on 500 test images, with a fingerprint every
/// 5 steps so that workers can be compared.
pub fn small_mnist_job(name: &str, workers: u32, steps: u64, allreduce: &str) -> String {
    format!(
        r#"
name = "{name}"
seed = {SMALL_MNIST_SEED}
allreduce = "{allreduce}"
[model]
kind = "mlp"
hidden = [64]
[method]
kind = "supervised"
[[datasets]]
name = "mnist"
split = "train"
role = "source"
limit = 3000
[[datasets]]
name = "mnist"
split = "test"
role = "eval"
limit = 500
[optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.9
[training]
global_batch_size = 60
steps = {steps}
fingerprint_interval = 5
[workers]
min = {workers}
max = {workers}
"#
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.workers.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_coordinator();
    }
}

/// The last stdout line of a command, as JSON.
pub fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON line in stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

/// Stdout and stderr, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The largest difference of two tensors relative to the largest magnitude of the first.
pub fn max_relative_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "tensor lengths differ");
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; `None` (and a SIGKILL)
/// if it did not.
pub fn terminate(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on a child this process started and has not reaped yet.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM {pid}");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The `grpc.health.v1` status of `service` ("" for the server as a whole) at `addr`, as
/// its proto name (`SERVING`, `NOT_SERVING`, …), or the error when the check fails.
pub fn health(addr: &str, service: &str) -> Result<String, String> {
    use tonic_health::pb::health_client::HealthClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let r = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        let status =
            tonic_health::pb::health_check_response::ServingStatus::try_from(r.into_inner().status)
                .map_err(|e| e.to_string())?;
        Ok(status.as_str_name().to_string())
    })
}

/// Waits up to `timeout` for a file to hold a non-empty text; the text.
pub fn read_when_written(path: &Path, timeout: Duration) -> Option<String> {
    wait_for(timeout, || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|t| !t.trim().is_empty())
    })
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` over plain HTTP/1.1; the body.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A job's states as a thread polling `JobService.GetJob` every 20 ms saw them: each change
/// of (state, generation), with the step, oldest first. A state held for less than a
/// `graft status` round trip (RECONFIGURING usually lasts well under a second) is still
/// seen.
pub struct JobTrace {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<TraceEntry>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One change a [`JobTrace`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// The state's name without the prefix (`RUNNING`, `RECONFIGURING`, …).
    pub state: String,
    /// The group's generation.
    pub generation: u64,
    /// Steps done.
    pub step: u64,
}

impl JobTrace {
    /// Starts polling job `id` at the coordinator `url` (`http://host:port`, no token).
    pub fn start(url: &str, id: &str) -> Self {
        use graft_proto::v1 as pb;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TraceEntry>::new()));
        let (url, id) = (url.to_string(), id.to_string());
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut client = None;
                while !s.load(Ordering::Relaxed) {
                    if client.is_none() {
                        client = pb::job_service_client::JobServiceClient::connect(url.clone())
                            .await
                            .ok();
                    }
                    if let Some(c) = client.as_mut() {
                        let r = c.get_job(pb::GetJobRequest { job_id: id.clone() }).await;
                        match r.map(|r| r.into_inner().job) {
                            Ok(Some(j)) => {
                                let state = pb::JobState::try_from(j.state)
                                    .map_or("?", |s| s.as_str_name())
                                    .trim_start_matches("JOB_STATE_")
                                    .to_string();
                                let e = TraceEntry {
                                    state,
                                    generation: j.generation,
                                    step: j.step,
                                };
                                if let Ok(mut v) = v.lock()
                                    && v.last().is_none_or(|l| {
                                        (&l.state, l.generation) != (&e.state, e.generation)
                                    })
                                {
                                    v.push(e);
                                }
                            }
                            Ok(None) => {}
                            Err(_) => client = None,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        });
        JobTrace {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// The changes seen so far.
    pub fn seen(&self) -> Vec<TraceEntry> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for JobTrace {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The value of `key=` on the first line of `log` that contains `what` (a worker's id on
/// its "registered" line, say).
pub fn log_field(log: &str, what: &str, key: &str) -> String {
    log.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split(&format!("{key}=")).nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key}= on a {what:?} line:\n{log}"))
        .to_string()
}

/// Parameters by name, as `graft export` writes them: shape and values.
pub type Params = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// [`small_mnist_job`] with `workers.min = min`, `workers.max = max` and `steps` steps: a job
/// whose group can shrink to `min` and grow back to `max`.
pub fn elastic_job(name: &str, min: u32, max: u32, steps: u64, allreduce: &str) -> String {
    small_mnist_job(name, max, steps, allreduce).replace(
        &format!("min = {max}\nmax = {max}"),
        &format!("min = {min}\nmax = {max}"),
    )
}

impl Cluster {
    /// The final parameters of `job`, through `graft export`.
    pub fn export_params(&self, job: &str) -> Params {
        let path = self.tmp.path().join(format!("{job}.safetensors"));
        let out = self.graft(&["export", job, "--out", path.to_str().expect("utf-8")]);
        assert!(out.status.success(), "export: {}", show(&out));
        graft_transfer::weights::read_all(&std::fs::read(&path).expect("exported"))
            .expect("safetensors")
    }

    /// Submits `job` (written to `file`) without waiting; its id.
    pub fn submit_job(&self, file: &str, job: &str) -> String {
        let path = self.job_file(file, job);
        let out = self.graft(&["submit", path.to_str().expect("utf-8"), "--json"]);
        assert!(out.status.success(), "{}", show(&out));
        last_json(&out)["job"].as_str().expect("id").to_string()
    }

    /// Waits (up to 90 s) until job `id` has done `step` steps.
    pub fn wait_for_step(&self, id: &str, step: u64) {
        wait_for(Duration::from_secs(90), || {
            (self.status(id)["steps"].as_u64().unwrap_or(0) >= step).then_some(())
        })
        .unwrap_or_else(|| panic!("job never reached step {step}: {}", self.status(id)));
    }

    /// Waits up to `within` for job `id` to end; its status.
    pub fn wait_for_end(&self, id: &str, within: Duration) -> serde_json::Value {
        wait_for(within, || {
            let s = self.status(id);
            matches!(
                s["state"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED")
            )
            .then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "job did not end: {}\n{}",
                self.status(id),
                self.log("coordinator")
            )
        })
    }
}

/// The final parameters of `job` run uninterrupted on `workers` workers of a fresh cluster.
pub fn uninterrupted(job: &str, workers: usize) -> Params {
    let c = Cluster::start(workers, 5_000);
    let r = c.complete("calm.toml", job);
    c.export_params(r["job"].as_str().expect("id"))
}

/// `a` and `b` hold the same tensors to 1e-4 relative (the tolerance at which W workers
/// reach the parameters of one).
pub fn assert_same_parameters(a: &Params, b: &Params, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: different tensors");
    for (name, (_, x)) in a {
        let (_, y) = &b[name];
        let d = max_relative_diff(x, y);
        assert!(d <= 1e-4, "{what}: {name} differs by {d:e} relative");
    }
}

/// splitmix64's finaliser, as the coordinator's exactly-once ledger mixes each index (an
/// independent copy, so that the tests check the coordinator's).
pub fn index_mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Each of the job's `epochs` whole epochs used every one of its `n` training samples
/// exactly once, by the ledger in `status --json`.
pub fn assert_exactly_once(status: &serde_json::Value, n: u64, epochs: u64) {
    let want = (0..n).fold(0u64, |h, i| h.wrapping_add(index_mix(i)));
    let list = status["epochs"]
        .as_array()
        .expect("epochs in status --json");
    assert_eq!(list.len() as u64, epochs, "{status}");
    for e in list {
        assert_eq!(e["samples"].as_u64(), Some(n), "{e}");
        assert_eq!(e["used"].as_u64(), Some(n), "epoch {}: {e}", e["epoch"]);
        let hash: u64 = e["index_hash"]
            .as_str()
            .expect("hash")
            .parse()
            .expect("u64");
        assert_eq!(
            hash, want,
            "epoch {}: the indices used are not 0..{n} once each",
            e["epoch"]
        );
    }
}
