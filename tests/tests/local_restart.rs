//! `graft local` restarts a worker that dies, as torchrun does (`--max-restarts`): the real
//! `graft local` with three workers, one of them killed with SIGKILL mid-job. Run in
//! release, one test at a time, as `.ci/run` does.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use graft_tests::{bin, small_mnist_job, wait_for};
use serde_json::Value;

/// Steps of the job: 600 of 60 samples, twelve epochs of the 3,000 images, about 4 s on
/// three workers uninterrupted (2 cores), so that a kill at step 100 lands mid-job.
const STEPS: u64 = 600;

/// `graft local JOB --workers 3 --json --state-dir …` running in the background, its
/// stdout and stderr going to files.
struct Local {
    child: Child,
    state: PathBuf,
    tmp: tempfile::TempDir,
}

impl Local {
    fn start(name: &str, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&file, small_mnist_job(name, 3, STEPS, "ring")).expect("job file");
        let state = tmp.path().join("run");
        let out = std::fs::File::create(tmp.path().join("stdout")).expect("stdout file");
        let err = std::fs::File::create(tmp.path().join("stderr")).expect("stderr file");
        let child = Command::new(bin("graft"))
            .arg("local")
            .arg(&file)
            .args(["--workers", "3", "--json", "--state-dir"])
            .arg(&state)
            .args(extra)
            .env("GRAFT_DATA_DIR", graft_tests::data_dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("graft local");
        Local { child, state, tmp }
    }

    /// The local coordinator's URL, once it serves.
    fn url(&self) -> String {
        let addr = graft_tests::read_when_written(
            &self.state.join("coordinator.addr"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("the coordinator never served:\n{}", self.log("coordinator")));
        format!("http://{}", addr.trim())
    }

    /// `graft status JOB --json` of the local coordinator's one job while it runs.
    fn status(&self, url: &str) -> Value {
        let listed = Command::new(bin("graft"))
            .args(["--coordinator", url, "list", "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("graft list");
        let Some(id) = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|j| j["job"].as_str().map(str::to_string))
        else {
            return Value::Null;
        };
        let out = Command::new(bin("graft"))
            .args(["--coordinator", url, "status", &id, "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("graft status");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null)
    }

    fn wait_for_step(&self, url: &str, step: u64) {
        wait_for(Duration::from_secs(60), || {
            (self.status(url)["steps"].as_u64().unwrap_or(0) >= step).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the job never reached step {step}: {}\n{}",
                self.status(url),
                self.stderr()
            )
        });
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("stderr")).unwrap_or_default()
    }

    /// Waits up to `within` for `graft local` to exit (killing it past that); its status
    /// and the JSON line it printed last.
    fn finish(&mut self, within: Duration) -> (ExitStatus, Value) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for graft local") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "graft local still running after {within:?}\nstderr:\n{}\ncoordinator:\n{}",
                    self.stderr(),
                    self.log("coordinator")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(self.tmp.path().join("stdout")).unwrap_or_default();
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no JSON line: {status}\nstdout:\n{stdout}\nstderr:\n{}",
                    self.stderr()
                )
            });
        (status, json)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Its children get SIGTERM when it dies (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the live child of `parent` started as worker `name` (`--name NAME` on its
/// command line), from /proc: each process's parent in /proc/PID/stat (after the last ')',
/// since the command name may hold spaces), its arguments in /proc/PID/cmdline.
fn worker_pid(parent: u32, name: &str) -> Option<u32> {
    let want = format!("\0--name\0{name}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
        let state = fields.next()?;
        let ppid: u32 = fields.next()?.parse().ok()?;
        if ppid != parent || state == "Z" {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&want)
            .then_some(pid)
    })
}

fn kill9(pid: u32) {
    let p = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) of a worker that graft local started and still runs (just read from
    // /proc as its live child).
    let rc = unsafe { libc::kill(p, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

/// (cause, workers) of each membership change.
fn changes(job: &Value) -> Vec<(String, Vec<String>)> {
    job["membership_changes"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| {
                    let workers = c["workers"]
                        .as_array()
                        .map(|w| {
                            w.iter()
                                .filter_map(|s| s.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    (c["cause"].as_str().unwrap_or("").to_string(), workers)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn kill_worker_mid_job(local: &Local) -> u32 {
    let url = local.url();
    local.wait_for_step(&url, 100);
    let pid = worker_pid(local.child.id(), "worker-1")
        .unwrap_or_else(|| panic!("no worker-1 among graft local's children"));
    kill9(pid);
    eprintln!(
        "killed worker-1 (pid {pid}) at step {}",
        local.status(&url)["steps"]
    );
    pid
}

#[test]
fn a_killed_worker_is_restarted_rejoins_the_group_and_the_job_completes() {
    let started = Instant::now();
    let mut local = Local::start("restart", &[]);
    let old = kill_worker_mid_job(&local);
    // A fresh process under the same name, a child of graft local.
    let new = wait_for(Duration::from_secs(15), || {
        worker_pid(local.child.id(), "worker-1").filter(|p| *p != old)
    })
    .unwrap_or_else(|| panic!("worker-1 was not restarted:\n{}", local.stderr()));
    let (status, job) = local.finish(Duration::from_secs(120));
    let err = local.stderr();
    eprintln!("{err}took {:.1}s", started.elapsed().as_secs_f64());
    assert!(status.success(), "{status}: {job}\n{err}");
    assert_eq!(job["state"], "COMPLETED", "{job}");
    assert_eq!(job["steps"], STEPS, "{job}");
    assert_eq!(
        job["workers"], 3,
        "the restarted worker is back in the group: {job}"
    );
    // The uninterrupted run reaches 0.930 (the regroup changes no parameter: the same
    // global batches in the same order).
    let accuracy = job["metrics"]["target_accuracy"].as_f64().unwrap_or(0.0);
    assert!(accuracy >= 0.90, "accuracy {accuracy}: {job}");
    assert!(
        err.contains("worker-1 exited (signal: 9")
            && err.contains("restart 1 of 3")
            && err.contains(&format!("pid {new}")),
        "{err}"
    );
    // The loss of the old worker-1 and the join of the new one, under another id, into a
    // group of three of the next generation.
    let cs = changes(&job);
    let lost = cs
        .iter()
        .find(|(c, _)| c == "lost")
        .unwrap_or_else(|| panic!("no loss: {cs:?}"));
    let joined = cs
        .iter()
        .find(|(c, _)| c == "joined")
        .unwrap_or_else(|| panic!("no join: {cs:?}"));
    assert!(
        lost.1.len() == 1 && lost.1[0].ends_with("(worker-1)"),
        "{cs:?}"
    );
    assert!(
        joined.1.len() == 1 && joined.1[0].ends_with("(worker-1)") && joined.1[0] != lost.1[0],
        "{cs:?}"
    );
    let formed = cs.iter().rfind(|(c, _)| c == "formed");
    assert!(formed.is_some_and(|(_, w)| w.len() == 3), "{cs:?}");
    assert!(job["generation"].as_u64() >= Some(2), "{job}");
    // Every epoch, the one the kill cut through included, used each sample once.
    for e in job["epochs"].as_array().expect("epochs") {
        assert_eq!(e["used"], 3000, "{e}");
    }
    // One log holds both lives of worker-1; the new one took the replica from a survivor.
    let log = local.log("worker-1");
    assert_eq!(log.matches("registered").count(), 2, "{log}");
    assert!(
        log.contains("received the replica from a survivor"),
        "{log}"
    );
}

#[test]
fn with_max_restarts_0_a_killed_worker_stays_down_and_the_job_waits_then_fails() {
    let started = Instant::now();
    let mut local = Local::start(
        "no-restart",
        &["--max-restarts", "0", "--regroup-timeout-ms", "3000"],
    );
    let url = local.url();
    kill_worker_mid_job(&local);
    // Below workers.min = 3 the job waits for a worker, and none comes.
    let waiting = wait_for(Duration::from_secs(30), || {
        let s = local.status(&url);
        (s["state"] == "RECONFIGURING"
            && s["reason"]
                .as_str()
                .unwrap_or("")
                .contains("2 of workers.min = 3"))
        .then_some(s)
    });
    assert!(
        waiting.is_some(),
        "not waiting: {}\n{}",
        local.status(&url),
        local.stderr()
    );
    assert_eq!(worker_pid(local.child.id(), "worker-1"), None, "restarted");
    let (status, job) = local.finish(Duration::from_secs(60));
    let err = local.stderr();
    eprintln!("{err}took {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(status.code(), Some(1), "a failed job: {status}\n{err}");
    assert_eq!(job["state"], "FAILED", "{job}");
    let reason = job["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("fewer than workers.min = 3") && reason.contains("regroup_timeout_ms"),
        "{reason}"
    );
    assert!(
        err.contains("worker-1 exited (signal: 9") && err.contains("not restarting it"),
        "{err}"
    );
    assert!(!err.contains("restart 1 of"), "{err}");
    let cs = changes(&job);
    assert!(
        cs.iter().any(|(c, _)| c == "lost") && cs.iter().any(|(c, _)| c == "waiting"),
        "{cs:?}"
    );
    assert!(!cs.iter().any(|(c, _)| c == "joined"), "{cs:?}");
}
