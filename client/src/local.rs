//! `graft local` and `graft demo`: a coordinator and N workers as child processes of this
//! binary, on free loopback ports, with their logs in the run's directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use graft_common::logging::LogFormat;

/// A coordinator and its workers, killed when dropped.
pub struct LocalCluster {
    /// The coordinator's URL.
    pub url: String,
    /// Where the store, checkpoints and logs live.
    pub state_dir: PathBuf,
    children: Vec<(String, Child)>,
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
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<File> {
    let p = dir.join(format!("{name}.log"));
    File::create(&p).with_context(|| format!("creating {}", p.display()))
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
#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs between fork and exec and calls only prctl(2) and getppid(2),
    // which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
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
pub(crate) fn die_with_parent(cmd: &mut Command) -> &mut Command {
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&logs, "coordinator")?)
            .spawn()
            .context("starting the coordinator")?;
        let mut cluster = LocalCluster {
            url: String::new(),
            state_dir: opts.state_dir.to_path_buf(),
            children: vec![("coordinator".into(), coordinator)],
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&ready)
                && !a.is_empty()
            {
                break a;
            }
            if let Some((_, c)) = cluster.children.first_mut()
                && let Ok(Some(status)) = c.try_wait()
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
            let child = die_with_parent(&mut Command::new(&worker_exe))
                .envs(omp())
                .args([
                    "--coordinator",
                    &cluster.url,
                    "--name",
                    &name,
                    "--device",
                    opts.device,
                    // Many workers on one host: each serves its health on a free port.
                    "--listen",
                    "127.0.0.1:0",
                    "--log-format",
                    opts.log_format.as_str(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&logs, &name)?)
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            cluster.children.push((name, child));
        }
        Ok(cluster)
    }

    /// Names of processes that have exited (a worker that failed to start, say), with their
    /// log tails.
    pub fn exited(&mut self) -> Vec<String> {
        let logs = self.state_dir.join("logs");
        self.children
            .iter_mut()
            .filter_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "{name} exited ({status}):\n{}",
                    tail(&logs.join(format!("{name}.log")))
                )),
                _ => None,
            })
            .collect()
    }

    /// Asks every process to stop as a supervisor would (SIGTERM: the workers leave their
    /// job, the coordinator tries to checkpoint its running jobs) and waits up to `grace` for them;
    /// whatever is left is killed when the cluster is dropped.
    pub fn terminate(&mut self, grace: Duration) {
        for (_, c) in &self.children {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on a child of this process that has not been reaped (the
                // `Child` is still held), so the pid cannot belong to another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Workers first, so none reports the coordinator gone.
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
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
