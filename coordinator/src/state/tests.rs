//! The transitions, scripted as event sequences: no store, no network, no clock, no sleep.
//! Time is whatever the script says it is.

use std::path::Path;
use std::sync::Arc;

use graft_common::{JobId, WorkerId};
use graft_transfer::StepStats;

use super::*;
use crate::job::{JobRecord, JobState};
use crate::jobdata::JobData;
use crate::reduce::RoundStatus;

const HEARTBEAT_MS: u64 = 5_000;
const WINDOW_MS: u64 = 1_000;
const STEP_TIMEOUT_MS: u64 = 30_000;
const REGROUP_TIMEOUT_MS: u64 = 60_000;

/// A coordinator's state and a clock the test moves.
struct Script {
    state: State,
    now: Now,
    next_job: u64,
}

/// What one event gave: its answer and the other actions.
struct Outcome {
    answer: Result<Reply, CoordinatorError>,
    actions: Vec<Action>,
}

impl Outcome {
    fn reply(self) -> Reply {
        match self.answer {
            Ok(r) => r,
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn refusal(self) -> CoordinatorError {
        match self.answer {
            Ok(r) => panic!("expected a refusal, got {r:?}"),
            Err(e) => e,
        }
    }

    fn persisted(&self) -> Vec<&JobRecord> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Persist(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn failed_rounds(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::FailRound { .. }))
            .count()
    }

    fn assigned(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Assigned))
    }

    fn finished_published(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a,
                Action::Publish(
                    _,
                    pb::JobEvent {
                        event: Some(pb::job_event::Event::Finished(_))
                    }
                )
            )
        })
    }
}

impl Script {
    fn new() -> Self {
        Self {
            state: State::new(
                Limits {
                    heartbeat_timeout_ms: HEARTBEAT_MS,
                    gather_window_ms: WINDOW_MS,
                    step_timeout_ms: STEP_TIMEOUT_MS,
                    regroup_timeout_ms: REGROUP_TIMEOUT_MS,
                    max_workers: 8,
                },
                [9; graft_common::group_key::KEY_BYTES],
            ),
            now: Now {
                mono_ms: 0,
                unix_ms: 1_700_000_000_000,
            },
            next_job: 1,
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.unix_ms += ms;
    }

    fn send(&mut self, kind: EventKind) -> Outcome {
        let mut actions = apply(&mut self.state, Event { at: self.now, kind });
        let answers = actions
            .iter()
            .filter(|a| matches!(a, Action::Reply(_) | Action::Refuse(_)))
            .count();
        assert_eq!(
            answers, 1,
            "every event has exactly one answer: {actions:?}"
        );
        let i = actions
            .iter()
            .position(|a| matches!(a, Action::Reply(_) | Action::Refuse(_)))
            .expect("an answer");
        let answer = match actions.remove(i) {
            Action::Reply(r) => Ok(r),
            Action::Refuse(e) => Err(e),
            _ => unreachable!("filtered above"),
        };
        Outcome { answer, actions }
    }

    fn submit(&mut self, workers: (u32, u32), steps: u64, allreduce: &str) -> JobId {
        let mut spec = crate::testing::moons_spec(workers, steps);
        if allreduce == "ring" {
            spec.allreduce = graft_transfer::spec::AllReduce::Ring;
        }
        let data = JobData::load(&spec, Path::new("/nonexistent")).expect("moons need no file");
        let id = JobId(format!("job-{}", self.next_job));
        self.next_job += 1;
        let record = JobRecord::new(id.clone(), spec, data.total_steps());
        match self
            .send(EventKind::JobSubmitted {
                record: Box::new(record),
                data: Arc::new(data),
                start: None,
            })
            .reply()
        {
            Reply::Record(r) => assert_eq!(r.id, id),
            other => panic!("{other:?}"),
        }
        id
    }

    fn register(&mut self, name: &str) -> WorkerId {
        match self
            .send(EventKind::WorkerRegistered {
                id: WorkerId(format!("w-{name}-{}", self.state.next_worker)),
                secret: format!("secret-of-{name}"),
                name: name.into(),
                device: "cpu".into(),
                collective: format!("127.0.0.1:{}", 7000 + self.state.next_worker),
                held: None,
            })
            .reply()
        {
            Reply::Registered(id) => id,
            other => panic!("{other:?}"),
        }
    }

    fn poll(&mut self, w: &WorkerId) -> Option<pb::Assignment> {
        match self
            .send(EventKind::AssignmentPolled {
                worker: w.clone(),
                held: None,
            })
            .reply()
        {
            Reply::Assignment { assignment, .. } => assignment,
            other => panic!("{other:?}"),
        }
    }

    /// `w` holds its replica of `job` (trained in `generation`) at `step`.
    fn poll_held(
        &mut self,
        w: &WorkerId,
        job: &JobId,
        generation: u64,
        step: u64,
        fp: &str,
    ) -> (Option<pb::Assignment>, bool) {
        self.poll_blaming(w, job, (generation, step), fp, ("", None))
    }

    /// [`Script::poll_held`] from a worker whose ring failed `why`, pointing at `suspect`.
    fn poll_blaming(
        &mut self,
        w: &WorkerId,
        job: &JobId,
        (generation, step): (u64, u64),
        fp: &str,
        (why, suspect): (&str, Option<u32>),
    ) -> (Option<pb::Assignment>, bool) {
        match self
            .send(EventKind::AssignmentPolled {
                worker: w.clone(),
                held: Some((
                    job.clone(),
                    generation,
                    Held {
                        step,
                        fingerprint: fp.into(),
                        why: why.into(),
                        suspect,
                    },
                )),
            })
            .reply()
        {
            Reply::Assignment {
                assignment,
                drop_held,
            } => (assignment, drop_held),
            other => panic!("{other:?}"),
        }
    }

    fn heartbeat(&mut self, w: &WorkerId, job: &JobId, generation: u64) -> Vec<String> {
        match self
            .send(EventKind::Heartbeat {
                worker: w.clone(),
                job: job.0.clone(),
                generation,
            })
            .reply()
        {
            Reply::Heartbeat(Some(abort)) => abort,
            other => panic!("{other:?}"),
        }
    }

    fn open(&mut self, w: &WorkerId, job: &JobId, rank: u32, step: u64, gen_: u64) -> Outcome {
        self.send(EventKind::RoundOpened {
            worker: w.clone(),
            job: job.clone(),
            rank,
            step,
            generation: gen_,
        })
    }

    fn job(&self, id: &JobId) -> &JobEntry {
        self.state.jobs.get(id).expect("job")
    }

    /// Two workers, a job of `steps` steps running on them (ranks 0 and 1).
    fn running_pair(&mut self, steps: u64, allreduce: &str) -> (JobId, WorkerId, WorkerId) {
        let id = self.submit((2, 2), steps, allreduce);
        let a = self.register("alpha");
        let b = self.register("beta");
        assert_eq!(self.job(&id).record.state, JobState::Running);
        let (ra, rb) = (
            self.poll(&a).expect("a assigned"),
            self.poll(&b).expect("b assigned"),
        );
        assert_eq!((ra.rank, rb.rank, ra.generation), (0, 1, 1));
        (id, a, b)
    }

    /// Both ranks deposit a zero gradient of step `step`; the round completes.
    fn star_step(&mut self, id: &JobId, a: &WorkerId, b: &WorkerId, step: u64) {
        let tickets: Vec<RoundTicket> = [(a, 0), (b, 1)]
            .into_iter()
            .map(|(w, r)| match self.open(w, id, r, step, 1).reply() {
                Reply::Round(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        let mut reduced = None;
        for t in &tickets {
            let part = StepStats {
                samples: t.expected_samples,
                ..StepStats::default()
            };
            reduced = t
                .round
                .deposit(t.rank, vec![0.0; t.round.len], part)
                .expect("deposit");
        }
        let reduced = reduced.expect("complete after both ranks");
        self.send(EventKind::RoundCompleted {
            job: id.clone(),
            step,
            stats: reduced.stats,
        })
        .reply();
    }

    fn fingerprint(&mut self, w: &WorkerId, id: &JobId, step: u64, fp: &str) -> Outcome {
        self.send(EventKind::FingerprintReported {
            worker: w.clone(),
            job: id.clone(),
            step,
            generation: 1,
            fingerprint: fp.into(),
        })
    }
}

#[test]
fn a_job_starts_at_once_with_max_workers_and_after_the_window_with_min() {
    let mut s = Script::new();
    let quick = s.submit((2, 2), 5, "star");
    let a = s.register("a");
    assert_eq!(s.job(&quick).record.state, JobState::Pending);
    let b = s.register("b");
    assert_eq!(s.job(&quick).record.state, JobState::Running);
    assert!(s.poll(&a).is_some() && s.poll(&b).is_some());
    assert!(s.poll(&a).is_none(), "an assignment is taken once");

    let slow = s.submit((1, 3), 5, "star");
    let c = s.register("c");
    assert_eq!(s.job(&slow).record.state, JobState::Pending);
    s.advance(WINDOW_MS - 1);
    assert!(!s.send(EventKind::Tick).assigned());
    s.advance(2);
    assert!(s.send(EventKind::Tick).assigned());
    let job = s.job(&slow);
    assert_eq!(job.record.state, JobState::Running);
    assert_eq!(job.run.as_ref().map(|r| r.members.clone()), Some(vec![c]));
}

#[test]
fn a_silent_worker_is_lost_at_the_heartbeat_timeout_and_below_min_the_job_waits_then_fails() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(10, "star");
    // Rank 0 waits in step 0's round when rank 1 goes silent.
    let Reply::Round(t) = s.open(&a, &id, 0, 0, 1).reply() else {
        panic!("a round")
    };
    s.advance(HEARTBEAT_MS);
    s.heartbeat(&a, &id, 1);
    assert_eq!(s.job(&id).record.state, JobState::Running, "not yet lost");
    s.advance(1);
    let out = s.send(EventKind::Tick);
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Reconfiguring);
    assert!(
        job.record.reason.contains(&b.0)
            && job.record.reason.contains("beta")
            && job.record.reason.contains("rank 1"),
        "{}",
        job.record.reason
    );
    assert_eq!(
        out.persisted().last().map(|r| r.state),
        Some(JobState::Reconfiguring)
    );
    assert!(
        !s.state.workers.contains_key(&b),
        "the silent worker is gone"
    );
    // The action names the round rank 0 waits on, and why it ends.
    let failed = out.actions.iter().find_map(|a| match a {
        Action::FailRound { round, reason } => Some((round.clone(), reason.clone())),
        _ => None,
    });
    let (round, reason) = failed.expect("a failed round");
    assert!(Arc::ptr_eq(&round, &t.round));
    assert!(
        reason.contains("regrouping") && reason.contains("stopped sending heartbeats"),
        "{reason}"
    );
    round.fail(&reason);
    assert!(matches!(&*t.round.subscribe().borrow(), RoundStatus::Failed(r) if *r == reason));
    // The survivor is told to stop, holds its replica at step 0, and waits: 1 < min = 2.
    assert_eq!(s.heartbeat(&a, &id, 1), vec![id.0.clone()]);
    let (none, drop) = s.poll_held(&a, &id, 1, 0, "f0");
    assert!(none.is_none() && !drop);
    let job = s.job(&id);
    assert!(
        job.record.reason.contains("1 of workers.min = 2"),
        "{}",
        job.record.reason
    );
    assert_eq!(
        job.record.changes.last().map(|c| c.cause.as_str()),
        Some("waiting")
    );
    s.advance(REGROUP_TIMEOUT_MS);
    for _ in 0..2 {
        s.heartbeat(&a, &id, 0);
        s.send(EventKind::Tick);
    }
    assert_eq!(s.job(&id).record.state, JobState::Reconfiguring, "not yet");
    s.advance(1);
    s.heartbeat(&a, &id, 0);
    let out = s.send(EventKind::Tick);
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Failed);
    assert!(
        job.record.reason.contains("fewer than workers.min = 2"),
        "{}",
        job.record.reason
    );
    assert!(out.finished_published());
    // A silent worker must register again.
    match s
        .send(EventKind::Heartbeat {
            worker: b,
            job: String::new(),
            generation: 0,
        })
        .reply()
    {
        Reply::Heartbeat(None) => {}
        other => panic!("{other:?}"),
    }
}

/// Three workers, min 2: a job of `steps` steps running on them (ranks 0, 1, 2).
fn running_trio(s: &mut Script, steps: u64, allreduce: &str) -> (JobId, Vec<WorkerId>) {
    let id = s.submit((2, 3), steps, allreduce);
    let ws: Vec<WorkerId> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| s.register(n))
        .collect();
    assert_eq!(s.job(&id).record.state, JobState::Running);
    for (r, w) in ws.iter().enumerate() {
        assert_eq!(s.poll(w).map(|a| a.rank), Some(r as u32));
    }
    (id, ws)
}

#[test]
fn a_lost_worker_regroups_the_survivors_who_keep_their_replicas_and_old_messages_are_refused() {
    let mut s = Script::new();
    let (id, ws) = running_trio(&mut s, 10, "star");
    let [a, b, c] = [&ws[0], &ws[1], &ws[2]];
    // Step 0 completes on the three; in step 1 the second worker dies.
    let tickets: Vec<RoundTicket> = [(a, 0), (b, 1), (c, 2)]
        .into_iter()
        .map(|(w, r)| match s.open(w, &id, r, 0, 1).reply() {
            Reply::Round(t) => t,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut reduced = None;
    for t in &tickets {
        let st = StepStats {
            samples: t.expected_samples,
            ..StepStats::default()
        };
        reduced = t
            .round
            .deposit(t.rank, vec![0.0; t.round.len], st)
            .expect("ok");
    }
    s.send(EventKind::RoundCompleted {
        job: id.clone(),
        step: 0,
        stats: reduced.expect("complete").stats,
    })
    .reply();
    s.open(a, &id, 0, 1, 1).reply();
    s.advance(HEARTBEAT_MS / 2);
    s.heartbeat(a, &id, 1);
    s.heartbeat(c, &id, 1);
    s.advance(HEARTBEAT_MS / 2 + 1);
    let out = s.send(EventKind::Tick);
    assert_eq!(out.failed_rounds(), 1, "step 1 is abandoned");
    assert_eq!(s.job(&id).record.state, JobState::Reconfiguring);
    // The survivors hold their replicas at step 1; once both have said so, generation 2
    // forms with them as ranks 0 and 1, each continuing its own replica.
    let (none, _) = s.poll_held(a, &id, 1, 1, "fp1");
    assert!(none.is_none(), "the third survivor has not reported");
    let (ga, _) = s.poll_held(c, &id, 1, 1, "fp1");
    let gc = ga.expect("c's new assignment");
    let ga = s.poll(a).expect("a's new assignment");
    assert_eq!(
        (ga.rank, gc.rank, ga.world_size, ga.generation),
        (0, 1, 2, 2)
    );
    assert_eq!((ga.start_step, gc.start_step), (1, 1));
    assert!(
        ga.state_from.is_empty() && gc.state_from.is_empty(),
        "replicas continue"
    );
    assert!(!ga.has_initial_state);
    // The new generation has its own key, the same for both members.
    let key = |generation| {
        graft_common::group_key::GroupKey::derive(&s.state.group_seed, &id.0, generation)
            .as_bytes()
            .to_vec()
    };
    assert_eq!((&ga.group_key, &gc.group_key), (&key(2), &key(2)));
    assert_ne!(key(1), key(2));
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Running);
    assert_eq!(
        (job.record.generation, job.record.step, job.record.workers),
        (2, 1, 2)
    );
    let causes: Vec<&str> = job
        .record
        .changes
        .iter()
        .map(|c| c.cause.as_str())
        .collect();
    assert_eq!(causes, vec!["lost", "formed"]);
    // A message of generation 1 is refused, whoever sends it; generation 2 goes on.
    let e = s.open(a, &id, 0, 1, 1).refusal();
    assert!(e.to_string().contains("generation 1 is stale"), "{e}");
    let e = s.fingerprint(c, &id, 1, "fp1").refusal();
    assert!(e.to_string().contains("stale"), "{e}");
    assert_eq!(
        s.heartbeat(c, &id, 1),
        vec![id.0.clone()],
        "an old trainer stops"
    );
    assert!(s.heartbeat(c, &id, 2).is_empty());
    assert!(matches!(s.open(a, &id, 0, 1, 2).reply(), Reply::Round(_)));
}

#[test]
fn a_member_whose_ring_failed_starts_the_regroup_and_the_one_behind_fetches_the_replica() {
    let mut s = Script::new();
    let (id, ws) = running_trio(&mut s, 10, "ring");
    let [a, b, c] = [&ws[0], &ws[1], &ws[2]];
    // The ring broke in step 4 when the third worker died: the first had completed it (its
    // sum was in), the second had not. The coordinator has heard of step 2 only.
    let batch = s.job(&id).record.spec.training.global_batch_size as u64;
    for step in 0..3 {
        let r = s.send(EventKind::RingStepReported {
            worker: a.clone(),
            job: id.clone(),
            rank: 0,
            step,
            generation: 1,
            stats: StepStats {
                loss_sum: 1.0,
                samples: batch,
                correct: 0,
            },
            times: None,
        });
        assert!(matches!(r.reply(), Reply::StopAt(0)));
    }
    let (none, drop) = s.poll_blaming(
        b,
        &id,
        (1, 4),
        "behind",
        ("step 4: rank 2 at 127.0.0.1:7003 took nothing", Some(2)),
    );
    assert!(none.is_none() && !drop);
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Reconfiguring);
    // The change names the member that failed the ring, not the survivor that reports it.
    let gamma = format!("{c}");
    assert!(
        job.record.reason.contains(&gamma)
            && job.record.reason.contains("rank 2, failed the ring of")
            && job.record.reason.contains("after step 4: step 4: rank 2"),
        "{}",
        job.record.reason
    );
    // Every member is told to stop; the first holds step 5; the dead one times out.
    assert_eq!(s.heartbeat(a, &id, 1), vec![id.0.clone()]);
    let (none, _) = s.poll_held(a, &id, 1, 5, "ahead");
    assert!(
        none.is_none(),
        "the third member has neither reported nor gone"
    );
    s.advance(HEARTBEAT_MS / 2);
    s.heartbeat(a, &id, 0);
    s.heartbeat(b, &id, 0);
    s.advance(HEARTBEAT_MS / 2 + 1);
    s.send(EventKind::Tick);
    assert!(!s.state.workers.contains_key(c));
    let ga = s.poll(a).expect("a's assignment");
    let gb = s.poll(b).expect("b's assignment");
    assert_eq!((ga.generation, ga.start_step, gb.start_step), (2, 5, 5));
    assert!(ga.state_from.is_empty(), "a's replica is at step 5");
    assert_eq!(gb.state_from, ga.peers[0], "b fetches step 5 from a");
    let job = s.job(&id);
    assert_eq!(job.record.step, 5);
    // The ledger counts the steps the survivors completed that rank 0 never reported.
    let used: u64 = job.record.epochs.iter().map(|e| e.used).sum();
    assert_eq!(used, 5 * batch);
}

#[test]
fn replicas_that_disagree_at_the_regroup_fail_the_job() {
    let mut s = Script::new();
    let (id, ws) = running_trio(&mut s, 10, "star");
    s.send(EventKind::WorkerLeft {
        worker: ws[2].clone(),
        job: id.clone(),
        reason: "SIGTERM".into(),
        graceful: true,
    })
    .reply();
    assert_eq!(s.job(&id).record.state, JobState::Reconfiguring);
    assert!(
        !s.state.workers.contains_key(&ws[2]),
        "a leaver is forgotten, never offered as a joiner"
    );
    s.poll_held(&ws[0], &id, 1, 0, "one");
    s.poll_held(&ws[1], &id, 1, 0, "two");
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Failed);
    assert!(
        job.record.reason.contains("replicas diverged at step 0"),
        "{}",
        job.record.reason
    );
}

#[test]
fn a_free_worker_joins_a_group_below_max_and_fetches_the_replica_from_a_survivor() {
    let mut s = Script::new();
    let id = s.submit((2, 3), 10, "star");
    let a = s.register("alpha");
    let b = s.register("beta");
    s.advance(WINDOW_MS + 1);
    s.send(EventKind::Tick);
    assert_eq!(s.job(&id).run.as_ref().map(|r| r.members.len()), Some(2));
    s.poll(&a).expect("a");
    s.poll(&b).expect("b");
    s.star_step(&id, &a, &b, 0);
    s.star_step(&id, &a, &b, 1);
    // A third worker registers: the group re-forms at the next step boundary to take it.
    let c = s.register("gamma");
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Reconfiguring);
    assert!(
        job.record.reason.contains("gamma") && job.record.reason.contains("can join"),
        "{}",
        job.record.reason
    );
    let e = s.open(&a, &id, 0, 2, 1).refusal();
    assert!(e.to_string().contains("re-forming"), "{e}");
    s.poll_held(&a, &id, 1, 2, "fp2");
    s.poll_held(&b, &id, 1, 2, "fp2");
    let gc = s.poll(&c).expect("the joiner's assignment");
    let ga = s.poll(&a).expect("a");
    assert_eq!(
        (gc.rank, gc.world_size, gc.generation, gc.start_step),
        (2, 3, 2, 2)
    );
    assert_eq!(gc.state_from, ga.peers[0], "from rank 0's replica");
    assert!(ga.state_from.is_empty());
    let causes: Vec<&str> = s
        .job(&id)
        .record
        .changes
        .iter()
        .map(|c| c.cause.as_str())
        .collect();
    assert_eq!(causes, vec!["joining", "joined", "formed"]);
}

#[test]
fn a_held_replica_of_an_ended_job_is_dropped() {
    let mut s = Script::new();
    let (id, a, _b) = s.running_pair(10, "star");
    s.send(EventKind::CancelRequested { job: id.clone() });
    let (none, drop) = s.poll_held(&a, &id, 1, 3, "x");
    assert!(none.is_none() && drop);
    let (none, drop) = s.poll_held(&a, &JobId::from("job-77"), 1, 3, "x");
    assert!(none.is_none() && drop);
}

#[test]
fn only_members_of_the_current_generation_reduce_and_only_the_current_step() {
    let mut s = Script::new();
    let (id, a, _b) = s.running_pair(10, "star");
    let stranger = s.register("stranger");
    let e = s.open(&stranger, &id, 0, 0, 1).refusal();
    assert!(e.to_string().contains("not in the group"), "{e}");
    let e = s.open(&a, &id, 0, 0, 2).refusal();
    assert!(e.to_string().contains("generation 2 is stale"), "{e}");
    let e = s.open(&a, &id, 1, 0, 1).refusal();
    assert!(e.to_string().contains("is rank 0, not 1"), "{e}");
    let e = s.open(&a, &id, 0, 3, 1).refusal();
    assert!(e.to_string().contains("not the job's current step"), "{e}");
    let e = s.open(&a, &id, 0, 99, 1).refusal();
    assert!(e.to_string().contains("is not in job"), "{e}");
    assert_eq!(
        s.job(&id).record.state,
        JobState::Running,
        "refusals change nothing"
    );
    let e = s.fingerprint(&stranger, &id, 1, "x").refusal();
    assert!(e.to_string().contains("not in the group"), "{e}");
}

#[test]
fn diverged_replicas_fail_the_job_and_completion_waits_for_the_final_check() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(2, "star");
    s.star_step(&id, &a, &b, 0);
    assert_eq!(s.job(&id).record.step, 1);
    s.fingerprint(&a, &id, 1, "same").reply();
    s.fingerprint(&b, &id, 1, "same").reply();
    assert_eq!(s.job(&id).run.as_ref().map(|r| r.verified), Some(1));
    s.star_step(&id, &a, &b, 1);
    // The final state is saved before the final fingerprints agree: the job waits for them.
    s.send(EventKind::FinalStateSaved { job: id.clone() })
        .reply();
    assert_eq!(s.job(&id).record.state, JobState::Running);
    s.fingerprint(&a, &id, 2, "same").reply();
    let out = s.fingerprint(&b, &id, 2, "same");
    assert_eq!(s.job(&id).record.state, JobState::Completed);
    assert!(out.finished_published());

    let mut s = Script::new();
    let (id, a, b) = s.running_pair(2, "star");
    s.star_step(&id, &a, &b, 0);
    s.fingerprint(&a, &id, 1, "aaaa").reply();
    s.fingerprint(&b, &id, 1, "bbbb").reply();
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Failed);
    assert!(
        job.record.reason.contains("replicas diverged at step 1")
            && job.record.reason.contains("rank 1: bbbb"),
        "{}",
        job.record.reason
    );
}

#[test]
fn missing_final_fingerprints_fail_the_job_after_the_step_timeout() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(1, "star");
    s.star_step(&id, &a, &b, 0);
    s.send(EventKind::FinalStateSaved { job: id.clone() })
        .reply();
    s.fingerprint(&a, &id, 1, "f").reply();
    // Heartbeats keep both workers alive while rank 1's fingerprint never comes.
    for _ in 0..7 {
        s.advance(STEP_TIMEOUT_MS / 6);
        for w in [&a, &b] {
            s.heartbeat(w, &id, 1);
        }
        s.send(EventKind::Tick);
    }
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Failed);
    assert!(
        job.record.reason.contains("rank(s) 1 never reported"),
        "{}",
        job.record.reason
    );
}

#[test]
fn a_worker_that_leaves_fails_the_job_with_its_reason_and_frees_the_group() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(10, "star");
    let e = s
        .send(EventKind::WorkerLeft {
            worker: WorkerId::from("w-nobody"),
            job: id.clone(),
            reason: "x".into(),
            graceful: false,
        })
        .refusal();
    assert!(e.to_string().contains("not in the group"), "{e}");
    assert_eq!(s.job(&id).record.state, JobState::Running);
    s.send(EventKind::WorkerLeft {
        worker: b.clone(),
        job: id.clone(),
        reason: "SIGTERM".into(),
        graceful: false,
    })
    .reply();
    let job = s.job(&id);
    assert_eq!(job.record.state, JobState::Failed);
    assert!(
        job.record.reason.contains("rank 1") && job.record.reason.contains("SIGTERM"),
        "{}",
        job.record.reason
    );
    assert_eq!(s.heartbeat(&a, &id, 1), vec![id.0.clone()]);
    // Both are free for the next job.
    let next = s.submit((2, 2), 5, "star");
    assert_eq!(s.poll(&a).map(|x| x.job_id), Some(next.0));
}

#[test]
fn a_ring_report_that_does_not_fit_the_batch_fails_the_job() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(10, "ring");
    let report =
        |worker: &WorkerId, rank: u32, step: u64, samples: u64| EventKind::RingStepReported {
            worker: worker.clone(),
            job: id.clone(),
            rank,
            step,
            generation: 1,
            stats: StepStats {
                loss_sum: 1.0,
                samples,
                correct: 0,
            },
            times: None,
        };
    let batch = s.job(&id).record.spec.training.global_batch_size as u64;
    let e = s.send(report(&b, 1, 0, batch)).refusal();
    assert!(e.to_string().contains("only rank 0"), "{e}");
    match s.send(report(&a, 0, 0, batch)).reply() {
        Reply::StopAt(0) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.job(&id).record.step, 1);
    let e = s.send(report(&a, 0, 5, batch)).refusal();
    assert!(e.to_string().contains("is at step 1"), "{e}");
    assert_eq!(s.job(&id).record.state, JobState::Running);
    let e = s.send(report(&a, 0, 1, batch + 1)).refusal();
    assert!(e.to_string().contains("the step's batch has"), "{e}");
    assert_eq!(s.job(&id).record.state, JobState::Failed);
}

#[test]
fn cancelling_fails_the_open_rounds_and_a_second_cancel_is_a_conflict() {
    let mut s = Script::new();
    let (id, a, _b) = s.running_pair(10, "star");
    s.open(&a, &id, 0, 0, 1).reply();
    let out = s.send(EventKind::CancelRequested { job: id.clone() });
    assert_eq!(out.failed_rounds(), 1);
    assert!(out.finished_published());
    match out.answer {
        Ok(Reply::Record(r)) => assert_eq!(r.state, JobState::Cancelled),
        other => panic!("{other:?}"),
    }
    let e = s
        .send(EventKind::CancelRequested { job: id.clone() })
        .refusal();
    assert!(e.to_string().contains("already ended (CANCELLED)"), "{e}");
    let e = s
        .send(EventKind::CancelRequested {
            job: JobId::from("job-404"),
        })
        .refusal();
    assert!(matches!(e, CoordinatorError::UnknownJob(_)), "{e}");
    let e = s.open(&a, &id, 0, 0, 1).refusal();
    assert!(matches!(e, CoordinatorError::JobStopped { .. }), "{e}");
}

#[test]
fn a_drain_stops_scheduling_refuses_later_steps_and_a_leaver_does_not_fail_the_job() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(10, "star");
    s.star_step(&id, &a, &b, 0);
    match s.send(EventKind::DrainBegan).reply() {
        Reply::Draining(w) => assert_eq!(w, vec![(id.clone(), 2)]),
        other => panic!("{other:?}"),
    }
    // Step 1 still runs; step 2 is refused as the coordinator goes down.
    s.star_step(&id, &a, &b, 1);
    let e = s.open(&a, &id, 0, 2, 1).refusal();
    assert!(matches!(e, CoordinatorError::ShuttingDown(_)), "{e}");
    // No job starts while draining.
    let later = s.submit((1, 1), 5, "star");
    s.register("c");
    s.advance(WINDOW_MS * 2);
    s.send(EventKind::Tick);
    assert_eq!(s.job(&later).record.state, JobState::Pending);
    // A member leaving now does not fail the job: it resumes after the restart.
    s.send(EventKind::WorkerLeft {
        worker: b,
        job: id.clone(),
        reason: "SIGTERM".into(),
        graceful: false,
    })
    .reply();
    assert_eq!(s.job(&id).record.state, JobState::Running);
    assert!(queries::still_draining(&s.state, &[(id.clone(), 2)]).is_empty());
}

#[test]
fn progress_reports_the_steps_loss_and_rate_from_the_events_times() {
    let mut s = Script::new();
    let (id, a, b) = s.running_pair(10, "star");
    s.advance(250);
    s.star_step(&id, &a, &b, 0);
    let run = s.job(&id).run.as_ref().expect("running");
    let batch = s.job(&id).record.spec.training.global_batch_size as f64;
    assert!(
        (run.samples_per_s - batch / 0.25).abs() < 1e-6,
        "{} samples/s for {batch} samples in 250 ms",
        run.samples_per_s
    );
    assert_eq!(s.job(&id).history.train.len(), 1);
}

#[test]
fn after_a_restart_a_pending_job_starts_from_the_replicas_its_workers_still_hold() {
    let mut s = Script::new();
    let id = s.submit((2, 2), 50, "ring");
    // As a restarted coordinator has it: pending, its last generation 3.
    if let Some(j) = s.state.jobs.get_mut(&id) {
        j.record.generation = 3;
    }
    let a = s.register("alpha");
    let (none, drop) = s.poll_held(&a, &id, 2, 14, "old");
    assert!(
        none.is_none() && drop,
        "a replica of an older generation is of no use"
    );
    let (none, drop) = s.poll_held(&a, &id, 3, 14, "fp14");
    assert!(none.is_none() && !drop, "kept as an offer");
    let b = s.register("beta");
    let (gb, _) = s.poll_held(&b, &id, 3, 13, "fp13");
    let gb = gb.expect("the job starts with both");
    let ga = s.poll(&a).expect("a");
    assert_eq!((ga.generation, ga.start_step, gb.start_step), (4, 14, 14));
    assert_eq!(ga.rank, 0, "the holder of the newest replica goes first");
    assert!(ga.state_from.is_empty());
    assert_eq!(
        gb.state_from, ga.peers[0],
        "the one a step behind fetches step 14"
    );
    let job = s.job(&id);
    assert_eq!((job.record.state, job.record.step), (JobState::Running, 14));
    assert!(
        job.record
            .changes
            .last()
            .is_some_and(|c| c.cause == "resumed" && c.detail.contains("step 14")),
        "{:?}",
        job.record.changes
    );
    let batch = job.record.spec.training.global_batch_size as u64;
    assert_eq!(
        job.record.epochs.iter().map(|e| e.used).sum::<u64>(),
        14 * batch
    );
}

#[test]
fn a_call_that_names_a_worker_must_carry_its_secret() {
    let mut s = Script::new();
    let a = s.register("alpha");
    assert!(queries::authorize(&s.state, &a, "secret-of-alpha").is_ok());
    let e = queries::authorize(&s.state, &a, "secret-of-beta").expect_err("wrong secret");
    assert!(matches!(e, CoordinatorError::PermissionDenied(_)), "{e}");
    assert!(queries::authorize(&s.state, &a, "").is_err(), "no secret");
    // An unknown worker passes here: the call itself answers that it must register.
    assert!(queries::authorize(&s.state, &WorkerId::from("w-unknown"), "").is_ok());
}

#[test]
fn a_member_that_holds_no_replica_does_not_hold_up_the_regroup_and_is_no_member_after() {
    let mut s = Script::new();
    let (id, ws) = running_trio(&mut s, 10, "ring");
    let [a, b, c] = [&ws[0], &ws[1], &ws[2]];
    s.poll_held(a, &id, 1, 3, "fp3");
    assert_eq!(s.job(&id).record.state, JobState::Reconfiguring);
    s.poll_held(b, &id, 1, 3, "fp3");
    // The third lost its replica (its job thread failed before it had one): it asks for
    // work holding nothing, and the group forms without it instead of waiting for ever.
    assert!(s.poll(c).is_none());
    let ga = s.poll(a).expect("the group formed");
    assert_eq!((ga.generation, ga.world_size, ga.start_step), (2, 2, 3));
    // Named by anyone now, it is no member of either generation.
    let e = s
        .send(EventKind::WorkerLeft {
            worker: c.clone(),
            job: id.clone(),
            reason: "forged".into(),
            graceful: false,
        })
        .refusal();
    assert!(e.to_string().contains("not in the group"), "{e}");
    assert_eq!(s.job(&id).record.state, JobState::Running);
}

#[test]
fn no_more_workers_than_max_workers_are_registered_and_the_refusal_names_the_setting() {
    let mut s = Script::new();
    let ws: Vec<WorkerId> = (0..8).map(|i| s.register(&format!("w{i}"))).collect();
    let e = s
        .send(EventKind::WorkerRegistered {
            id: WorkerId("w-one-too-many".into()),
            secret: "s".into(),
            name: "one too many".into(),
            device: "cpu".into(),
            collective: "127.0.0.1:7999".into(),
            held: None,
        })
        .refusal();
    assert!(e.to_string().contains("max_workers"), "{e}");
    assert!(
        !s.state
            .workers
            .contains_key(&WorkerId("w-one-too-many".into()))
    );
    assert_eq!(s.state.workers.len(), ws.len());
}
