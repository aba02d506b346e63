//! Fencing with real processes: a worker that is not dead but silent — stopped with
//! SIGSTOP, or cut off in its own network namespace — is dropped from the group, which
//! re-forms at the next generation; when the worker wakes up or the link comes back, its
//! messages of the old generation are refused, nothing it sends corrupts the job, and the
//! job ends where an uninterrupted run ends. Run in release, one test at a time, as `.ci/run`
//! does.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graft_tests::{
    Cluster, JobTrace, Params, assert_exactly_once, assert_same_parameters, elastic_job, log_field,
    uninterrupted, wait_for,
};

/// Waits until workers `0..n` have registered (so that the job starts on all of them).
fn wait_registered(c: &Cluster, n: usize) {
    wait_for(Duration::from_secs(30), || {
        (0..n)
            .all(|i| c.log(&format!("worker-{i}")).contains("registered"))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "workers did not register:\n{}",
            (0..n)
                .map(|i| c.log(&format!("worker-{i}")))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
}

/// Every worker's log, headed by its index.
fn worker_logs(c: &Cluster) -> String {
    (0..c.workers.len())
        .map(|i| format!("--- worker {i}\n{}", c.log(&format!("worker-{i}"))))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Steps of both jobs: 3,000 samples in batches of 60 make 50 steps an epoch, so 24 epochs.
/// This small job runs at about 500 steps a second on two workers; 1,200 steps leave about
/// two seconds of training after the silent worker comes back (a partitioned one needs
/// about half a second, for its connections to recover), so that it usually finds the job
/// still running and rejoins, rather than finding it over.
const STEPS: u64 = 1200;

/// How long the group may take to re-form without a silent member: the heartbeat timeout
/// (2 s here) and a few seconds, well under the 30 s `collective_timeout_ms` after which a
/// ring neighbour would give up by itself — the members must stop at the coordinator's
/// word, not wait for the silent one.
const REGROUP_WITHIN: Duration = Duration::from_secs(12);

/// Waits until the job runs again at a generation above `above` without worker `name`.
fn wait_for_regroup_without(
    c: &Cluster,
    id: &str,
    above: u64,
    name: &str,
    within: Duration,
) -> serde_json::Value {
    wait_for(within, || {
        let s = c.status(id);
        let formed_without = s["membership_changes"].as_array().is_some_and(|l| {
            l.iter().any(|m| {
                m["cause"] == "formed"
                    && m["generation"].as_u64() > Some(above)
                    && !m["workers"].to_string().contains(name)
            })
        });
        (s["state"] == "RUNNING" && s["generation"].as_u64() > Some(above) && formed_without)
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the group did not re-form without {name}: {}\n{}\n{}",
            c.status(id),
            c.log("coordinator"),
            worker_logs(c)
        )
    })
}

/// The membership changes of a status, as (cause, workers, detail).
fn changes(status: &serde_json::Value) -> Vec<(String, String, String)> {
    status["membership_changes"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| {
                    (
                        c["cause"].as_str().unwrap_or("").to_string(),
                        c["workers"].to_string(),
                        c["detail"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The checks both tests make once the job has ended: it completed, its fingerprints never
/// diverged, every epoch used every sample once, the parameters are the uninterrupted
/// run's, and the trace saw RECONFIGURING then RUNNING at a higher generation.
fn assert_clean_end(
    c: &Cluster,
    id: &str,
    s: &serde_json::Value,
    trace: &JobTrace,
    calm: &Params,
    what: &str,
) {
    assert_eq!(s["state"], "COMPLETED", "{s}\n{}", c.log("coordinator"));
    assert_eq!(s["steps"], STEPS, "{s}");
    let reason = s["reason"].as_str().unwrap_or("");
    assert!(!reason.contains("diverged"), "{reason}");
    for (cause, _, detail) in changes(s) {
        assert!(!detail.contains("diverged"), "{cause}: {detail}");
    }
    let coordinator = c.log("coordinator");
    assert!(
        !coordinator.contains("diverged"),
        "the coordinator saw replicas disagree:\n{coordinator}"
    );
    let seen = trace.seen();
    let reconf = seen
        .iter()
        .position(|e| e.state == "RECONFIGURING")
        .unwrap_or_else(|| panic!("never seen RECONFIGURING: {seen:?}"));
    let was = reconf.checked_sub(1).map_or(0, |i| seen[i].generation);
    assert!(
        seen[reconf..]
            .iter()
            .any(|e| e.state == "RUNNING" && e.generation > was),
        "no RUNNING at a higher generation after RECONFIGURING: {seen:?}"
    );
    assert_exactly_once(s, 3000, STEPS / 50);
    assert_same_parameters(calm, &c.export_params(id), what);
}

/// What became of a worker that was fenced off and came back, from its log:
/// `"rejoined"` (it registered again under a new id and trained in a later generation) or
/// `"dropped"` (it dropped its replica and stayed idle).
fn fate(log: &str) -> &'static str {
    let assigned_again = log
        .lines()
        .filter(|l| l.contains("assigned"))
        .filter_map(|l| {
            l.split("generation=")
                .nth(1)?
                .split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .any(|g| g >= 3);
    if log.matches("registered").count() >= 2 && assigned_again {
        "rejoined"
    } else if log.contains("dropping the replica") || log.matches("registered").count() >= 2 {
        "dropped"
    } else {
        "unknown"
    }
}

/// A field of a worker's log line (`key=value`), from its first line that has `what`.
/// Messages of generation `stale`, sent now that the group has moved on, are refused: a
/// step report with a bogus fingerprint under a current member's id (to the coordinator)
/// and under the stopped worker's forgotten id, and a ring stream to a current member's
/// CollectiveService. (What the woken worker itself sends is timing-dependent; these are
/// its messages replayed on purpose.)
fn assert_stale_messages_refused(
    c: &Cluster,
    job: &str,
    stale: u64,
    step: u64,
    member: usize,
    forgotten: &str,
) {
    use graft_proto::v1 as pb;
    let log = c.log(&format!("worker-{member}"));
    let member_id = log_field(&log, "registered", "worker");
    let ring_addr = log_field(&log, "serving health and the ring", "addr");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut cluster = pb::cluster_service_client::ClusterServiceClient::connect(c.url.clone())
            .await
            .expect("connect to the coordinator");
        for worker in [member_id.as_str(), forgotten] {
            let r = cluster
                .report_step(pb::ReportStepRequest {
                    worker_id: worker.to_string(),
                    job_id: job.to_string(),
                    rank: 0,
                    step,
                    fingerprint: "0123456789abcdef0123456789abcdef".into(),
                    generation: stale,
                    stats: None,
                    times: None,
                })
                .await;
            let e = r.expect_err("a report of a stale generation was accepted");
            eprintln!(
                "stale ReportStep as {worker}: {:?}: {}",
                e.code(),
                e.message()
            );
            if worker == member_id {
                // Replayed without the member's secret: refused before anything is read.
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            } else {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                assert!(
                    e.message()
                        .contains(&format!("generation {stale} is stale")),
                    "{e:?}"
                );
            }
        }
        let mut ring = pb::collective_service_client::CollectiveServiceClient::connect(format!(
            "http://{ring_addr}"
        ))
        .await
        .expect("connect to a survivor's ring");
        let data = vec![0u8; 16];
        let msg = pb::RingMessage {
            job_id: job.to_string(),
            from_rank: 2,
            chunk: Some(pb::TensorChunk {
                offset: 0,
                total_len: 4,
                step,
                generation: stale,
                crc32: graft_proto::chunk::checksum(&data),
                data: data.into(),
            }),
            step,
            generation: stale,
            ..Default::default()
        };
        let e = ring
            .ring(tonic::codegen::tokio_stream::iter([msg]))
            .await
            .expect_err("a ring stream of a stale generation was accepted");
        eprintln!("stale Ring to {ring_addr}: {:?}: {}", e.code(), e.message());
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains(&format!("generation {stale}")),
            "{e:?}"
        );
    });
}

/// Waits up to `within` for worker `i` to learn that it was fenced off (it registered again,
/// its old id being forgotten, or dropped its replica); its log. The job may have ended
/// before a partitioned worker's connections recover from TCP's retransmission backoff.
fn wait_fenced(c: &Cluster, i: usize, within: Duration) -> String {
    let log = || c.log(&format!("worker-{i}"));
    wait_for(within, || {
        let l = log();
        (l.matches("registered").count() >= 2 || l.contains("dropping the replica")).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "worker {i} never learnt it was fenced off within {within:?}:\n{}",
            log()
        )
    })
}

/// Test 4 (hang and fencing): one of three ring workers is stopped with SIGSTOP; after the
/// heartbeat timeout the group re-forms without it. Woken with SIGCONT, it finds its id
/// forgotten (the heartbeat says register again) and its generation over: its old ring
/// streams and reports are refused, it comes back as a new member or drops the job, and the
/// job completes with the parameters of an uninterrupted run.
#[test]
fn a_stopped_worker_is_fenced_off_and_the_result_equals_an_uninterrupted_run() {
    let t0 = Instant::now();
    let job = elastic_job("fence", 2, 3, STEPS, "ring");
    let calm = uninterrupted(&job, 3);
    let mut c = Cluster::start(3, 2_000);
    wait_registered(&c, 3);
    let id = c.submit_job("fence.toml", &job);
    let trace = JobTrace::start(&c.url, &id);
    c.wait_for_step(&id, 30);
    let before = c.status(&id);
    assert_eq!(before["workers"], 3, "{before}");
    let generation = before["generation"].as_u64().expect("generation");
    eprintln!(
        "SIGSTOP worker 1 at step {} (generation {generation})",
        before["steps"]
    );
    c.signal_worker(1, libc::SIGSTOP);
    let regrouped = wait_for_regroup_without(&c, &id, generation, "test-worker-1", REGROUP_WITHIN);
    assert_eq!(regrouped["workers"], 2, "{regrouped}");
    assert!(
        changes(&regrouped)
            .iter()
            .any(|(cause, who, _)| cause == "lost" && who.contains("test-worker-1")),
        "{regrouped}"
    );
    let step = regrouped["steps"].as_u64().expect("steps");
    let forgotten = log_field(&c.log("worker-1"), "registered", "worker");
    assert_stale_messages_refused(&c, &id, generation, step, 0, &forgotten);
    // The group goes on without it for a while, then it wakes up.
    c.wait_for_step(&id, step + 15);
    eprintln!("SIGCONT worker 1 at step {}", c.status(&id)["steps"]);
    c.signal_worker(1, libc::SIGCONT);
    wait_fenced(&c, 1, Duration::from_secs(30));
    let s = c.wait_for_end(&id, Duration::from_secs(180));
    let log = c.log("worker-1");
    eprintln!("worker 1 after SIGCONT:\n{log}");
    assert_clean_end(&c, &id, &s, &trace, &calm, "after a SIGSTOP");
    assert!(c.worker_alive(1), "the woken worker died:\n{log}");
    // Its registration was forgotten while it was stopped: it had to register again.
    assert!(
        log.matches("registered").count() >= 2,
        "the woken worker never registered again:\n{log}"
    );
    match fate(&log) {
        "rejoined" => {
            assert!(
                log.contains("received the replica from a survivor"),
                "{log}"
            );
            let cs = changes(&s);
            assert!(
                cs.iter()
                    .any(|(cause, who, _)| cause == "joined" && who.contains("test-worker-1")),
                "{s}"
            );
        }
        "dropped" => {}
        other => panic!("the woken worker neither rejoined nor dropped the job ({other}):\n{log}"),
    }
    eprintln!(
        "worker 1 {}; test took {:.1} s",
        fate(&log),
        t0.elapsed().as_secs_f64()
    );
}

/// A network namespace joined to the host by a veth pair with a private /30 (the host end
/// `.1`, the namespace's end `.2`); removed, with the pair, when dropped, whatever happened.
struct Netns {
    name: String,
    host_if: String,
    inner_if: String,
    host_ip: String,
    inner_ip: String,
}

/// Runs `ip ARGS`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// The namespace and the pair, or why they cannot be made here (the test is skipped
    /// then): not root, no `ip`, or no right to create namespaces (an unprivileged
    /// container).
    fn create() -> Result<Self, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN".into());
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err("`ip` (iproute2) is not installed".into());
        }
        // Per process, so that two runs at once do not collide: names of at most 15
        // characters, and a /30 in 10.231.0.0/16 (10.231.0.0/30 is block 0).
        let pid = std::process::id();
        let block = pid % 16_384;
        let (hi, lo) = (block * 4 / 256, block * 4 % 256);
        let n = Netns {
            name: format!("graft-fence-{pid}"),
            host_if: format!("gf{pid}h"),
            inner_if: format!("gf{pid}n"),
            host_ip: format!("10.231.{hi}.{}", lo + 1),
            inner_ip: format!("10.231.{hi}.{}", lo + 2),
        };
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &n.name])?;
        ip(&[
            "link",
            "add",
            &n.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &n.inner_if,
        ])?;
        ip(&["link", "set", &n.inner_if, "netns", &n.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", n.host_ip),
            "dev",
            &n.host_if,
        ])?;
        ip(&["link", "set", &n.host_if, "up"])?;
        n.inside(&[
            "addr",
            "add",
            &format!("{}/30", n.inner_ip),
            "dev",
            &n.inner_if,
        ])?;
        n.inside(&["link", "set", &n.inner_if, "up"])?;
        n.inside(&["link", "set", "lo", "up"])?;
        Ok(n)
    }

    /// `ip ARGS` inside the namespace.
    fn inside(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts the link: the namespace's end goes down (the host's loses its carrier), so
    /// that packets either way are dropped and no connection is reset.
    fn cut(&self) {
        self.inside(&["link", "set", &self.inner_if, "down"])
            .expect("cut the link");
    }

    /// Brings the link back.
    fn restore(&self) {
        self.inside(&["link", "set", &self.inner_if, "up"])
            .expect("restore the link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pair's end in it, and with it the pair; the
        // host end is deleted too in case the move into the namespace never happened.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Test 5 (partition): of three ring workers, one runs in its own network namespace behind
/// a veth pair; the test cuts the link mid-job. The coordinator loses the worker's
/// heartbeats and re-forms the group without it; when the link comes back the worker finds
/// its id forgotten and its generation over, comes back as a new member or drops the job,
/// and the job completes with the parameters of an uninterrupted run. Skipped, saying why,
/// where namespaces cannot be made (not root, no `ip`, an unprivileged container).
#[test]
fn a_partitioned_worker_is_fenced_off_and_the_result_equals_an_uninterrupted_run() {
    let t0 = Instant::now();
    let net = match Netns::create() {
        Ok(n) => n,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let job = elastic_job("partition", 2, 3, STEPS, "ring");
    let calm = uninterrupted(&job, 3);
    // Everyone listens on the host end of the pair, which the namespace reaches and which
    // stays up on the host side while the link is cut; the worker in the namespace listens
    // on its own end. Declared after `net`, so that the processes are killed before the
    // namespace is removed.
    let mut c = Cluster::start_listening(&format!("{}:0", net.host_ip), 0, 2_000, &[]);
    let host_listen = format!("{}:0", net.host_ip);
    c.add_worker_via(&[], &host_listen, &[]);
    c.add_worker_via(&[], &host_listen, &[]);
    let inner_listen = format!("{}:0", net.inner_ip);
    let cut_off = c.add_worker_via(&["ip", "netns", "exec", &net.name], &inner_listen, &[]);
    let name = format!("test-worker-{cut_off}");
    wait_registered(&c, 3);
    let id = c.submit_job("partition.toml", &job);
    let trace = JobTrace::start(&c.url, &id);
    c.wait_for_step(&id, 30);
    let before = c.status(&id);
    assert_eq!(before["workers"], 3, "{before}");
    let generation = before["generation"].as_u64().expect("generation");
    eprintln!(
        "cutting the link of worker {cut_off} at step {} (generation {generation})",
        before["steps"]
    );
    net.cut();
    let regrouped = wait_for_regroup_without(&c, &id, generation, &name, REGROUP_WITHIN);
    assert_eq!(regrouped["workers"], 2, "{regrouped}");
    assert!(
        changes(&regrouped)
            .iter()
            .any(|(cause, who, _)| cause == "lost" && who.contains(&name)),
        "{regrouped}"
    );
    let step = regrouped["steps"].as_u64().expect("steps");
    c.wait_for_step(&id, step + 15);
    eprintln!("restoring the link at step {}", c.status(&id)["steps"]);
    net.restore();
    let restored = Instant::now();
    wait_fenced(&c, cut_off, Duration::from_secs(60));
    eprintln!(
        "worker {cut_off} learnt it was fenced off {:.1} s after the link came back",
        restored.elapsed().as_secs_f64()
    );
    let s = c.wait_for_end(&id, Duration::from_secs(180));
    let log = c.log(&format!("worker-{cut_off}"));
    eprintln!("worker {cut_off} (partitioned):\n{log}");
    assert_clean_end(&c, &id, &s, &trace, &calm, "after a partition");
    assert!(
        c.worker_alive(cut_off),
        "the partitioned worker died:\n{log}"
    );
    match fate(&log) {
        "rejoined" => {
            assert!(
                log.contains("received the replica from a survivor"),
                "{log}"
            );
            assert!(
                changes(&s)
                    .iter()
                    .any(|(cause, who, _)| cause == "joined" && who.contains(&name)),
                "{s}"
            );
        }
        "dropped" => {}
        other => {
            panic!("the partitioned worker neither rejoined nor dropped the job ({other}):\n{log}")
        }
    }
    eprintln!(
        "worker {cut_off} {}; test took {:.1} s",
        fate(&log),
        t0.elapsed().as_secs_f64()
    );
}
