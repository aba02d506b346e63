//! The shell around the state, driven without a network: events go through `dispatch`,
//! records through the store, assignments through the long poll. The failure modes
//! themselves are scripted in `state/tests.rs`.

use std::time::Duration;

use graft_transfer::JobSpec;

use super::*;
use crate::job::{JobId, JobState};
use crate::store::Store;
use graft_transfer::StepStats;

fn spec(workers: (u32, u32), steps: u64) -> JobSpec {
    crate::testing::moons_spec(workers, steps)
}

fn coordinator(
    tmp: &tempfile::TempDir,
    heartbeat_timeout_ms: u64,
    gather_window_ms: u64,
) -> Coordinator {
    let config = CoordinatorConfig {
        state_dir: tmp.path().to_path_buf(),
        heartbeat_timeout_ms,
        heartbeat_interval_ms: 1,
        gather_window_ms,
        ..CoordinatorConfig::default()
    };
    let store = Store::open(&tmp.path().join("graft.redb")).expect("store");
    Coordinator::new(config, store).expect("coordinator")
}

fn submit(c: &Coordinator, s: JobSpec) -> JobId {
    let data = JobData::load(&s, tmp_data()).expect("moons need no files");
    c.submit(s, data).expect("submitted").id
}

fn tmp_data() -> &'static std::path::Path {
    std::path::Path::new("/nonexistent")
}

async fn assignment(c: &Coordinator, w: &str) -> Option<pb::Assignment> {
    c.next_assignment(w, None, Duration::from_millis(10))
        .await
        .expect("known worker")
        .0
}

/// Ranks `a` (0) and `b` (1) each send five samples' gradient for step 0, which completes.
fn two_ranks_finish_step_0(c: &Coordinator, id: &JobId, a: &str, b: &str, generation: u64) {
    let (ta, tb) = (
        c.round(a, &id.0, 0, 0, generation)
            .expect("rank 0 is a member"),
        c.round(b, &id.0, 1, 0, generation)
            .expect("rank 1 is a member"),
    );
    let n = ta.round.len;
    let five = StepStats {
        samples: 5,
        ..StepStats::default()
    };
    assert!(
        ta.round
            .deposit(0, vec![0.0; n], five)
            .expect("ok")
            .is_none(),
        "waits for rank 1"
    );
    let reduced = tb
        .round
        .deposit(1, vec![0.0; n], five)
        .expect("ok")
        .expect("complete");
    c.round_done(&id.0, 0, &reduced);
}

#[tokio::test]
async fn a_job_starts_with_max_workers_at_once_and_ranks_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&tmp, 60_000, 60_000);
    let id = submit(&c, spec((1, 2), 5));
    let a = c.register("a".into(), "cpu".into()).expect("registers").0;
    assert!(
        assignment(&c, &a).await.is_none(),
        "waits for a second worker inside the gather window"
    );
    assert_eq!(c.get(&id.0).expect("job").state, JobState::Pending);
    let b = c.register("b".into(), "cpu".into()).expect("registers").0;
    let (x, y) = (
        assignment(&c, &a).await.expect("assigned"),
        assignment(&c, &b).await.expect("assigned"),
    );
    assert_eq!((x.rank, y.rank, x.world_size), (0, 1, 2));
    assert_eq!(c.get(&id.0).expect("job").state, JobState::Running);
}

#[tokio::test]
async fn only_members_reduce_and_only_the_current_step() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&tmp, 60_000, 0);
    let id = submit(&c, spec((1, 1), 5));
    let a = c.register("a".into(), "cpu".into()).expect("registers").0;
    let stranger = c.register("s".into(), "cpu".into()).expect("registers").0;
    let generation = assignment(&c, &a).await.expect("assigned").generation;
    assert!(
        c.round(&stranger, &id.0, 0, 0, generation).is_err(),
        "not a member"
    );
    assert!(
        c.round(&a, &id.0, 0, 1, generation).is_err(),
        "not the current step"
    );
    assert!(
        c.round(&a, &id.0, 0, 0, generation + 1).is_err(),
        "stale generation"
    );
    assert!(
        c.upload_target(&a, &id.0, 1, generation).is_err(),
        "no step is done yet"
    );
    let t = c
        .round(&a, &id.0, 0, 0, generation)
        .expect("member at the current step");
    assert_eq!(t.expected_samples, 10);
    let reduced = t
        .round
        .deposit(
            0,
            vec![0.0; t.round.len],
            StepStats {
                samples: 10,
                ..StepStats::default()
            },
        )
        .expect("ok")
        .expect("done");
    c.round_done(&id.0, 0, &reduced);
    assert_eq!(c.get(&id.0).expect("job").step, 1);
    assert!(c.upload_target(&a, &id.0, 1, generation).is_ok());
}

#[tokio::test]
async fn diverged_replicas_fail_the_job_and_completion_waits_for_the_final_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&tmp, 60_000, 0);
    let id = submit(&c, spec((2, 2), 1));
    let a = c.register("a".into(), "cpu".into()).expect("registers").0;
    let b = c.register("b".into(), "cpu".into()).expect("registers").0;
    let generation = assignment(&c, &a).await.expect("assigned").generation;
    assignment(&c, &b).await.expect("assigned");
    two_ranks_finish_step_0(&c, &id, &a, &b, generation);
    // The final state was processed, but one fingerprint is still missing: not complete yet.
    c.complete(&id);
    c.fingerprint(&a, &id.0, 1, generation, "same".into())
        .expect("recorded");
    assert_eq!(c.get(&id.0).expect("job").state, JobState::Running);
    c.fingerprint(&b, &id.0, 1, generation, "same".into())
        .expect("recorded");
    assert_eq!(c.get(&id.0).expect("job").state, JobState::Completed);

    let id2 = submit(&c, spec((2, 2), 3));
    let generation = assignment(&c, &a).await.expect("assigned").generation;
    assignment(&c, &b).await.expect("assigned");
    two_ranks_finish_step_0(&c, &id2, &a, &b, generation);
    assert!(
        c.fingerprint(&a, &id2.0, 2, generation, "x".into())
            .is_err(),
        "step 2 is not done"
    );
    c.fingerprint(&a, &id2.0, 1, generation, "aaaa".into())
        .expect("recorded");
    c.fingerprint(&b, &id2.0, 1, generation, "bbbb".into())
        .expect("recorded");
    let job = c.get(&id2.0).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.reason.contains("diverged at step 1")
            && job.reason.contains("aaaa")
            && job.reason.contains("bbbb"),
        "{}",
        job.reason
    );
}

#[tokio::test]
async fn a_worker_that_leaves_fails_the_job_with_its_reason_and_frees_the_group() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = coordinator(&tmp, 60_000, 0);
    let id = submit(&c, spec((2, 2), 5));
    let a = c.register("a".into(), "cpu".into()).expect("registers").0;
    let b = c.register("b".into(), "cpu".into()).expect("registers").0;
    assignment(&c, &a).await.expect("assigned");
    assignment(&c, &b).await.expect("assigned");
    c.leave(&b, &id.0, "out of memory", false).expect("member");
    let job = c.get(&id.0).expect("job");
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.reason.contains("rank 1") && job.reason.contains("out of memory"),
        "{}",
        job.reason
    );
    assert_eq!(
        c.heartbeat(&a, &id.0, 0).expect("ok"),
        Some(vec![id.0.clone()]),
        "the survivor is told to stop"
    );
    let next = submit(&c, spec((2, 2), 5));
    assert_eq!(assignment(&c, &a).await.expect("free again").job_id, next.0);
}

#[tokio::test]
async fn jobs_survive_a_restart_and_unfinished_ones_are_pending_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let id = {
        let c = coordinator(&tmp, 60_000, 0);
        let id = submit(&c, spec((1, 1), 5));
        let a = c.register("a".into(), "cpu".into()).expect("registers").0;
        assignment(&c, &a).await.expect("assigned");
        assert_eq!(c.get(&id.0).expect("job").state, JobState::Running);
        id
    };
    let c = coordinator(&tmp, 60_000, 0);
    let job = c.get(&id.0).expect("job kept");
    assert_eq!(job.state, JobState::Pending);
    assert!(
        job.reason.contains("resuming from step 0"),
        "{}",
        job.reason
    );
}

#[tokio::test]
async fn job_directories_the_store_does_not_know_keep_their_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A store lost while job-1..job-4 had written files.
    std::fs::create_dir_all(tmp.path().join("jobs/job-4/checkpoints")).expect("dir");
    std::fs::create_dir_all(tmp.path().join("jobs/job-2")).expect("dir");
    std::fs::create_dir_all(tmp.path().join("jobs/not-a-job")).expect("dir");
    let c = coordinator(&tmp, 60_000, 0);
    let id = submit(&c, spec((1, 1), 5));
    assert!(id.0.starts_with("job-5-"), "{id}");
    // The random part makes ids unique even across stores: the next is not this one again.
    let next = submit(&c, spec((1, 1), 5));
    assert!(next.0.starts_with("job-6-"), "{next}");
    assert_ne!(id.0[6..], next.0[6..]);
}
