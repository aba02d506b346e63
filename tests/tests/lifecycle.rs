//! Health and graceful shutdown, with real processes and real signals: what Kubernetes
//! relies on (probes, SIGTERM within the grace period). Run in release, one test at a time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graft_tests::{Cluster, bin, health, last_json, read_when_written, show, wait_for};

fn moons_job(name: &str, steps: u64, checkpoint_interval: u64) -> String {
    format!(
        r#"
name = "{name}"
seed = 3
[model]
kind = "mlp"
hidden = [32]
[method]
kind = "supervised"
[[datasets]]
name = "moons"
role = "source"
samples = 2000
[[datasets]]
name = "moons"
split = "test"
role = "eval"
[optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.9
[training]
global_batch_size = 32
steps = {steps}
fingerprint_interval = 10
[workers]
min = 2
max = 2
[checkpoint]
interval_steps = {checkpoint_interval}
keep = 5
[evaluation]
interval_steps = {checkpoint_interval}
"#
    )
}

fn submit(c: &Cluster, file: &str, job: &str) -> String {
    let path = c.job_file(file, job);
    let out = c.graft(&["submit", path.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    last_json(&out)["job"].as_str().expect("job id").to_string()
}

fn wait_for_step(c: &Cluster, id: &str, step: u64) {
    wait_for(Duration::from_secs(60), || {
        (c.status(id)["steps"].as_u64().unwrap_or(0) >= step).then_some(())
    })
    .unwrap_or_else(|| panic!("job {id} did not reach step {step}: {}", c.status(id)));
}

/// Checkpoint steps in a job's directory (from the manifests' file names).
fn checkpoint_steps(state: &Path, id: &str) -> Vec<u64> {
    let dir = state.join("jobs").join(id).join("checkpoints");
    let mut steps: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let digits = name.strip_prefix("model-")?.strip_suffix(".safetensors")?;
            digits.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// A worker's health says SERVING only while it is registered with a live coordinator;
/// `liveness` is SERVING throughout. The coordinator's overall health and `liveness` are
/// SERVING while it runs.
#[test]
fn worker_health_follows_its_registration() {
    let mut c = Cluster::start_on_fixed_port(0, 5_000);
    let coord_addr = c.url.trim_start_matches("http://").to_string();
    for service in [
        "",
        "liveness",
        "graft.v1.JobService",
        "graft.v1.ClusterService",
    ] {
        assert_eq!(
            health(&coord_addr, service).as_deref(),
            Ok("SERVING"),
            "coordinator health of {service:?}"
        );
    }
    c.kill_coordinator();

    let ready = c.tmp.path().join("worker.addr");
    let mut worker = Command::new(bin("graft-worker"))
        .args(["--coordinator", &c.url, "--listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready)
        .env("GRAFT_WORKER_CONNECT_TIMEOUT_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start graft-worker");
    let addr = read_when_written(&ready, Duration::from_secs(20)).expect("worker bound");
    // No coordinator yet: alive, not ready.
    assert_eq!(health(&addr, "liveness").as_deref(), Ok("SERVING"));
    assert_eq!(health(&addr, "").as_deref(), Ok("NOT_SERVING"));

    c.start_coordinator();
    wait_for(Duration::from_secs(20), || {
        (health(&addr, "").as_deref() == Ok("SERVING")).then_some(())
    })
    .expect("worker ready once registered");

    // The coordinator goes away: the worker is no longer ready, but alive.
    c.kill_coordinator();
    wait_for(Duration::from_secs(10), || {
        (health(&addr, "").as_deref() == Ok("NOT_SERVING")).then_some(())
    })
    .expect("worker not ready without its coordinator");
    assert_eq!(health(&addr, "liveness").as_deref(), Ok("SERVING"));

    // Back: it registers again and is ready again.
    c.start_coordinator();
    wait_for(Duration::from_secs(20), || {
        (health(&addr, "").as_deref() == Ok("SERVING")).then_some(())
    })
    .expect("worker ready again after the coordinator's restart");
    let status = graft_tests::terminate(&mut worker, Duration::from_secs(10))
        .expect("idle worker exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// SIGTERM to a worker mid-job: it tells the coordinator at once that it is going (the
/// group starts re-forming without it long before the heartbeat timeout, naming the
/// shutdown) and exits cleanly within its grace period. With workers.min = 2 the survivor
/// then waits for a worker, in RECONFIGURING.
#[test]
fn sigterm_makes_a_worker_leave_its_job_and_exit() {
    let mut c = Cluster::start(2, 60_000);
    let id = submit(&c, "leave.toml", &moons_job("leave", 1_000_000, 1_000_000));
    wait_for_step(&c, &id, 20);
    let sent = Instant::now();
    let status = c.terminate_worker(1, Duration::from_secs(15));
    assert!(status.success(), "worker exit status {status:?}");
    let r = wait_for(Duration::from_secs(10), || {
        let r = c.status(&id);
        (r["state"] == "RECONFIGURING").then_some(r)
    })
    .unwrap_or_else(|| panic!("job not re-forming: {}", c.status(&id)));
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "the leave took {:?}; the heartbeat timeout is 60 s",
        sent.elapsed()
    );
    let left = r["membership_changes"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["cause"] == "left"))
        .cloned()
        .unwrap_or_else(|| panic!("no graceful leave recorded: {r}"));
    let detail = left["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("test-worker-1") && detail.contains("shutting down"),
        "{detail}"
    );
    // The survivor still exits cleanly on SIGTERM.
    let status = c.terminate_worker(0, Duration::from_secs(15));
    assert!(status.success(), "survivor exit status {status:?}");
}

/// SIGTERM to the coordinator mid-job: it asks rank 0 for the state after the current step,
/// writes that checkpoint (none was due), exits within its grace period, and a restarted
/// coordinator resumes the job from exactly there and completes it.
#[test]
fn sigterm_makes_the_coordinator_checkpoint_running_jobs_before_it_exits() {
    let mut c = Cluster::start_on_fixed_port(2, 5_000);
    let total = 600;
    // No checkpoint is due before the end: any checkpoint before it is the shutdown's.
    let id = submit(&c, "drain.toml", &moons_job("drain", total, 1_000_000));
    wait_for_step(&c, &id, 40);
    let sent = Instant::now();
    let status = c.terminate_coordinator(Duration::from_secs(30));
    assert!(status.success(), "coordinator exit status {status:?}");
    let took = sent.elapsed();
    let log = c.log("coordinator");
    assert!(
        log.contains("every running job is checkpointed"),
        "took {took:?}; log:\n{log}"
    );
    let steps = checkpoint_steps(&c.state, &id);
    let [at] = steps[..] else {
        panic!("expected one checkpoint from the shutdown, found {steps:?}\n{log}")
    };
    assert!(at > 40 && at < total, "checkpoint at {at}");

    c.start_coordinator();
    let log = c.log("coordinator");
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming job after restart"))
        .and_then(|l| l.split("step=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<u64>().ok());
    assert_eq!(
        resumed,
        Some(at),
        "the restart must resume from step {at}:\n{log}"
    );
    let out = c.graft(&["watch", &id, "--json"]);
    let r = last_json(&out);
    assert_eq!(
        r["state"],
        "COMPLETED",
        "{}\n{}",
        show(&out),
        c.log("coordinator")
    );
    assert_eq!(r["steps"], total);
}

/// A coordinator with nothing running exits on SIGTERM at once, and so does an idle worker.
#[test]
fn idle_processes_exit_promptly_on_sigterm() {
    let mut c = Cluster::start(1, 5_000);
    wait_for(Duration::from_secs(10), || {
        c.log("worker-0").contains("registered").then_some(())
    })
    .expect("worker registered");
    let sent = Instant::now();
    assert!(c.terminate_worker(0, Duration::from_secs(5)).success());
    assert!(c.terminate_coordinator(Duration::from_secs(5)).success());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}

/// The processes whose parent is `pid` (from /proc), as (pid, state).
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(st) = proc_stat(p)
            && st.1 == pid
        {
            out.push((p, st.0));
        }
    }
    out
}

/// State and parent of `pid`, `None` once it is gone. The command name in /proc/PID/stat is
/// in parentheses and may hold spaces, so the fields are read after the last ')'.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `graft local` training a job that will not end, once both workers have taken it; with
/// its children (coordinator and workers) and its run directory.
fn long_local(tmp: &Path) -> (std::process::Child, Vec<(u32, char)>, std::path::PathBuf) {
    let file = tmp.join("long.toml");
    std::fs::write(&file, moons_job("long", 10_000_000, 1_000_000)).expect("job file");
    let state = tmp.join("run");
    let local = Command::new(bin("graft"))
        .args([
            "local",
            file.to_str().expect("utf-8"),
            "--workers",
            "2",
            "--json",
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("graft local");
    wait_for(Duration::from_secs(60), || {
        (0..2)
            .all(|i| run_log(&state, &format!("worker-{i}")).contains("assigned"))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the workers never took the job: {}",
            run_log(&state, "worker-0")
        )
    });
    let children = children_of(local.id());
    assert_eq!(
        children.len(),
        3,
        "a coordinator and two workers: {children:?}"
    );
    (local, children, state)
}

fn run_log(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

/// Waits up to 10 s for `children` to be gone (reaped, or at least dead: a zombie of a reaper
/// that has not run yet); kills and names the ones that are not.
fn assert_gone(children: &[(u32, char)], what: &str) {
    let left = wait_for(Duration::from_secs(10), || {
        let alive: Vec<_> = children
            .iter()
            .filter(|(p, _)| proc_stat(*p).is_some_and(|(s, _)| s != 'Z'))
            .collect();
        alive.is_empty().then_some(())
    });
    if left.is_none() {
        let alive: Vec<_> = children
            .iter()
            .filter_map(|(p, _)| proc_stat(*p).map(|s| (*p, s)))
            .collect();
        // Not left to train on in the background of the other tests.
        for (p, _) in &alive {
            if let Ok(pid) = libc::pid_t::try_from(*p) {
                // SAFETY: kill(2) of a process this test saw as graft local's child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        panic!("still running after {what}: {alive:?}");
    }
}

#[test]
fn sigterm_to_graft_local_takes_its_coordinator_and_workers_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut local, children, state) = long_local(tmp.path());
    let status = graft_tests::terminate(&mut local, Duration::from_secs(10))
        .expect("graft local exits on SIGTERM");
    assert_gone(&children, "graft local stopped");
    assert!(
        !status.success(),
        "a stopped run is not a success: {status:?}"
    );
    let mut err = String::new();
    if let Some(mut e) = local.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(err.contains("SIGTERM"), "says why it stopped: {err}");
    // Passed on, not killed: the coordinator shut down as on SIGTERM. (Whether its drain
    // gets the job's checkpoint races with the workers, which are stopping too.)
    let coordinator = run_log(&state, "coordinator");
    assert!(coordinator.contains("shutting down"), "{coordinator}");
}

#[test]
fn a_killed_graft_local_takes_its_coordinator_and_workers_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut local, children, state) = long_local(tmp.path());
    // SIGKILL: no handler runs, only the children's parent-death signal can stop them.
    local.kill().expect("kill graft local");
    let _ = local.wait();
    assert_gone(&children, "graft local was killed");
    // That signal is SIGTERM: the coordinator still shut down in order.
    let coordinator = run_log(&state, "coordinator");
    assert!(coordinator.contains("shutting down"), "{coordinator}");
}

#[test]
fn a_killed_bench_methods_takes_the_job_it_runs_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let examples = tmp.path().join("examples");
    std::fs::create_dir_all(&examples).expect("examples folder");
    std::fs::write(
        examples.join("long.toml"),
        moons_job("long", 10_000_000, 1_000_000),
    )
    .expect("job file");
    let mut bench = Command::new(bin("graft"))
        .args(["bench", "methods", "--only", "long.toml", "--examples"])
        .arg(&examples)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("graft bench methods");
    // Its `graft local`, once that has started a coordinator and two workers.
    let Some(local) = wait_for(Duration::from_secs(60), || {
        children_of(bench.id())
            .into_iter()
            .find(|(p, _)| children_of(*p).len() == 3)
    }) else {
        let _ = bench.kill();
        panic!("bench methods never started its job");
    };
    let cluster = children_of(local.0);
    // SIGKILL: no handler runs, only the parent-death signal can stop the job.
    bench.kill().expect("kill graft bench methods");
    let _ = bench.wait();
    assert_gone(&[local], "graft bench methods was killed");
    assert_gone(&cluster, "graft bench methods was killed");
}

/// A truncated, damaged or emptied job store stops the coordinator with a message naming
/// the file and what to do (exit 1, not a panic's 101), and is left as it was: it never
/// becomes an empty store that would forget its jobs and reuse their ids.
#[test]
fn a_damaged_store_stops_the_coordinator_with_a_clear_message_and_is_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let store = state.join("graft.redb");
    // A real store first, with a job in it.
    let mut c = Cluster::start(0, 5_000);
    let real = c.state.join("graft.redb");
    c.kill_coordinator();
    let whole = std::fs::read(&real).expect("a store was written");
    for (bytes, what) in [
        (whole[..whole.len() / 2].to_vec(), "damaged"),
        (Vec::new(), "empty"),
        (vec![0x5a; 4096], "damaged"),
    ] {
        std::fs::write(&store, &bytes).expect("write the damaged store");
        let out = Command::new(bin("graft-coordinator"))
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .stdin(Stdio::null())
            .output()
            .expect("run graft-coordinator");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("graft.redb") && err.contains(what) && err.contains("move it aside"),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            std::fs::read(&store).expect("kept"),
            bytes,
            "{what}: the file changed"
        );
    }
}
