//! Elastic training with real processes: a worker killed with SIGKILL, stopped with
//! SIGTERM, or started mid-job; the group re-forms with the next generation and the job
//! ends where an uninterrupted run ends. Run in release, one test at a time, as `.ci/run`
//! does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use graft_tests::{
    Cluster, assert_exactly_once, assert_same_parameters, elastic_job, uninterrupted, wait_for,
};

fn causes(status: &serde_json::Value) -> Vec<String> {
    status["membership_changes"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|c| c["cause"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Test 1 (loss ≡ no loss) and test 2 (exactly once): three workers on the ring, one killed
/// with SIGKILL at a random step; the survivors re-form, the job completes with the
/// parameters of an uninterrupted run, and every epoch — the one the kill cut through
/// included — used every sample exactly once.
#[test]
fn a_worker_killed_mid_run_costs_no_progress_and_the_result_equals_an_uninterrupted_run() {
    // 3,000 samples in batches of 60: 50 steps an epoch, four epochs.
    let job = elastic_job("elastic", 2, 3, 200, "ring");
    let calm = uninterrupted(&job, 3);
    let mut c = Cluster::start(3, 2_000);
    let id = c.submit_job("elastic.toml", &job);
    let at = 20
        + u64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 100,
        );
    c.wait_for_step(&id, at);
    eprintln!("killing worker 1 at step {}", c.status(&id)["steps"]);
    c.kill_worker(1);
    let s = c.wait_for_end(&id, Duration::from_secs(120));
    assert_eq!(s["state"], "COMPLETED", "{s}\n{}", c.log("coordinator"));
    assert_eq!(s["steps"], 200);
    assert!(s["generation"].as_u64() >= Some(2), "{s}");
    let cs = causes(&s);
    assert!(cs.iter().any(|c| c == "formed"), "{cs:?}");
    assert_eq!(s["workers"], 2, "the survivors finish the job: {s}");
    assert_exactly_once(&s, 3000, 4);
    assert_same_parameters(&calm, &c.export_params(&id), "after a SIGKILL");
    // The survivors kept their replicas: none fetched state.
    for w in [0, 2] {
        let log = c.log(&format!("worker-{w}"));
        assert!(log.contains("keeping the replica"), "worker {w}: {log}");
    }
}

/// Test 3 (join): two workers, a third started mid-job joins at a step boundary, receives
/// the replica from a peer (not from the coordinator or the disk), the fingerprints agree,
/// and the result is that of the uninterrupted run.
#[test]
fn a_worker_started_mid_job_joins_with_a_peers_replica_and_changes_nothing() {
    let job = elastic_job("join", 2, 3, 150, "ring");
    let calm = uninterrupted(&job, 2);
    let mut c = Cluster::start(2, 2_000);
    let id = c.submit_job("join.toml", &job);
    c.wait_for_step(&id, 30);
    let joiner = c.add_worker();
    let s = c.wait_for_end(&id, Duration::from_secs(120));
    assert_eq!(s["state"], "COMPLETED", "{s}\n{}", c.log("coordinator"));
    assert_eq!(s["workers"], 3, "{s}");
    let cs = causes(&s);
    assert!(cs.iter().any(|c| c == "joined"), "{cs:?}");
    let log = c.log(&format!("worker-{joiner}"));
    assert!(
        log.contains("received the replica from a survivor"),
        "{log}"
    );
    assert_exactly_once(&s, 3000, 3);
    assert_same_parameters(&calm, &c.export_params(&id), "after a join");
}

/// Test 7 (below min, then back), with the star and a graceful leave: workers.min = 2, one
/// of two is killed; the job waits in RECONFIGURING naming why, and completes when a new
/// worker comes. Then one of two leaves on SIGTERM and none comes: the survivor's state is
/// checkpointed at once, and the job fails after regroup_timeout_ms, saying so.
#[test]
fn below_min_a_job_waits_for_workers_and_fails_only_after_the_regroup_timeout() {
    let mut c = Cluster::start_with_args(2, 2_000, &["--regroup-timeout-ms", "4000"]);
    let job = elastic_job("below", 2, 2, 150, "star");
    let id = c.submit_job("below.toml", &job);
    c.wait_for_step(&id, 20);
    c.kill_worker(0);
    let waiting = wait_for(Duration::from_secs(30), || {
        let s = c.status(&id);
        (s["state"] == "RECONFIGURING"
            && s["reason"].as_str().unwrap_or("").contains("workers.min"))
        .then_some(s)
    })
    .unwrap_or_else(|| panic!("not waiting: {}", c.status(&id)));
    assert!(
        waiting["reason"]
            .as_str()
            .unwrap_or("")
            .contains("1 of workers.min = 2"),
        "{waiting}"
    );
    c.add_worker();
    let s = c.wait_for_end(&id, Duration::from_secs(120));
    assert_eq!(s["state"], "COMPLETED", "{s}\n{}", c.log("coordinator"));
    assert_exactly_once(&s, 3000, 3);

    let id = c.submit_job(
        "below-again.toml",
        &job.replace("\"below\"", "\"below-again\""),
    );
    c.wait_for_step(&id, 20);
    let status = c.terminate_worker(1, Duration::from_secs(15));
    assert!(status.success(), "SIGTERM exit: {status}");
    let s = c.wait_for_end(&id, Duration::from_secs(60));
    assert_eq!(s["state"], "FAILED", "{s}");
    let reason = s["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("fewer than workers.min = 2") && reason.contains("regroup_timeout_ms"),
        "{reason}"
    );
    let cs = causes(&s);
    assert!(
        cs.iter().any(|c| c == "left") && cs.iter().any(|c| c == "waiting"),
        "{cs:?}"
    );
    // The survivor's state was checkpointed when the group fell below min (the job has no
    // checkpoint interval: this is the only one), so the failure loses nothing it held.
    let checkpoint = s["checkpoint"].as_str().unwrap_or("");
    let step: u64 = checkpoint
        .rsplit("model-")
        .next()
        .and_then(|t| t.strip_suffix(".safetensors"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint of the survivors' state: {s}"));
    assert!(step >= 20, "checkpoint at step {step}: {s}");
    assert!(std::path::Path::new(checkpoint).is_file(), "{checkpoint}");
}

/// Test 6: the coordinator is killed with SIGKILL mid-job while its workers live; restarted
/// on its state directory, it takes the workers back as they register again and continues
/// from their replicas — not from the newest checkpoint (there is none before the end) —
/// so the crash costs at most the step in flight, and the result is the uninterrupted run's.
#[test]
fn a_coordinator_killed_mid_job_continues_from_the_live_replicas() {
    let job = elastic_job("phoenix", 2, 3, 200, "ring");
    let calm = uninterrupted(&job, 3);
    let mut c = Cluster::start_on_fixed_port(3, 2_000);
    let id = c.submit_job("phoenix.toml", &job);
    c.wait_for_step(&id, 60);
    let before = c.status(&id)["steps"].as_u64().unwrap_or(0);
    c.kill_coordinator();
    c.start_coordinator();
    let s = c.wait_for_end(&id, Duration::from_secs(120));
    assert_eq!(s["state"], "COMPLETED", "{s}\n{}", c.log("coordinator"));
    let resumed = s["membership_changes"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["cause"] == "resumed"))
        .cloned()
        .unwrap_or_else(|| panic!("not resumed from the replicas: {s}"));
    let from = resumed["step"].as_u64().unwrap_or(0);
    assert!(
        from + 1 >= before,
        "resumed at step {from}, the job had done {before} when the coordinator died: {resumed}"
    );
    assert_exactly_once(&s, 3000, 4);
    assert_same_parameters(&calm, &c.export_params(&id), "after a coordinator SIGKILL");
}
