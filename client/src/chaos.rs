//! `graft bench chaos`: rounds of a real job on a coordinator and three workers started as
//! processes, with faults at random steps drawn from a seeded generator — a worker killed
//! with SIGKILL (and a replacement started a little later), a worker stopped with SIGSTOP
//! for a few seconds, a worker told to leave with SIGTERM (and a replacement), the
//! coordinator killed with SIGKILL and restarted on the same state directory and port — each
//! round held against one uninterrupted run of the same job: it must complete, use every
//! training sample exactly once per epoch and reach the same accuracy. `--write` writes the
//! chaos half of docs/RELIABILITY.md.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use graft_proto::v1 as pb;
use graft_transfer::JobSpec;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// Workers each round starts with (the job's `workers.max`).
const WORKERS: usize = 3;
/// The job's `workers.min`.
const MIN_WORKERS: u32 = 2;
/// Steps of the job: six epochs of the 3,000 images in batches of 60.
const STEPS: u64 = 300;
/// A worker silent this long is lost.
const HEARTBEAT_TIMEOUT_MS: u64 = 2_000;
/// A group below `workers.min` waits this long for workers before its job fails.
const REGROUP_TIMEOUT_MS: u64 = 60_000;
/// A round whose job has not ended by then is recorded as timed out.
const ROUND_LIMIT: Duration = Duration::from_secs(240);
/// How often the job's status is read.
const POLL: Duration = Duration::from_millis(25);
/// A worker that has not left this long after SIGTERM is killed.
const LEAVE_LIMIT: Duration = Duration::from_secs(20);
/// The accuracy target: within half a point of the uninterrupted run.
pub const ACCURACY_TOLERANCE_PT: f64 = 0.5;
/// The time target of the whole command (2 cores, 20 rounds).
pub const TIME_TARGET_S: f64 = 30.0 * 60.0;
/// Rounds the full run has.
pub const TARGET_ROUNDS: usize = 20;
/// The heading of the section the hostile-input suite writes.
const HOSTILE_HEADING: &str = "## Hostile input";

/// What the chaos bench can fail with (a round's own failure is recorded, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A file or process operation (the cause is its source).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A call to the coordinator.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The cluster could not be set up or the job could not be built.
    #[error("{0}")]
    Setup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChaosError {
    let what = what.into();
    move |source| ChaosError::Io { what, source }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds with faults.
    pub rounds: usize,
    /// Seed of the fault plan.
    pub seed: u64,
    /// Whether the coordinator is killed too.
    pub coordinator_kills: bool,
    /// JSON lines on stdout instead of the table.
    pub json: bool,
    /// Where to write the Markdown report, if anywhere.
    pub write: Option<PathBuf>,
    /// Where the rounds' stores, checkpoints and logs go.
    pub state_dir: PathBuf,
    /// The datasets (`GRAFT_DATA_DIR` for the coordinator); none: the coordinator's own.
    pub data_dir: Option<PathBuf>,
    /// Only rewrite the report at `write` from the JSON beside it, running nothing.
    pub rewrite: bool,
}

impl Options {
    /// The command line that reproduces the run, for the report.
    pub fn command(&self) -> String {
        let mut s = format!(
            "graft bench chaos --rounds {} --seed {}",
            self.rounds, self.seed
        );
        if !self.coordinator_kills {
            s.push_str(" --no-coordinator-kills");
        }
        if self.write.is_some() {
            s.push_str(" --write");
        }
        s
    }
}

/// A fault the bench injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a worker; a replacement starts `pause_ms` later.
    KillWorker,
    /// SIGSTOP a worker, SIGCONT it `pause_ms` later.
    StopWorker,
    /// SIGTERM a worker (a graceful leave); a replacement starts `pause_ms` later.
    TermWorker,
    /// SIGKILL the coordinator; it restarts on the same state directory and port `pause_ms`
    /// later.
    KillCoordinator,
}

impl FaultKind {
    /// The kind's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::StopWorker => "stop-worker",
            FaultKind::TermWorker => "term-worker",
            FaultKind::KillCoordinator => "kill-coordinator",
        }
    }

    /// The kinds a run uses.
    pub fn enabled(coordinator_kills: bool) -> Vec<FaultKind> {
        let mut k = vec![
            FaultKind::KillWorker,
            FaultKind::StopWorker,
            FaultKind::TermWorker,
        ];
        if coordinator_kills {
            k.push(FaultKind::KillCoordinator);
        }
        k
    }
}

/// One fault of a round's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFault {
    /// What.
    pub kind: FaultKind,
    /// It fires at the first status read that shows at least this many steps done.
    pub at_step: u64,
    /// Chooses the worker among those running then.
    pub pick: u64,
    /// The replacement's delay, the stop's length or the coordinator's time down.
    pub pause_ms: u64,
}

/// splitmix64: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalise(self.0)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next() % (hi - lo + 1)
    }
}

/// splitmix64's finaliser.
fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The coordinator's ledger mix of a sample index (splitmix64 of `i`).
pub fn mix(i: u64) -> u64 {
    finalise(i.wrapping_add(0x9E37_79B9_7F4A_7C15))
}

/// The index hash of an epoch that used each of `0..n` once.
pub fn exactly_once_hash(n: u64) -> u64 {
    (0..n).fold(0u64, |h, i| h.wrapping_add(mix(i)))
}

/// Round `round`'s faults (1 to 3, in step order) for a job of `steps` steps. The first
/// fault's kind cycles through `kinds`, so that every kind comes up within `kinds.len()`
/// rounds; the others, their steps and their pauses are drawn.
pub fn plan(seed: u64, round: usize, steps: u64, kinds: &[FaultKind]) -> Vec<PlannedFault> {
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng(seed ^ (round as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let n = rng.range(1, 3);
    let len = kinds.len() as u64;
    let mut faults: Vec<PlannedFault> = (0..n)
        .map(|i| {
            let k = if i == 0 {
                (round as u64).wrapping_add(seed) % len
            } else {
                rng.next() % len
            };
            let kind = kinds[k as usize];
            let at_step = rng.range(10, steps.saturating_sub(30));
            let pause_ms = match kind {
                FaultKind::KillWorker | FaultKind::TermWorker => rng.range(300, 3_000),
                FaultKind::StopWorker => rng.range(500, 4_000),
                FaultKind::KillCoordinator => rng.range(200, 2_000),
            };
            PlannedFault {
                kind,
                at_step,
                pick: rng.next(),
                pause_ms,
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at_step);
    faults
}

/// The job every round runs: the small MNIST MLP of the multi-process tests on the first
/// 3,000 training images, workers.min 2 and max 3, a fingerprint every 5 steps and a
/// checkpoint every 50.
pub fn job_spec() -> Result<JobSpec, ChaosError> {
    let text = format!(
        r#"
name = "chaos"
seed = 11
allreduce = "ring"
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
steps = {STEPS}
fingerprint_interval = 5
[checkpoint]
interval_steps = 50
keep = 3
[workers]
min = {MIN_WORKERS}
max = {WORKERS}
"#
    );
    toml::from_str(&text).map_err(|e| ChaosError::Setup(format!("the chaos job: {e}")))
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fired {
    /// What.
    pub kind: FaultKind,
    /// The step it was planned for.
    pub planned_step: u64,
    /// Steps done when it fired; none when the job ended first.
    pub step: Option<u64>,
    /// The process it hit (`coordinator`, or the worker's name).
    pub target: String,
    /// The replacement's delay, the stop's length or the coordinator's time down, ms.
    pub pause_ms: u64,
    /// A coordinator kill: the step the restarted coordinator started the job from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
}

/// One round's record, as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// 1-based.
    pub round: usize,
    /// The faults, fired or not.
    pub faults: Vec<Fired>,
    /// The job's final state (`COMPLETED`, …), `TIMED-OUT` or `ERROR`.
    pub state: String,
    /// The job's reason, or what went wrong.
    pub reason: String,
    /// Steps done.
    pub steps: u64,
    /// The group's final generation.
    pub generation: u64,
    /// generation − 1.
    pub regroups: u64,
    /// Membership changes by cause.
    pub changes: BTreeMap<String, u64>,
    /// Steps done again after coordinator restarts: for each kill, the steps seen just
    /// before it less the step the restarted coordinator started the job from (none without
    /// a coordinator kill).
    pub steps_redone: Option<u64>,
    /// From the job's submission to its end, seconds.
    pub seconds: f64,
    /// `seconds` less the uninterrupted run's.
    pub overhead_s: f64,
    /// The final target accuracy.
    pub accuracy: Option<f64>,
    /// Less the uninterrupted run's, in points.
    pub accuracy_delta_pt: Option<f64>,
    /// Completed epochs in the ledger.
    pub epochs: usize,
    /// Every epoch used each sample once, and there were as many as uninterrupted.
    pub exactly_once: bool,
    /// Completed, exactly once, accuracy within the tolerance.
    pub ok: bool,
}

/// The uninterrupted run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    /// From submission to end, seconds.
    pub seconds: f64,
    /// Final target accuracy.
    pub accuracy: f64,
    /// Completed epochs.
    pub epochs: usize,
    /// Steps.
    pub steps: u64,
}

/// The whole run's totals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Rounds run.
    pub rounds: usize,
    /// Rounds whose job completed.
    pub completed: usize,
    /// Rounds with exactly once in every epoch.
    pub exactly_once: usize,
    /// Rounds within the accuracy tolerance.
    pub within_accuracy: usize,
    /// The largest |accuracy − uninterrupted|, points.
    pub max_abs_delta_pt: Option<f64>,
    /// Faults fired, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Regroups over all rounds.
    pub regroups: u64,
    /// Steps redone over all rounds.
    pub steps_redone: u64,
    /// Mean overhead per round, seconds.
    pub mean_overhead_s: f64,
    /// The whole command, baseline included, seconds.
    pub seconds: f64,
}

/// A whole run as `--write` keeps it (the `.json` beside the report), from which the
/// Markdown is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The command that made it.
    pub command: String,
    /// The machine line.
    pub machine: String,
    /// Its cores.
    pub cores: usize,
    /// Whether coordinator kills were among the faults.
    pub coordinator_kills: bool,
    /// The uninterrupted run.
    pub uninterrupted: Baseline,
    /// The rounds.
    pub rounds: Vec<RoundRecord>,
    /// Their totals.
    pub totals: Totals,
}

/// Sends `sig` to a child that has not been reaped (its `Child` is held, so the pid is
/// still its own).
fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on a child of this process that has not been reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Makes the child get SIGKILL when this process dies, however it dies. SIGKILL rather than
/// the SIGTERM of `local::die_with_parent`: a worker the bench has stopped would hold a
/// SIGTERM until continued, and nothing would continue it. The signal comes when the thread
/// that started the child ends: the bench starts every process from the runtime's main
/// task, whose thread lives as long as the process.
fn dies_with_us(cmd: &mut Command) -> &mut Command {
    crate::local::signal_when_parent_dies(cmd, libc::SIGKILL)
}

/// A port for the coordinator that survives its restarts: below the kernel's ephemeral
/// range where it can be, so that no worker's listener or outgoing connection takes it while
/// the coordinator is down.
fn fixed_port(salt: u64) -> Result<u16, ChaosError> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|w| w.parse::<u16>().ok())
        })
        .unwrap_or(0);
    if low > 20_000 {
        let span = u64::from(low - 10_000);
        let mut rng = Rng(salt ^ u64::from(std::process::id()));
        for _ in 0..64 {
            let port = 10_000 + (rng.next() % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Worker {
    name: String,
    child: Child,
    stopped: bool,
    /// When it was sent SIGTERM.
    leaving: Option<Instant>,
}

/// A round's processes; all of them killed when dropped.
struct Procs {
    dir: PathBuf,
    coordinator_exe: PathBuf,
    worker_exe: PathBuf,
    data_dir: Option<PathBuf>,
    port: u16,
    url: String,
    coordinator: Option<Child>,
    workers: Vec<Worker>,
    started: usize,
}

impl Procs {
    fn new(dir: &Path, data_dir: Option<&Path>, salt: u64) -> Result<Self, ChaosError> {
        let exe = |name: &str| {
            crate::local::sibling_binary(name).map_err(|e| ChaosError::Setup(format!("{e:#}")))
        };
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(io(format!("creating {}", dir.join("logs").display())))?;
        let port = fixed_port(salt)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            coordinator_exe: exe("graft-coordinator")?,
            worker_exe: exe("graft-worker")?,
            data_dir: data_dir.map(Path::to_path_buf),
            port,
            url: format!("http://127.0.0.1:{port}"),
            coordinator: None,
            workers: Vec::new(),
            started: 0,
        })
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// (Re)starts the coordinator on the state directory and port and waits until it serves.
    fn start_coordinator(&mut self) -> Result<(), ChaosError> {
        let ready = self.dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&ready);
        let path = self.log("coordinator");
        // Appended to: a restarted coordinator's log follows the killed one's.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let mut cmd = Command::new(&self.coordinator_exe);
        dies_with_us(&mut cmd)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args([
                "--heartbeat-timeout-ms",
                &HEARTBEAT_TIMEOUT_MS.to_string(),
                "--regroup-timeout-ms",
                &REGROUP_TIMEOUT_MS.to_string(),
            ])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(d) = &self.data_dir {
            cmd.env("GRAFT_DATA_DIR", d);
        }
        let mut child = cmd.spawn().map_err(io("starting graft-coordinator"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(&ready).is_ok_and(|a| !a.trim().is_empty()) {
                self.coordinator = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ChaosError::Setup(format!(
                    "the coordinator exited ({status}) before serving on port {}:\n{}",
                    self.port,
                    tail(&path, 5)
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChaosError::Setup(format!(
                    "the coordinator did not serve within 30 s:\n{}",
                    tail(&path, 5)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Why the coordinator is gone, if it exited by itself.
    fn coordinator_exited(&mut self) -> Option<String> {
        let status = self.coordinator.as_mut()?.try_wait().ok()??;
        self.coordinator = None;
        Some(format!(
            "the coordinator exited by itself ({status}):\n{}",
            tail(&self.log("coordinator"), 8)
        ))
    }

    /// Starts one more worker; its name.
    fn start_worker(&mut self) -> Result<String, ChaosError> {
        let name = format!("w{}", self.started);
        self.started += 1;
        let path = self.log(&name);
        let log = File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        let child = dies_with_us(&mut Command::new(&self.worker_exe))
            .args(["--coordinator", &self.url, "--name", &name])
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting graft-worker {name}")))?;
        self.workers.push(Worker {
            name: name.clone(),
            child,
            stopped: false,
            leaving: None,
        });
        Ok(name)
    }

    /// Waits until every worker has registered (its log says so).
    fn wait_registered(&self, within: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + within;
        loop {
            let missing: Vec<&str> = self
                .workers
                .iter()
                .filter(|w| {
                    !std::fs::read_to_string(self.log(&w.name))
                        .is_ok_and(|t| t.contains("registered"))
                })
                .map(|w| w.name.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Setup(format!(
                    "worker(s) {} did not register within {within:?}",
                    missing.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reaps workers that have exited and kills those that did not leave in time.
    fn reap(&mut self) {
        self.workers.retain_mut(|w| {
            if w.leaving.is_some_and(|t| t.elapsed() > LEAVE_LIMIT) {
                let _ = w.child.kill();
            }
            !matches!(w.child.try_wait(), Ok(Some(_)))
        });
    }

    fn continue_worker(&mut self, name: &str) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.name == name) {
            signal(&w.child, libc::SIGCONT);
            w.stopped = false;
        }
    }

    /// Fires a worker fault at a running worker; what it hit and what to do later, or `None`
    /// when no worker is running to take it.
    fn fire_at_worker(&mut self, f: &PlannedFault) -> Option<(String, Timer)> {
        let running: Vec<usize> = (0..self.workers.len())
            .filter(|&i| !self.workers[i].stopped && self.workers[i].leaving.is_none())
            .collect();
        if running.is_empty() {
            return None;
        }
        let i = running[(f.pick % running.len() as u64) as usize];
        let name = self.workers[i].name.clone();
        let timer = match f.kind {
            FaultKind::KillWorker => {
                let mut w = self.workers.remove(i);
                let _ = w.child.kill();
                let _ = w.child.wait();
                Timer::StartWorker
            }
            FaultKind::StopWorker => {
                let w = &mut self.workers[i];
                signal(&w.child, libc::SIGSTOP);
                w.stopped = true;
                Timer::Continue(name.clone())
            }
            FaultKind::TermWorker => {
                let w = &mut self.workers[i];
                signal(&w.child, libc::SIGTERM);
                w.leaving = Some(Instant::now());
                Timer::StartWorker
            }
            FaultKind::KillCoordinator => return None,
        };
        Some((name, timer))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // SIGKILL ends a stopped process too.
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        self.kill_coordinator();
    }
}

/// Something to do later in a round.
#[derive(Debug, Clone, PartialEq)]
enum Timer {
    StartWorker,
    Continue(String),
    RestartCoordinator,
}

/// How a round went.
struct Outcome {
    job: Option<pb::Job>,
    seconds: f64,
    fired: Vec<Fired>,
    steps_redone: Option<u64>,
    failure: Option<String>,
}

fn terminal(job: &pb::Job) -> bool {
    matches!(
        pb::JobState::try_from(job.state).unwrap_or_default(),
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// Runs the job once on a fresh coordinator and three workers in `dir`, with `faults`.
async fn run_round(
    dir: &Path,
    data_dir: Option<&Path>,
    spec: &JobSpec,
    faults: &[PlannedFault],
    salt: u64,
) -> Result<Outcome, ChaosError> {
    let mut procs = Procs::new(dir, data_dir, salt)?;
    procs.start_coordinator()?;
    for _ in 0..WORKERS {
        procs.start_worker()?;
    }
    procs.wait_registered(Duration::from_secs(30))?;
    let mut client = Some(Client::connect(&procs.url, None).await?);
    let id = match client.as_mut() {
        Some(c) => c.submit(spec).await?.id,
        None => return Err(ChaosError::Setup("no client".into())),
    };
    let t0 = Instant::now();
    let mut timers: Vec<(Instant, Timer)> = Vec::new();
    let mut fired: Vec<Fired> = Vec::new();
    let mut next = 0;
    let mut last: Option<pb::Job> = None;
    let mut kills: Vec<Kill> = Vec::new();
    let mut failure = None;
    loop {
        if t0.elapsed() > ROUND_LIMIT {
            failure = Some(format!(
                "the job did not end within {} s",
                ROUND_LIMIT.as_secs()
            ));
            break;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(at, _)| *at <= now);
        timers = later;
        for (_, t) in due {
            match t {
                Timer::StartWorker => {
                    procs.start_worker()?;
                }
                Timer::Continue(name) => procs.continue_worker(&name),
                Timer::RestartCoordinator => {
                    procs.start_coordinator()?;
                    client = Some(Client::connect(&procs.url, None).await?);
                }
            }
        }
        procs.reap();
        if let Some(why) = procs.coordinator_exited() {
            failure = Some(why);
            break;
        }
        if let Some(c) = client.as_mut()
            && let Ok(Ok(job)) = tokio::time::timeout(Duration::from_secs(5), c.get(&id)).await
        {
            if let Some(k) = kills.last_mut().filter(|k| k.first_poll.is_none()) {
                k.first_poll = Some(job.step);
            }
            let step = job.step;
            let done = terminal(&job);
            last = Some(job);
            if done {
                break;
            }
            if let Some(f) = faults.get(next).filter(|f| step >= f.at_step) {
                let hit = if f.kind == FaultKind::KillCoordinator {
                    procs.kill_coordinator();
                    client = None;
                    kills.push(Kill {
                        fired: fired.len(),
                        offset: std::fs::metadata(procs.log("coordinator")).map_or(0, |m| m.len()),
                        seen: step,
                        first_poll: None,
                    });
                    Some(("coordinator".to_string(), Timer::RestartCoordinator))
                } else {
                    procs.fire_at_worker(f)
                };
                if let Some((target, timer)) = hit {
                    timers.push((Instant::now() + Duration::from_millis(f.pause_ms), timer));
                    fired.push(Fired {
                        kind: f.kind,
                        planned_step: f.at_step,
                        step: Some(step),
                        target,
                        pause_ms: f.pause_ms,
                        resumed_from: None,
                    });
                    next += 1;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(procs.log("coordinator")).unwrap_or_default();
    let steps_redone = redone(&kills, &log, &mut fired);
    for f in &faults[next..] {
        fired.push(Fired {
            kind: f.kind,
            planned_step: f.at_step,
            step: None,
            target: String::new(),
            pause_ms: f.pause_ms,
            resumed_from: None,
        });
    }
    if let (Some(why), true) = (&mut failure, last.is_none()) {
        why.push_str(" (no status was read)");
    }
    Ok(Outcome {
        job: last,
        seconds,
        fired,
        steps_redone,
        failure,
    })
}

/// A coordinator kill, as the round saw it.
struct Kill {
    /// Its entry in the round's faults.
    fired: usize,
    /// The coordinator log's length when it died: what the restarted one logs comes after.
    offset: u64,
    /// Steps done just before the kill.
    seen: u64,
    /// The first step the restarted coordinator reported.
    first_poll: Option<u64>,
}

/// The `start_step` of the first `job started` line in a coordinator log.
fn started_from(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("job started"))
        .find_map(|l| {
            let rest = l.split("start_step=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
}

/// Steps redone over the round's coordinator kills (none without one): for each, the steps
/// seen before it less the step the restarted coordinator started the job from — from its
/// log, or, when it never started the job before the next kill or the end, the first step
/// it reported. Each kill's fault gets its `resumed_from`.
fn redone(kills: &[Kill], log: &str, fired: &mut [Fired]) -> Option<u64> {
    if kills.is_empty() {
        return None;
    }
    let mut total = 0;
    for (i, k) in kills.iter().enumerate() {
        let from = usize::try_from(k.offset)
            .unwrap_or(usize::MAX)
            .min(log.len());
        let to = kills
            .get(i + 1)
            .and_then(|n| usize::try_from(n.offset).ok())
            .unwrap_or(log.len())
            .clamp(from, log.len());
        let resumed = log.get(from..to).and_then(started_from).or(k.first_poll);
        if let Some(r) = resumed {
            total += k.seen.saturating_sub(r);
        }
        if let Some(f) = fired.get_mut(k.fired) {
            f.resumed_from = resumed;
        }
    }
    Some(total)
}

fn accuracy(job: &pb::Job) -> Option<f64> {
    job.metrics.get("target_accuracy").copied()
}

fn state_word(job: &pb::Job) -> String {
    graft_common::wire::state_name(pb::JobState::try_from(job.state).unwrap_or_default())
        .to_string()
}

/// Every epoch in the ledger used each of its samples once, and there are `epochs` of them.
pub fn exactly_once(job: &pb::Job, epochs: usize) -> bool {
    job.epochs.len() == epochs
        && job
            .epochs
            .iter()
            .all(|e| e.used == e.samples && e.index_hash == exactly_once_hash(e.samples))
}

fn round_record(round: usize, o: Outcome, base: &Baseline) -> RoundRecord {
    let job = o.job.unwrap_or_default();
    let mut changes = BTreeMap::new();
    for c in &job.membership_changes {
        *changes.entry(c.cause.clone()).or_insert(0) += 1;
    }
    let acc = accuracy(&job);
    let delta = acc.map(|a| ((a - base.accuracy) * 100.0 * 1e4).round() / 1e4);
    let completed = job.state == pb::JobState::Completed as i32;
    let state = match &o.failure {
        Some(_) if !completed && !terminal(&job) => "TIMED-OUT".to_string(),
        _ => state_word(&job),
    };
    let reason = match (&o.failure, job.reason.is_empty()) {
        (Some(f), _) => f.clone(),
        (None, false) => job.reason.clone(),
        (None, true) => String::new(),
    };
    let once = exactly_once(&job, base.epochs);
    let within = delta.is_some_and(|d| d.abs() <= ACCURACY_TOLERANCE_PT);
    RoundRecord {
        round,
        faults: o.fired,
        state,
        reason,
        steps: job.step,
        generation: job.generation,
        regroups: job.generation.saturating_sub(1),
        changes,
        steps_redone: o.steps_redone,
        seconds: (o.seconds * 100.0).round() / 100.0,
        overhead_s: ((o.seconds - base.seconds) * 100.0).round() / 100.0,
        accuracy: acc,
        accuracy_delta_pt: delta,
        epochs: job.epochs.len(),
        exactly_once: once,
        ok: completed && once && within,
    }
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn error_record(round: usize, faults: &[PlannedFault], e: &ChaosError) -> RoundRecord {
    RoundRecord {
        round,
        faults: faults
            .iter()
            .map(|f| Fired {
                kind: f.kind,
                planned_step: f.at_step,
                step: None,
                target: String::new(),
                pause_ms: f.pause_ms,
                resumed_from: None,
            })
            .collect(),
        state: "ERROR".into(),
        reason: chain(e),
        steps: 0,
        generation: 0,
        regroups: 0,
        changes: BTreeMap::new(),
        steps_redone: None,
        seconds: 0.0,
        overhead_s: 0.0,
        accuracy: None,
        accuracy_delta_pt: None,
        epochs: 0,
        exactly_once: false,
        ok: false,
    }
}

/// Sums the rounds up; `seconds` is the whole command's time.
pub fn totals(rounds: &[RoundRecord], seconds: f64) -> Totals {
    let mut faults = BTreeMap::new();
    for f in rounds.iter().flat_map(|r| &r.faults) {
        if f.step.is_some() {
            *faults.entry(f.kind.name().to_string()).or_insert(0) += 1;
        }
    }
    let deltas: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.accuracy_delta_pt)
        .map(f64::abs)
        .collect();
    let ran: Vec<&RoundRecord> = rounds.iter().filter(|r| r.state != "ERROR").collect();
    Totals {
        rounds: rounds.len(),
        completed: rounds.iter().filter(|r| r.state == "COMPLETED").count(),
        exactly_once: rounds.iter().filter(|r| r.exactly_once).count(),
        within_accuracy: rounds
            .iter()
            .filter(|r| {
                r.accuracy_delta_pt
                    .is_some_and(|d| d.abs() <= ACCURACY_TOLERANCE_PT)
            })
            .count(),
        max_abs_delta_pt: deltas.iter().copied().reduce(f64::max),
        faults,
        regroups: rounds.iter().map(|r| r.regroups).sum(),
        steps_redone: rounds.iter().filter_map(|r| r.steps_redone).sum(),
        mean_overhead_s: if ran.is_empty() {
            0.0
        } else {
            (ran.iter().map(|r| r.overhead_s).sum::<f64>() / ran.len() as f64 * 100.0).round()
                / 100.0
        },
        seconds: (seconds * 10.0).round() / 10.0,
    }
}

fn faults_cell(faults: &[Fired]) -> String {
    let cells: Vec<String> = faults
        .iter()
        .map(|f| {
            let at = f
                .step
                .map_or(format!("not fired (planned @{})", f.planned_step), |s| {
                    format!("@{s}")
                });
            let what = match (f.kind, f.resumed_from) {
                (FaultKind::StopWorker, _) => format!(" {:.1} s", f.pause_ms as f64 / 1000.0),
                (FaultKind::KillCoordinator, Some(r)) => format!(" (resumed from {r})"),
                _ => String::new(),
            };
            let target = if f.target.is_empty() || f.kind == FaultKind::KillCoordinator {
                String::new()
            } else {
                format!(" {}", f.target)
            };
            match f.kind {
                FaultKind::KillCoordinator => format!("{} {at}{what}", f.kind.name()),
                _ => format!("{}{target}{what} {at}", f.kind.name()),
            }
        })
        .collect();
    cells.join(", ")
}

fn changes_cell(changes: &BTreeMap<String, u64>) -> String {
    if changes.is_empty() {
        return "—".into();
    }
    changes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

/// The machine, for the record: cores, CPU and the load when the run began.
pub fn machine(load: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}; load average {load} when the run began")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// What the report says about the targets.
fn targets(t: &Totals, cores: usize) -> Vec<(String, String, bool)> {
    let minutes = t.seconds / 60.0;
    vec![
        (
            format!("{TARGET_ROUNDS} of {TARGET_ROUNDS} rounds complete"),
            format!("{} of {} rounds", t.completed, t.rounds),
            t.rounds >= TARGET_ROUNDS && t.completed == t.rounds,
        ),
        (
            "exactly once in each round".into(),
            format!("{} of {} rounds", t.exactly_once, t.rounds),
            t.rounds > 0 && t.exactly_once == t.rounds,
        ),
        (
            format!("accuracy within {ACCURACY_TOLERANCE_PT} pt of the uninterrupted run"),
            format!(
                "{} of {} rounds; largest difference {} pt",
                t.within_accuracy,
                t.rounds,
                opt(t.max_abs_delta_pt, 2)
            ),
            t.rounds > 0 && t.within_accuracy == t.rounds,
        ),
        (
            "under 30 minutes on 2 cores".into(),
            format!("{minutes:.1} minutes on {cores} cores"),
            t.seconds < TIME_TARGET_S,
        ),
    ]
}

/// The chaos half of RELIABILITY.md; `rest` is the hostile-input section to keep (from its
/// heading on), if the file has one.
pub fn markdown(report: &Report, rest: Option<&str>) -> String {
    let (base, rounds, t) = (&report.uninterrupted, &report.rounds, &report.totals);
    let mut s = String::from("# Reliability\n\n");
    s.push_str(
        "## Chaos\n\n\
         Written by `graft bench chaos --write` from the run below; do not edit by hand.\n\n",
    );
    s.push_str(&format!(
        "Each round runs the small MNIST MLP of the multi-process tests (one hidden layer of \
         64, the first 3,000 MNIST training images, batches of 60, {STEPS} steps = 6 epochs, a \
         fingerprint every 5 steps, a checkpoint every 50, `workers.min = {MIN_WORKERS}`, \
         `workers.max = {WORKERS}`, the ring) on a fresh `graft-coordinator` \
         (`heartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}`, `regroup_timeout_ms = \
         {REGROUP_TIMEOUT_MS}`) and {WORKERS} `graft-worker` processes on loopback. One to \
         three faults per round fire at steps drawn from the seed: `kill-worker` (SIGKILL; a \
         replacement starts 0.3–3 s later), `stop-worker` (SIGSTOP for 0.5–4 s, then \
         SIGCONT; longer than the heartbeat timeout, the worker is lost and comes back as a \
         new one), `term-worker` (SIGTERM, a graceful leave; a replacement 0.3–3 s later) and \
         `kill-coordinator` (SIGKILL; restarted 0.2–2 s later on the same state directory \
         and port). A round holds when its job completes, every epoch of the exactly-once \
         ledger used each of the 3,000 samples once (count and index hash) and its accuracy \
         is within {ACCURACY_TOLERANCE_PT} pt of one uninterrupted run of the same job on the \
         same cluster. Steps redone are counted at coordinator restarts only: the step seen \
         just before the kill less the step the job resumed from (a worker fault costs at \
         most the step in flight, which is not counted). Overhead is a round's time from \
         submission to end less the uninterrupted run's.\n\n"
    ));
    s.push_str(&format!("Machine: {}\n\n", report.machine));
    s.push_str(&format!("Command: `{}`\n\n", report.command));
    if !report.coordinator_kills {
        s.push_str("Coordinator kills were left out of this run (`--no-coordinator-kills`).\n\n");
    }
    s.push_str(&format!(
        "Uninterrupted run: {} steps, {} epochs, target accuracy {:.4}, {:.2} s from \
         submission to end.\n\n",
        base.steps, base.epochs, base.accuracy, base.seconds
    ));
    s.push_str("### Targets\n\n| target | measured | holds |\n|---|---|---|\n");
    for (target, measured, holds) in targets(t, report.cores) {
        s.push_str(&format!("| {target} | {measured} | {} |\n", yes(holds)));
    }
    s.push_str(&format!(
        "\n### Totals\n\n\
         - rounds: {}; completed {}, exactly once {}, within the accuracy tolerance {}\n\
         - faults fired: {}\n\
         - regroups (generation − 1, summed): {}; steps redone after coordinator restarts: {}\n\
         - mean overhead per round: {:.2} s; the whole command: {:.1} s\n",
        t.rounds,
        t.completed,
        t.exactly_once,
        t.within_accuracy,
        changes_cell(&t.faults),
        t.regroups,
        t.steps_redone,
        t.mean_overhead_s,
        t.seconds
    ));
    s.push_str(
        "\n### By fault\n\n\
         | fault | fired | rounds with it | mean overhead of those rounds (s) | largest (s) |\n\
         |---|---|---|---|---|\n",
    );
    for kind in FaultKind::enabled(true) {
        let fired = rounds
            .iter()
            .flat_map(|r| &r.faults)
            .filter(|f| f.kind == kind && f.step.is_some())
            .count();
        let with: Vec<f64> = rounds
            .iter()
            .filter(|r| r.faults.iter().any(|f| f.kind == kind && f.step.is_some()))
            .map(|r| r.overhead_s)
            .collect();
        let mean = (!with.is_empty()).then(|| with.iter().sum::<f64>() / with.len() as f64);
        s.push_str(&format!(
            "| `{}` | {fired} | {} | {} | {} |\n",
            kind.name(),
            with.len(),
            opt(mean, 2),
            opt(with.iter().copied().reduce(f64::max), 2)
        ));
    }
    s.push_str(
        "\n### Rounds\n\n\
         | round | faults (kind, target, step fired) | state | regroups | membership changes | \
         steps redone | seconds | overhead (s) | accuracy | Δ (pt) | exactly once | holds |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rounds {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:+.2} | {} | {} | {} | {} |\n",
            r.round,
            faults_cell(&r.faults),
            r.state,
            r.regroups,
            changes_cell(&r.changes),
            r.steps_redone.map_or("—".into(), |v| v.to_string()),
            r.seconds,
            r.overhead_s,
            opt(r.accuracy, 4),
            r.accuracy_delta_pt
                .map_or("—".into(), |d| format!("{d:+.2}")),
            yes(r.exactly_once),
            yes(r.ok)
        ));
    }
    let failed: Vec<&RoundRecord> = rounds.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        s.push_str("\n### What failed\n\n");
        for r in failed {
            let why = if r.reason.is_empty() {
                format!(
                    "{} (exactly once: {}, accuracy Δ {} pt)",
                    r.state,
                    r.exactly_once,
                    opt(r.accuracy_delta_pt, 2)
                )
            } else {
                r.reason.replace('\n', " ")
            };
            s.push_str(&format!("- round {}: {why}\n", r.round));
        }
    }
    s.push('\n');
    match rest {
        Some(r) => s.push_str(r),
        None => s.push_str(&format!(
            "{HOSTILE_HEADING}\n\nNot written yet: this section is for the hostile-input suite \
             (malformed and hostile messages and files), which is to be added separately.\n"
        )),
    }
    s
}

/// The hostile-input section of an existing report, from its heading to the end.
pub fn kept_section(existing: &str) -> Option<&str> {
    existing
        .match_indices(HOSTILE_HEADING)
        .find(|(i, _)| *i == 0 || existing[..*i].ends_with('\n'))
        .map(|(i, _)| &existing[i..])
}

fn table_header() -> String {
    format!(
        "{:>5}  {:<10} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>6} {:>4}  faults / changes",
        "round",
        "state",
        "regroups",
        "redone",
        "secs",
        "overhead",
        "accuracy",
        "Δ pt",
        "once",
        "ok"
    )
}

fn table_row(r: &RoundRecord) -> String {
    format!(
        "{:>5}  {:<10} {:>8} {:>8} {:>7.2} {:>+8.2} {:>8} {:>8} {:>6} {:>4}  {} / {}{}",
        r.round,
        r.state,
        r.regroups,
        r.steps_redone.map_or("—".into(), |v| v.to_string()),
        r.seconds,
        r.overhead_s,
        opt(r.accuracy, 4),
        r.accuracy_delta_pt
            .map_or("—".into(), |d| format!("{d:+.2}")),
        if r.exactly_once { "yes" } else { "NO" },
        if r.ok { "yes" } else { "NO" },
        faults_cell(&r.faults),
        changes_cell(&r.changes),
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", r.reason.lines().next().unwrap_or(""))
        }
    )
}

/// Runs the bench: the uninterrupted run, then the rounds; prints them and writes the
/// report when asked. Whether every round held.
///
/// # Errors
/// When the uninterrupted run cannot be made, or the report cannot be written. A round that
/// fails, or whose cluster cannot be set up, is recorded as such.
pub async fn run(opts: &Options) -> Result<bool, ChaosError> {
    if opts.rewrite {
        let path = opts
            .write
            .as_ref()
            .ok_or_else(|| ChaosError::Setup("--rewrite needs the report's path".into()))?;
        let json = path.with_extension("json");
        let text =
            std::fs::read_to_string(&json).map_err(io(format!("reading {}", json.display())))?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", json.display())))?;
        write_report(path, &report)?;
        return Ok(report.rounds.iter().all(|r| r.ok));
    }
    let started = Instant::now();
    let load = load_average();
    let spec = job_spec()?;
    let kinds = FaultKind::enabled(opts.coordinator_kills);
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(io(format!("creating {}", opts.state_dir.display())))?;
    eprintln!(
        "graft bench chaos: the uninterrupted run, then {} round(s); stores and logs in {}",
        opts.rounds,
        opts.state_dir.display()
    );
    let calm = run_round(
        &opts.state_dir.join("uninterrupted"),
        opts.data_dir.as_deref(),
        &spec,
        &[],
        opts.seed,
    )
    .await?;
    let base = match (&calm.job, &calm.failure) {
        (Some(j), None) if j.state == pb::JobState::Completed as i32 => Baseline {
            seconds: (calm.seconds * 100.0).round() / 100.0,
            accuracy: accuracy(j).ok_or_else(|| {
                ChaosError::Setup("the uninterrupted run reported no target_accuracy".into())
            })?,
            epochs: j.epochs.len(),
            steps: j.step,
        },
        (j, f) => {
            return Err(ChaosError::Setup(format!(
                "the uninterrupted run did not complete: {}{}",
                j.as_ref().map_or("no status".into(), state_word),
                f.as_ref().map_or_else(
                    || j.as_ref()
                        .map_or(String::new(), |j| format!(": {}", j.reason)),
                    |f| format!(": {f}")
                )
            )));
        }
    };
    if opts.json {
        println!(
            "{}",
            serde_json::json!({
                "uninterrupted": base,
                "seed": opts.seed,
                "rounds": opts.rounds,
                "command": opts.command(),
                "machine": machine(&load),
            })
        );
    } else {
        println!(
            "uninterrupted: {} steps, {} epochs, accuracy {:.4}, {:.2} s",
            base.steps, base.epochs, base.accuracy, base.seconds
        );
        println!("{}", table_header());
    }
    let mut rounds = Vec::new();
    for round in 1..=opts.rounds {
        let faults = plan(opts.seed, round, STEPS, &kinds);
        let dir = opts.state_dir.join(format!("round-{round:02}"));
        let salt = opts.seed.wrapping_add(round as u64);
        let rec = match run_round(&dir, opts.data_dir.as_deref(), &spec, &faults, salt).await {
            Ok(o) => round_record(round, o, &base),
            Err(e) => error_record(round, &faults, &e),
        };
        if opts.json {
            println!(
                "{}",
                serde_json::to_string(&rec).map_err(|e| ChaosError::Setup(e.to_string()))?
            );
        } else {
            println!("{}", table_row(&rec));
        }
        rounds.push(rec);
    }
    let t = totals(&rounds, started.elapsed().as_secs_f64());
    let all_ok = rounds.iter().all(|r| r.ok);
    if opts.json {
        println!("{}", serde_json::json!({ "totals": t, "ok": all_ok }));
    } else {
        println!(
            "{} of {} rounds held (completed {}, exactly once {}, within {ACCURACY_TOLERANCE_PT} pt {}; largest Δ {} pt); faults {}; {} regroups; {} steps redone; {:.1} s in all",
            rounds.iter().filter(|r| r.ok).count(),
            t.rounds,
            t.completed,
            t.exactly_once,
            t.within_accuracy,
            opt(t.max_abs_delta_pt, 2),
            changes_cell(&t.faults),
            t.regroups,
            t.steps_redone,
            t.seconds
        );
    }
    if let Some(path) = &opts.write {
        let report = Report {
            command: opts.command(),
            machine: machine(&load),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            coordinator_kills: opts.coordinator_kills,
            uninterrupted: base,
            rounds,
            totals: t,
        };
        write_report(path, &report)?;
    }
    Ok(all_ok)
}

/// Writes the Markdown report at `path` (keeping its hostile-input section) and the run's
/// records beside it, as `.json`.
fn write_report(path: &Path, report: &Report) -> Result<(), ChaosError> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = markdown(report, kept_section(&existing));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    let json = path.with_extension("json");
    let records = serde_json::to_string_pretty(report)
        .map_err(|e| ChaosError::Setup(format!("the run's records: {e}")))?;
    std::fs::write(&json, records + "\n").map_err(io(format!("writing {}", json.display())))?;
    std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))?;
    eprintln!("wrote {} and {}", path.display(), json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_the_seeds_and_every_kind_comes_up() {
        let kinds = FaultKind::enabled(true);
        let a: Vec<_> = (1..=8).map(|r| plan(7, r, STEPS, &kinds)).collect();
        let b: Vec<_> = (1..=8).map(|r| plan(7, r, STEPS, &kinds)).collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            (1..=8)
                .map(|r| plan(8, r, STEPS, &kinds))
                .collect::<Vec<_>>()
        );
        for round in &a {
            assert!((1..=3).contains(&round.len()), "{round:?}");
            assert!(round.windows(2).all(|w| w[0].at_step <= w[1].at_step));
            for f in round {
                assert!((10..=STEPS - 30).contains(&f.at_step), "{f:?}");
            }
        }
        // Four consecutive rounds lead with each kind once.
        let mut first: Vec<FaultKind> = a[..4].iter().map(|r| r[0].kind).collect();
        first.sort_by_key(|k| k.name());
        let mut all = kinds.clone();
        all.sort_by_key(|k| k.name());
        assert_eq!(first, all);
        // Without coordinator kills there are none.
        let calm = FaultKind::enabled(false);
        assert!(
            (1..=20)
                .flat_map(|r| plan(3, r, STEPS, &calm))
                .all(|f| f.kind != FaultKind::KillCoordinator)
        );
    }

    #[test]
    fn the_exactly_once_hash_is_the_coordinators() {
        // The value the coordinator's ledger reports for an epoch of 3,000 samples used once
        // (graft local on the chaos job).
        assert_eq!(exactly_once_hash(3000), 8_389_899_776_200_580_929);
        let epoch = |used: u64, hash: u64| pb::EpochUse {
            stage: 0,
            epoch: 0,
            samples: 3000,
            used,
            index_hash: hash,
        };
        let mut job = pb::Job {
            epochs: vec![epoch(3000, exactly_once_hash(3000)); 6],
            ..Default::default()
        };
        assert!(exactly_once(&job, 6));
        assert!(!exactly_once(&job, 5), "an epoch too many");
        job.epochs[2] = epoch(3060, exactly_once_hash(3000).wrapping_add(mix(5)));
        assert!(!exactly_once(&job, 6), "a batch used twice");
        job.epochs[2] = epoch(3000, exactly_once_hash(3000) ^ 1);
        assert!(!exactly_once(&job, 6), "another index in place of one");
    }

    #[test]
    fn steps_redone_come_from_the_restarted_coordinators_log() {
        let kill = || Fired {
            kind: FaultKind::KillCoordinator,
            planned_step: 0,
            step: Some(0),
            target: "coordinator".into(),
            pause_ms: 0,
            resumed_from: None,
        };
        let first = "INFO job started job=job-1 workers=3 generation=1 start_step=0\n";
        let second = format!(
            "{first}INFO resuming job after restart job=job-1 step=50\n\
             INFO job started job=job-1 workers=3 generation=4 start_step=82\n"
        );
        // Killed again before the job started: its first answer is the fallback.
        let log = format!("{second}INFO coordinator serving addr=127.0.0.1:1\n");
        let kills = [
            Kill {
                fired: 0,
                offset: first.len() as u64,
                seen: 81,
                first_poll: Some(50),
            },
            Kill {
                fired: 1,
                offset: second.len() as u64,
                seen: 137,
                first_poll: Some(100),
            },
        ];
        let mut fired = vec![kill(), kill()];
        // The first restart continued from the workers' step 82 (none redone), the second
        // from the checkpoint at 100.
        assert_eq!(redone(&kills, &log, &mut fired), Some(37));
        assert_eq!(fired[0].resumed_from, Some(82));
        assert_eq!(fired[1].resumed_from, Some(100));
        assert_eq!(redone(&[], &log, &mut fired), None);
    }

    #[test]
    fn the_report_keeps_the_hostile_input_section_and_judges_the_targets() {
        let opts = Options {
            rounds: 1,
            seed: 1,
            coordinator_kills: false,
            json: false,
            write: Some(PathBuf::from("docs/RELIABILITY.md")),
            state_dir: PathBuf::from("x"),
            data_dir: None,
            rewrite: false,
        };
        let base = Baseline {
            seconds: 2.0,
            accuracy: 0.91,
            epochs: 6,
            steps: 300,
        };
        let r = RoundRecord {
            round: 1,
            faults: vec![Fired {
                kind: FaultKind::StopWorker,
                planned_step: 40,
                step: Some(42),
                target: "w1".into(),
                pause_ms: 2500,
                resumed_from: None,
            }],
            state: "COMPLETED".into(),
            reason: String::new(),
            steps: 300,
            generation: 2,
            regroups: 1,
            changes: BTreeMap::from([("lost".into(), 1), ("formed".into(), 1)]),
            steps_redone: None,
            seconds: 5.0,
            overhead_s: 3.0,
            accuracy: Some(0.91),
            accuracy_delta_pt: Some(0.0),
            epochs: 6,
            exactly_once: true,
            ok: true,
        };
        let t = totals(std::slice::from_ref(&r), 60.0);
        assert_eq!(t.completed, 1);
        assert_eq!(t.faults.get("stop-worker"), Some(&1));
        let report = Report {
            command: opts.command(),
            machine: "2 cores".into(),
            cores: 2,
            coordinator_kills: opts.coordinator_kills,
            uninterrupted: base,
            rounds: vec![r],
            totals: t,
        };
        let fresh = markdown(&report, None);
        assert!(
            fresh.contains("## Hostile input\n\nNot written yet"),
            "{fresh}"
        );
        assert!(fresh.contains("stop-worker w1 2.5 s @42"), "{fresh}");
        assert!(fresh.contains("--no-coordinator-kills"), "{fresh}");
        assert!(
            fresh.contains("| `stop-worker` | 1 | 1 | 3.00 | 3.00 |"),
            "{fresh}"
        );
        assert!(
            fresh.contains("| `kill-coordinator` | 0 | 0 | — | — |"),
            "{fresh}"
        );
        // The records round-trip, so --rewrite makes the same page.
        let back: Report =
            serde_json::from_str(&serde_json::to_string(&report).expect("json")).expect("parse");
        assert_eq!(markdown(&back, None), fresh);
        // One round is not the twenty the target asks for.
        assert!(
            fresh.contains("| 20 of 20 rounds complete | 1 of 1 rounds | **no** |"),
            "{fresh}"
        );
        let theirs = "## Hostile input\n\nWritten by someone else.\n";
        let existing = format!("{fresh}\n{theirs}");
        assert_eq!(kept_section(theirs), Some(theirs));
        let again = markdown(&report, kept_section(&format!("# Reliability\n\n{theirs}")));
        assert!(again.ends_with(theirs), "{again}");
        assert!(kept_section(&existing).is_some());
    }
}
