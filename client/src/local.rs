//! `graft local` and `graft demo`: a coordinator and N workers as child processes of this
//! binary, on free loopback ports, with their logs in the run's directory.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use graft_common::logging::LogFormat;

/// How many times `graft local` starts a worker again by default, over the whole run (as
/// torchrun's `--max-restarts`, whose default is 0 but which elastic launches set to 3).
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

/// A coordinator and its workers, killed when dropped.
pub struct LocalCluster {
    /// The coordinator's URL.
    pub url: String,
    /// Where the store, checkpoints and logs live.
    pub state_dir: PathBuf,
    /// The coordinator first, then the workers in the order of their names.
    children: Vec<Proc>,
    /// How a worker is started, for the restarts.
    worker: WorkerLaunch,
    /// Restarts allowed over the whole run, and used.
    max_restarts: u32,
    restarts: u32,
}

/// One child process.
struct Proc {
    name: String,
    child: Child,
    /// Its exit status, once [`LocalCluster::supervise`] has dealt with its exit.
    ended: Option<ExitStatus>,
}

/// What a worker is started with.
struct WorkerLaunch {
    exe: PathBuf,
    device: String,
    log_format: LogFormat,
    threads: Vec<(&'static str, String)>,
}

/// A change [`LocalCluster::supervise`] saw in the processes.
#[derive(Debug)]
pub enum Supervision {
    /// A worker exited and was started again (a fresh process under the same name, which
    /// registers as a new worker and joins the job when its group re-forms).
    Restarted {
        /// The worker's name.
        name: String,
        /// How the old process ended.
        status: ExitStatus,
        /// Restarts used so far, this one included.
        restart: u32,
        /// Restarts allowed.
        max: u32,
        /// The new process's id.
        pid: u32,
    },
    /// A worker exited and no restart is left: its job goes on as the coordinator's rules
    /// say (below `workers.min` it waits up to the regroup timeout, then fails).
    NotRestarted {
        /// The worker's name.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Restarts allowed (all used).
        max: u32,
    },
    /// The run cannot go on: the coordinator exited, every worker did with no restart
    /// left, or a restart could not start. With the log tails.
    Fatal(String),
}

impl fmt::Display for Supervision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Supervision::Restarted {
                name,
                status,
                restart,
                max,
                pid,
            } => write!(
                f,
                "{name} exited ({status}); restarting it, restart {restart} of {max} (pid {pid}); it rejoins the job when the group re-forms"
            ),
            Supervision::NotRestarted { name, status, max } => write!(
                f,
                "{name} exited ({status}); not restarting it: no restart left (--max-restarts {max}); below workers.min the job waits for a worker up to the regroup timeout (--regroup-timeout-ms), then fails"
            ),
            Supervision::Fatal(msg) => f.write_str(msg),
        }
    }
}

/// Options for a local cluster.
pub struct LocalOptions<'a> {
    /// Workers to start.
    pub workers: usize,
    /// Their device, and the coordinator's evaluation device: one machine, one kind of
    /// device.
    pub device: &'a str,
    /// The run's directory.
    pub state_dir: &'a Path,
    /// Heartbeat timeout of the coordinator.
    pub heartbeat_timeout_ms: u64,
    /// The processes' log format (`graft --log-format`).
    pub log_format: LogFormat,
    /// The coordinator's `regroup_timeout_ms` (none: its default).
    pub regroup_timeout_ms: Option<u64>,
    /// How many times, over the whole run, [`LocalCluster::supervise`] starts a worker
    /// that exited again.
    pub max_restarts: u32,
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<File> {
    let p = dir.join(format!("{name}.log"));
    File::create(&p).with_context(|| format!("creating {}", p.display()))
}

/// The log of a restarted process: the same file, appended to, so that one file holds
/// every run of a worker (and `tail -f` goes on following it).
fn append_log(dir: &Path, name: &str) -> anyhow::Result<File> {
    let p = dir.join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Thread-count variables for the processes `local` starts: the host's cores shared among
/// the workers, for each variable the user did not set.
///
/// - `OMP_NUM_THREADS`: libtorch's CPU kernels run on OpenMP threads that spin while they
///   wait, and two workers each with a thread per core take turns so badly that the MNIST
///   MLP example ran 8x slower on libtorch-cpu (2 cores) than with one thread each (torchrun
///   sets it to 1 for the same reason).
/// - `RAYON_NUM_THREADS`: flex built with the `rayon` feature. Two workers with a pool of two
///   threads each on 2 cores made the dann step 5 % slower than one thread each.
fn thread_shares(workers: usize) -> Vec<(&'static str, String)> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let share = (cores / workers.max(1)).max(1).to_string();
    ["OMP_NUM_THREADS", "RAYON_NUM_THREADS"]
        .into_iter()
        .filter(|var| std::env::var_os(var).is_none())
        .map(|var| (var, share.clone()))
        .collect()
}

/// Makes the child get SIGTERM when this process dies, however it dies (SIGKILL, a panic,
/// a signal no caller handles): `graft local`, `graft demo` and `graft bench train` would
/// otherwise leave their coordinator and workers running, and `graft bench methods` its
/// `graft local`. SIGTERM, not SIGKILL, so that the coordinator still shuts down in order.
/// The signal comes when the *thread* that started the child ends: the clusters are started
/// from the runtime's main task, whose thread lives as long as the process, and `bench
/// methods` waits for each child on the thread that started it.
pub(crate) fn die_with_parent(cmd: &mut Command) -> &mut Command {
    signal_when_parent_dies(cmd, libc::SIGTERM)
}

/// Makes the child get `signal` when this process dies (the thread that started it ends),
/// however it dies.
#[cfg(target_os = "linux")]
pub(crate) fn signal_when_parent_dies(cmd: &mut Command, signal: libc::c_int) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs between fork and exec and calls only prctl(2) and getppid(2),
    // which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then no signal will ever come.
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "the parent exited before the child started",
                ));
            }
            Ok(())
        })
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn signal_when_parent_dies(cmd: &mut Command, _signal: i32) -> &mut Command {
    cmd
}

/// The path of another graft binary installed beside this one (`graft-coordinator`,
/// `graft-worker`): `graft local` runs them as torchrun runs its workers, as separate
/// programs, so that the CLI links neither. A test binary under `deps/` finds them one
/// folder up, where cargo puts the workspace's binaries.
///
/// # Errors
/// When neither place holds the binary, naming where it looked.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the graft binary")?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let candidates = [dir.join(&file), dir.join("..").join(&file)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "{name} is not installed beside {}: build the workspace's binaries (cargo build --release --workspace)",
                exe.display()
            )
        })
}

impl LocalCluster {
    /// Starts the processes and waits until the coordinator serves.
    ///
    /// # Errors
    /// When a process cannot start or the coordinator does not come up (its log's tail is
    /// in the message).
    pub fn start(opts: &LocalOptions<'_>) -> anyhow::Result<Self> {
        let coordinator_exe = sibling_binary("graft-coordinator")?;
        let worker_exe = sibling_binary("graft-worker")?;
        let logs = opts.state_dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let ready = opts.state_dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&ready);
        let threads = thread_shares(opts.workers);
        let omp = || threads.iter().map(|(var, n)| (*var, n.as_str()));
        let coordinator = die_with_parent(&mut Command::new(&coordinator_exe))
            .envs(omp())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-timeout-ms",
                &opts.heartbeat_timeout_ms.to_string(),
            ])
            .arg("--state-dir")
            .arg(opts.state_dir)
            .arg("--ready-file")
            .arg(&ready)
            .args(["--eval-device", opts.device])
            .args(["--log-format", opts.log_format.as_str()])
            .args(
                opts.regroup_timeout_ms
                    .map(|ms| ["--regroup-timeout-ms".to_string(), ms.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&logs, "coordinator")?)
            .spawn()
            .context("starting the coordinator")?;
        let mut cluster = LocalCluster {
            url: String::new(),
            state_dir: opts.state_dir.to_path_buf(),
            children: vec![Proc {
                name: "coordinator".into(),
                child: coordinator,
                ended: None,
            }],
            worker: WorkerLaunch {
                exe: worker_exe,
                device: opts.device.to_string(),
                log_format: opts.log_format,
                threads,
            },
            max_restarts: opts.max_restarts,
            restarts: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&ready)
                && !a.is_empty()
            {
                break a;
            }
            if let Some(p) = cluster.children.first_mut()
                && let Ok(Some(status)) = p.child.try_wait()
            {
                bail!(
                    "the coordinator exited ({status}) before serving:\n{}",
                    tail(&logs.join("coordinator.log"))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the coordinator did not start within 30s:\n{}",
                    tail(&logs.join("coordinator.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        cluster.url = format!("http://{addr}");
        for i in 0..opts.workers {
            let name = format!("worker-{i}");
            let child = cluster.spawn_worker(&name, log_file(&logs, &name)?)?;
            cluster.children.push(Proc {
                name,
                child,
                ended: None,
            });
        }
        Ok(cluster)
    }

    /// Starts the worker `name` writing its log to `log`. On Linux it gets SIGTERM when the
    /// thread that starts it ends ([`die_with_parent`]): start workers, restarts included,
    /// from the thread that started the cluster.
    fn spawn_worker(&self, name: &str, log: File) -> anyhow::Result<Child> {
        let w = &self.worker;
        die_with_parent(&mut Command::new(&w.exe))
            .envs(w.threads.iter().map(|(var, n)| (*var, n.as_str())))
            .args([
                "--coordinator",
                &self.url,
                "--name",
                name,
                "--device",
                &w.device,
                // Many workers on one host: each serves its health on a free port.
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                w.log_format.as_str(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    /// Looks at the processes, as torchrun's agent does: a worker that exited is started
    /// again (a fresh process with the same name and log, appended to) while restarts are
    /// left, counted over the whole run; past `max_restarts` it stays down. Each exit is
    /// reported once. The coordinator exiting, or every worker with no restart left, is
    /// [`Supervision::Fatal`]: nothing could finish the job any more.
    ///
    /// Call it from the thread that started the cluster (see [`Self::spawn_worker`]). It
    /// does not block: `try_wait` and, for a restart, one fork and exec.
    pub fn supervise(&mut self) -> Vec<Supervision> {
        let logs = self.state_dir.join("logs");
        let mut out = Vec::new();
        for i in 0..self.children.len() {
            let p = &mut self.children[i];
            if p.ended.is_some() {
                continue;
            }
            let status = match p.child.try_wait() {
                Ok(Some(status)) => status,
                _ => continue,
            };
            p.ended = Some(status);
            let name = p.name.clone();
            let log = logs.join(format!("{name}.log"));
            if i == 0 {
                out.push(Supervision::Fatal(format!(
                    "a local process stopped:\n{name} exited ({status}):\n{}",
                    tail(&log)
                )));
                return out;
            }
            if self.restarts >= self.max_restarts {
                out.push(Supervision::NotRestarted {
                    name,
                    status,
                    max: self.max_restarts,
                });
                continue;
            }
            let started = append_log(&logs, &name).and_then(|log| self.spawn_worker(&name, log));
            match started {
                Ok(child) => {
                    self.restarts += 1;
                    let pid = child.id();
                    self.children[i] = Proc {
                        name: name.clone(),
                        child,
                        ended: None,
                    };
                    out.push(Supervision::Restarted {
                        name,
                        status,
                        restart: self.restarts,
                        max: self.max_restarts,
                        pid,
                    });
                }
                Err(e) => {
                    out.push(Supervision::Fatal(format!(
                        "{name} exited ({status}) and could not be restarted: {e:#}\n{}",
                        tail(&log)
                    )));
                    return out;
                }
            }
        }
        let workers = &self.children[1..];
        if !workers.is_empty() && workers.iter().all(|p| p.ended.is_some()) {
            let tails: Vec<String> = workers
                .iter()
                .map(|p| {
                    format!(
                        "{} exited ({}):\n{}",
                        p.name,
                        p.ended.map_or_else(String::new, |s| s.to_string()),
                        tail(&logs.join(format!("{}.log", p.name)))
                    )
                })
                .collect();
            out.push(Supervision::Fatal(format!(
                "every worker stopped and no restart is left (--max-restarts {}):\n{}",
                self.max_restarts,
                tails.join("\n")
            )));
        }
        out
    }

    /// Restarts used so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Names of processes that have exited (a worker that failed to start, say), with their
    /// log tails.
    pub fn exited(&mut self) -> Vec<String> {
        let logs = self.state_dir.join("logs");
        self.children
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "{} exited ({status}):\n{}",
                    p.name,
                    tail(&logs.join(format!("{}.log", p.name)))
                )),
                _ => None,
            })
            .collect()
    }

    /// Asks every process to stop as a supervisor would (SIGTERM: the workers leave their
    /// job, the coordinator tries to checkpoint its running jobs) and waits up to `grace` for them;
    /// whatever is left is killed when the cluster is dropped.
    pub fn terminate(&mut self, grace: Duration) {
        for p in &mut self.children {
            // One already reaped is skipped: its pid may belong to another process by now.
            if !matches!(p.child.try_wait(), Ok(None)) {
                continue;
            }
            if let Ok(pid) = libc::pid_t::try_from(p.child.id()) {
                // SAFETY: kill(2) on a child of this process that has not been reaped (the
                // `Child` is still held and `try_wait` just found it running), so the pid
                // cannot belong to another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|p| matches!(p.child.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Workers first, so none reports the coordinator gone.
        for p in self.children.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// A fresh run directory under `graft-runs/`.
pub fn run_dir(kind: &str) -> PathBuf {
    PathBuf::from("graft-runs").join(format!("{kind}-{}", graft_common::clock::now_ms()))
}

#[cfg(test)]
mod tests {
    use super::thread_shares;

    #[test]
    fn workers_share_the_cores_and_get_at_least_one_thread() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        for (workers, want) in [(1, cores), (cores, 1), (cores * 4, 1)] {
            let shares = thread_shares(workers);
            for var in ["OMP_NUM_THREADS", "RAYON_NUM_THREADS"] {
                // A variable the user set is left to the user.
                let got = shares
                    .iter()
                    .find(|(v, _)| *v == var)
                    .map(|(_, n)| n.clone());
                match std::env::var_os(var) {
                    Some(_) => assert_eq!(got, None, "{var}"),
                    None => assert_eq!(got, Some(want.to_string()), "{var}, {workers} workers"),
                }
            }
        }
    }
}
