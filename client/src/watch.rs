//! Following a job: a progress bar with step/s, elapsed time, ETA, loss and the last
//! evaluation, then the final record.

use std::collections::VecDeque;
use std::time::Instant;

use graft_common::clock::now_ms;
use graft_common::wire::{is_terminal, state_name};
use graft_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::{Client, ClientError};

/// What watching a job ends with.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job's final record.
    pub job: pb::Job,
    /// The last evaluation, with per-class results.
    pub last_evaluation: Option<pb::Evaluation>,
    /// Seconds from the job's start to its end, as the coordinator recorded them
    /// ([`run_seconds`]).
    pub seconds: f64,
}

/// Seconds the job has run: from its start to its end as the coordinator recorded them
/// (`started_unix_ms`, `finished_unix_ms`), or to `now_ms` while it runs; 0 when it never
/// started. Not the time someone watched it: a job watched after it finished ran as long as
/// it ran.
pub fn run_seconds(job: &pb::Job, now_ms: u64) -> f64 {
    if job.started_unix_ms == 0 {
        return 0.0;
    }
    let end = if job.finished_unix_ms > 0 {
        job.finished_unix_ms
    } else {
        now_ms
    };
    end.saturating_sub(job.started_unix_ms) as f64 / 1000.0
}

/// Follows job `id` to its end, drawing a progress bar on stderr when `show` is set (and
/// stderr is a terminal).
///
/// # Errors
/// [`ClientError`] when the stream breaks (the coordinator went away).
pub async fn follow(client: &mut Client, id: &str, show: bool) -> Result<Outcome, ClientError> {
    follow_with_notices(client, id, show, None).await
}

/// [`follow`], printing each line that arrives on `notices` on stderr above the progress
/// bar (whether or not the bar is shown): `graft local` says so when it restarts a worker.
///
/// # Errors
/// [`ClientError`] when the stream breaks (the coordinator went away).
pub async fn follow_with_notices(
    client: &mut Client,
    id: &str,
    show: bool,
    mut notices: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
) -> Result<Outcome, ClientError> {
    let origin = Instant::now();
    let mut stream = client.watch(id).await?;
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    let mut last_eval: Option<pb::Evaluation> = None;
    let mut loss = f64::NAN;
    let mut pace = Pace::default();
    let mut total = 0;
    loop {
        let ev = tokio::select! {
            ev = stream.message() => ev,
            line = next_notice(&mut notices) => {
                match line {
                    // Above the bar, which is drawn again below it.
                    Some(line) => bar.suspend(|| eprintln!("{line}")),
                    None => notices = None,
                }
                continue;
            }
        };
        let ev = match ev {
            Ok(ev) => ev,
            // The coordinator went away (a restart, a rolling update): follow the job again
            // once it is back.
            Err(s) if away(&s) => {
                stream = rewatch(client, id, &bar, &s).await?;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        let Some(ev) = ev else {
            // The stream ended without a final event: the job has ended, or the coordinator
            // is going away (a graceful stop ends every stream).
            if let Ok(job) = client.get(id).await
                && is_terminal(pb::JobState::try_from(job.state).unwrap_or_default())
            {
                bar.finish_and_clear();
                let seconds = run_seconds(&job, now_ms());
                return Ok(Outcome {
                    job,
                    last_evaluation: last_eval,
                    seconds,
                });
            }
            stream = rewatch(
                client,
                id,
                &bar,
                &tonic::Status::unavailable("the event stream ended"),
            )
            .await?;
            continue;
        };
        match ev.event {
            Some(pb::job_event::Event::Snapshot(j)) => {
                total = j.total_steps;
                bar.set_length(j.total_steps);
                bar.set_position(j.step);
                pace.started(j.started_unix_ms);
                bar.set_message(
                    state_name(pb::JobState::try_from(j.state).unwrap_or_default()).to_string(),
                );
            }
            Some(pb::job_event::Event::Progress(p)) => {
                total = p.total_steps;
                bar.set_length(p.total_steps);
                bar.set_position(p.step);
                loss = p.loss;
                pace.observe(
                    origin.elapsed().as_secs_f64(),
                    now_ms(),
                    p.step,
                    p.samples_per_s,
                );
                bar.set_message(message(loss, &pace, total, now_ms(), last_eval.as_ref()));
            }
            Some(pb::job_event::Event::Evaluation(e)) => {
                last_eval = Some(e);
                bar.set_message(message(loss, &pace, total, now_ms(), last_eval.as_ref()));
            }
            Some(pb::job_event::Event::Checkpoint(_)) => {}
            Some(pb::job_event::Event::Finished(j)) => {
                bar.finish_and_clear();
                let seconds = run_seconds(&j, now_ms());
                return Ok(Outcome {
                    job: j,
                    last_evaluation: last_eval,
                    seconds,
                });
            }
            None => {}
        }
    }
}

/// How long a watch keeps trying to reach a coordinator that went away: longer than a
/// restart takes, with its store and checkpoints to read.
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether `s` says the coordinator is away rather than that it refused.
fn away(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// The job's event stream again, once the coordinator answers (its first event is a
/// snapshot, so nothing of the job's state is missed); trying for [`RECONNECT_FOR`].
async fn rewatch(
    client: &mut Client,
    id: &str,
    bar: &ProgressBar,
    lost: &tonic::Status,
) -> Result<tonic::Streaming<pb::JobEvent>, ClientError> {
    let deadline = Instant::now() + RECONNECT_FOR;
    bar.suspend(|| {
        eprintln!(
            "lost the coordinator ({}); following job {id} again once it is back",
            lost.message()
        );
    });
    loop {
        match client.watch_status(id).await {
            Ok(s) => {
                bar.suspend(|| eprintln!("reconnected; following job {id}"));
                return Ok(s);
            }
            Err(s) if away(&s) && Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// The next line on `notices`; never, without them.
async fn next_notice(
    notices: &mut Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
) -> Option<String> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Step and sample rates, elapsed time and ETA from a job's progress events.
///
/// Events reach a watcher in bursts (the coordinator publishes them to a channel that the
/// gRPC stream drains and sends in batches), so the time between two arrivals says nothing
/// about the time between two steps: dividing one by the other gave tens of thousands of
/// steps per second for a job doing 150. Here:
///
/// - steps per second are the steps done between two events at least [`Pace::SPAN`]
///   seconds of arrival apart, over that time. The older event is the *newest* one at
///   least that old, the last of its burst, which arrived when the steps before it were
///   done; the error is the burst's lag over the span, not over the gap between arrivals.
/// - samples per second are the coordinator's own figures: each event carries its step's
///   samples over the step's time as the coordinator measured it. They are combined as a
///   harmonic mean over the same events, which is the samples over the time when the steps
///   are the same size; a mean of the figures themselves would let one short step count as
///   much as a long one.
/// - elapsed time runs from the job's start as the coordinator recorded it; the ETA is the
///   steps left at the current step rate.
#[derive(Debug, Default)]
pub struct Pace {
    /// (seconds of arrival, step, the coordinator's samples/s of the step), oldest first.
    seen: VecDeque<(f64, u64, f64)>,
    /// The job's start (unix ms) as the coordinator recorded it, or failing that when the
    /// first progress arrived.
    started_unix_ms: Option<u64>,
    steps_per_s: Option<f64>,
    samples_per_s: Option<f64>,
    step: u64,
}

impl Pace {
    /// Shortest arrival time over which steps per second are measured.
    pub const SPAN: f64 = 2.0;

    /// The job's start as its record has it (0: not started yet).
    pub fn started(&mut self, started_unix_ms: u64) {
        if started_unix_ms > 0 {
            self.started_unix_ms = Some(started_unix_ms);
        }
    }

    /// A progress event for `step` (steps done) arrived at `at` seconds (any monotonic
    /// origin), `now_ms` on the wall clock; `samples_per_s` is the coordinator's figure.
    pub fn observe(&mut self, at: f64, now_ms: u64, step: u64, samples_per_s: f64) {
        self.started_unix_ms.get_or_insert(now_ms);
        if self.seen.back().is_some_and(|&(_, s, _)| step < s) {
            // The job went back to a checkpoint: the steps before say nothing of the rate.
            self.seen.clear();
            self.steps_per_s = None;
            self.samples_per_s = None;
        }
        self.step = step;
        self.seen.push_back((at, step, samples_per_s));
        // The newest event at least SPAN old anchors the measurement; older ones are done.
        let Some(anchor) = self
            .seen
            .iter()
            .rposition(|&(t, _, _)| t <= at - Self::SPAN)
        else {
            return;
        };
        self.seen.drain(..anchor);
        let (t0, s0, _) = self.seen[0];
        self.steps_per_s = Some(step.saturating_sub(s0) as f64 / (at - t0));
        // Reciprocals of the steps after the anchor: their time per sample.
        let (n, inverse) = self
            .seen
            .iter()
            .skip(1)
            .filter(|&&(_, _, r)| r > 0.0 && r.is_finite())
            .fold((0usize, 0.0f64), |(n, sum), &(_, _, r)| {
                (n + 1, sum + 1.0 / r)
            });
        self.samples_per_s = (n > 0).then(|| n as f64 / inverse);
    }

    /// Steps per second, once the events span [`Pace::SPAN`].
    pub fn steps_per_s(&self) -> Option<f64> {
        self.steps_per_s
    }

    /// Samples per second, once the events span [`Pace::SPAN`].
    pub fn samples_per_s(&self) -> Option<f64> {
        self.samples_per_s
    }

    /// Seconds since the job started.
    pub fn elapsed(&self, now_ms: u64) -> Option<f64> {
        self.started_unix_ms
            .map(|s| now_ms.saturating_sub(s) as f64 / 1000.0)
    }

    /// Seconds until step `total` at the current rate.
    pub fn eta(&self, total: u64) -> Option<f64> {
        let rate = self.steps_per_s.filter(|r| *r > 0.0)?;
        Some(total.saturating_sub(self.step) as f64 / rate)
    }
}

/// `1:05`, or `1:02:03` past the hour.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

fn message(
    loss: f64,
    pace: &Pace,
    total: u64,
    now_ms: u64,
    eval: Option<&pb::Evaluation>,
) -> String {
    let mut m = String::new();
    if let Some(r) = pace.steps_per_s() {
        m.push_str(&format!("{r:.1} steps/s "));
    }
    if let Some(r) = pace.samples_per_s() {
        m.push_str(&format!("{r:.0} samples/s "));
    }
    if let Some(e) = pace.elapsed(now_ms) {
        m.push_str(&format!("{} elapsed ", clock(e)));
    }
    if let Some(e) = pace.eta(total) {
        m.push_str(&format!("ETA {} ", clock(e)));
    }
    m.push_str(&format!("loss {loss:.4}"));
    if let Some(e) = eval {
        let mut keys: Vec<&String> = e
            .metrics
            .keys()
            .filter(|k| k.ends_with("_accuracy") && !k.contains('.'))
            .collect();
        keys.sort();
        for k in keys {
            m.push_str(&format!(" {k} {:.4}", e.metrics[k]));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wall clock at the first burst's arrival.
    const T0_MS: u64 = 1_000_000;

    /// A job doing 150 steps/s of 128 samples (19,200 samples/s) whose events arrive in
    /// bursts: every 0.5 s, the 75 steps done since arrive within 100 µs, each with the
    /// coordinator's figure for its step, which jitters: about 15,800 for most steps, and
    /// 128,000 for one in five that it measured in a millisecond.
    #[derive(Default)]
    struct Bursts {
        t: f64,
        step: u64,
    }

    impl Bursts {
        fn run(&mut self, pace: &mut Pace, until_s: f64) {
            while self.t < until_s {
                self.t += 0.5;
                for i in 0..75 {
                    self.step += 1;
                    let rate = if self.step.is_multiple_of(5) {
                        128_000.0
                    } else {
                        // So that the harmonic mean of every five is 19,200.
                        4.0 / (5.0 / 19_200.0 - 1.0 / 128_000.0)
                    };
                    let at = self.t + f64::from(i) * 1e-4 / 75.0;
                    pace.observe(at, T0_MS + ((at - 0.5) * 1000.0) as u64, self.step, rate);
                }
            }
        }
    }

    #[test]
    fn rates_from_bursts_of_events_are_the_jobs_rates() {
        let mut pace = Pace::default();
        pace.started(T0_MS - 700);
        let mut job = Bursts::default();
        // Within the first span nothing is claimed.
        job.run(&mut pace, 1.0);
        assert_eq!(pace.steps_per_s(), None);
        assert_eq!(pace.eta(3000), None);
        job.run(&mut pace, 10.0);
        assert_eq!(job.step, 1500);
        let steps = pace.steps_per_s().expect("a rate after 2 s");
        // Averaging arrival-to-arrival rates gave tens of thousands here.
        assert!((steps - 150.0).abs() < 150.0 * 0.01, "{steps} steps/s");
        let samples = pace.samples_per_s().expect("samples/s");
        assert!(
            (samples - 19_200.0).abs() < 19_200.0 * 0.01,
            "{samples} samples/s"
        );
        // 1500 steps of 3000 left at 150/s: 10 s.
        let eta = pace.eta(3000).expect("an ETA");
        assert!((eta - 10.0).abs() < 0.1, "ETA {eta}");
        // Elapsed from the job's recorded start, 0.7 s before the first burst arrived.
        let now = T0_MS + 9_500;
        assert_eq!(pace.elapsed(now), Some(10.2));
        let m = message(0.5, &pace, 3000, now, None);
        assert!(m.contains(" steps/s "), "{m}");
        assert!(m.contains(" samples/s "), "{m}");
        assert!(m.ends_with("0:10 elapsed ETA 0:10 loss 0.5000"), "{m}");
    }

    #[test]
    fn a_job_sent_back_to_a_checkpoint_is_measured_afresh() {
        let mut pace = Pace::default();
        Bursts::default().run(&mut pace, 5.0);
        assert!(pace.steps_per_s().is_some());
        pace.observe(5.1, T0_MS + 4_600, 100, 19_200.0);
        assert_eq!(pace.steps_per_s(), None);
        assert_eq!(pace.eta(3000), None);
        // Without a recorded start, elapsed runs from the first progress.
        assert_eq!(pace.elapsed(T0_MS + 1_500), Some(1.5));
    }

    #[test]
    fn clock_reads_minutes_and_hours() {
        assert_eq!(clock(5.4), "0:05");
        assert_eq!(clock(65.0), "1:05");
        assert_eq!(clock(3723.0), "1:02:03");
    }

    #[test]
    fn run_time_is_the_records_not_the_watchers() {
        let job = pb::Job {
            started_unix_ms: 1_000,
            finished_unix_ms: 12_700,
            ..Default::default()
        };
        // Watched long after it ended: still 11.7 s.
        assert_eq!(run_seconds(&job, 99_000), 11.7);
        let running = pb::Job {
            started_unix_ms: 1_000,
            ..Default::default()
        };
        assert_eq!(run_seconds(&running, 3_500), 2.5);
        assert_eq!(run_seconds(&pb::Job::default(), 3_500), 0.0);
    }
}
