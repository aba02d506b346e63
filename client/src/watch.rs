//! Following a job: a progress bar with step/s, loss and the last evaluation, then the
//! final record.

use std::time::Instant;

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
    /// Wall time of the watch.
    pub seconds: f64,
}

/// Follows job `id` to its end, drawing a progress bar on stderr when `show` is set (and
/// stderr is a terminal).
///
/// # Errors
/// [`ClientError`] when the stream breaks (the coordinator went away).
pub async fn follow(client: &mut Client, id: &str, show: bool) -> Result<Outcome, ClientError> {
    let started = Instant::now();
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
    let mut rates = Rates::default();
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(pb::job_event::Event::Snapshot(j)) => {
                bar.set_length(j.total_steps);
                bar.set_position(j.step);
                bar.set_message(
                    state_name(pb::JobState::try_from(j.state).unwrap_or_default()).to_string(),
                );
            }
            Some(pb::job_event::Event::Progress(p)) => {
                bar.set_length(p.total_steps);
                bar.set_position(p.step);
                loss = p.loss;
                rates.update(p.step, p.samples_per_s);
                bar.set_message(message(loss, &rates, last_eval.as_ref()));
            }
            Some(pb::job_event::Event::Evaluation(e)) => {
                last_eval = Some(e);
                bar.set_message(message(loss, &rates, last_eval.as_ref()));
            }
            Some(pb::job_event::Event::Checkpoint(_)) => {}
            Some(pb::job_event::Event::Finished(j)) => {
                bar.finish_and_clear();
                return Ok(Outcome {
                    job: j,
                    last_evaluation: last_eval,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            None => {}
        }
    }
    bar.finish_and_clear();
    // The stream ended without a final event: ask once more.
    let job = client.get(id).await?;
    if is_terminal(pb::JobState::try_from(job.state).unwrap_or_default()) {
        return Ok(Outcome {
            job,
            last_evaluation: last_eval,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Err(ClientError::Local(format!(
        "lost the event stream of job {id} while it was {}",
        state_name(pb::JobState::try_from(job.state).unwrap_or_default())
    )))
}

/// Smoothed step and sample rates: per-step figures jitter too much to read.
#[derive(Debug, Default)]
struct Rates {
    last: Option<(Instant, u64)>,
    steps_per_s: f64,
    samples_per_s: f64,
}

impl Rates {
    /// Exponential moving average weight of the newest step.
    const ALPHA: f64 = 0.05;

    fn update(&mut self, step: u64, samples_per_s: f64) {
        let now = Instant::now();
        if let Some((t, s)) = self.last
            && step > s
        {
            let inst = (step - s) as f64 / now.duration_since(t).as_secs_f64().max(1e-6);
            self.steps_per_s = ema(self.steps_per_s, inst);
            self.samples_per_s = ema(self.samples_per_s, samples_per_s);
        }
        self.last = Some((now, step));
    }
}

fn ema(old: f64, new: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        old + Rates::ALPHA * (new - old)
    }
}

fn message(loss: f64, rates: &Rates, eval: Option<&pb::Evaluation>) -> String {
    let mut m = String::new();
    if rates.steps_per_s > 0.0 {
        m.push_str(&format!(
            "{:.1} steps/s {:.0} samples/s ",
            rates.steps_per_s, rates.samples_per_s
        ));
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
