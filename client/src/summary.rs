//! How a finished job is reported: one JSON object (for scripts) or a short human summary.

use std::collections::BTreeMap;

use graft_common::wire::state_name;
use graft_proto::v1 as pb;
use serde_json::json;

use crate::watch::Outcome;

/// The JSON line `local`, `submit --watch`, `status` and `demo` print with `--json`.
pub fn json_line(job: &pb::Job, seconds: f64) -> String {
    let metrics = nested_metrics(&job.metrics);
    json!({
        "job": job.id,
        "state": state_name(pb::JobState::try_from(job.state).unwrap_or_default()),
        "method": job.method,
        "workers": job.workers,
        "steps": job.step,
        "metrics": metrics,
        "checkpoint": job.checkpoint,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "reason": job.reason,
        "generation": job.generation,
        "membership_changes": job.membership_changes.iter().map(|c| json!({
            "generation": c.generation,
            "step": c.step,
            "cause": c.cause,
            "workers": c.workers,
            "detail": c.detail,
            "unix_ms": c.unix_ms,
        })).collect::<Vec<_>>(),
        "epochs": job.epochs.iter().map(|e| json!({
            "stage": e.stage,
            "epoch": e.epoch,
            "samples": e.samples,
            "used": e.used,
            "index_hash": e.index_hash.to_string(),
        })).collect::<Vec<_>>(),
        "datasets": job.datasets.iter().map(|d| json!({
            "source": d.source,
            "role": d.role,
            "samples": d.samples,
            "sample_shape": d.sample_shape,
            "classes": d.classes,
            "stated": d.stated,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Metrics as a JSON object where dotted names nest (`tasks.mnist.accuracy` becomes
/// `{"tasks": {"mnist": {"accuracy": ...}}}`), so that scripts read them as paths. A name
/// that would clash with a value already there stays flat.
pub fn nested_metrics(metrics: &std::collections::HashMap<String, f64>) -> serde_json::Value {
    let sorted: BTreeMap<&String, &f64> = metrics.iter().collect();
    let mut root = serde_json::Map::new();
    for (k, v) in sorted {
        let parts: Vec<&str> = k.split('.').collect();
        let mut node = &mut root;
        let mut placed = false;
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                if !node.contains_key(*part) {
                    node.insert((*part).to_string(), json!(v));
                    placed = true;
                }
                break;
            }
            let entry = node
                .entry((*part).to_string())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            match entry.as_object_mut() {
                Some(o) => node = o,
                None => break,
            }
        }
        if !placed {
            root.insert(k.clone(), json!(v));
        }
    }
    serde_json::Value::Object(root)
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`) and the rest as it is: what a
/// peer or a user's file wrote cannot move the cursor or clear a terminal, and a quoted name
/// stays readable.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A few lines for people: state, metrics, per-class accuracy and the confusion matrix.
pub fn human(o: &Outcome) -> String {
    let j = &o.job;
    let state = state_name(pb::JobState::try_from(j.state).unwrap_or_default());
    let mut s = format!(
        "job {} ({}) {state} after {} of {} steps on {} worker(s)",
        j.id, j.method, j.step, j.total_steps, j.workers
    );
    // A job that never started has no run time to show.
    if o.seconds > 0.0 {
        s.push_str(&format!(" in {:.1}s", o.seconds));
    }
    s.push('\n');
    if !j.reason.is_empty() {
        // A worker's or a file's words may be in it: shown escaped, as `graft list` shows it.
        s.push_str(&format!("  reason: {}\n", printable(&j.reason)));
    }
    for d in &j.datasets {
        // The class names and the path come from a user's files: shown escaped.
        s.push_str(&format!(
            "  {:<18} {}\n",
            format!("{} data", d.role),
            printable(&d.stated)
        ));
    }
    let mut keys: Vec<&String> = j.metrics.keys().collect();
    keys.sort();
    for k in keys {
        s.push_str(&format!("  {k:<32} {:.4}\n", j.metrics[k]));
    }
    if let Some(e) = &o.last_evaluation {
        for set in &e.sets {
            let k = set.num_classes as usize;
            let per: Vec<String> = set
                .per_class_accuracy
                .iter()
                .enumerate()
                .map(|(c, a)| format!("{c}:{a:.2}"))
                .collect();
            s.push_str(&format!(
                "  {} per-class accuracy: {}\n",
                set.label,
                per.join(" ")
            ));
            if k > 0 && set.confusion.len() == k * k && k <= 12 {
                s.push_str(&format!(
                    "  {} confusion (row = true class, column = predicted):\n",
                    set.label
                ));
                for r in 0..k {
                    let row: Vec<String> = set.confusion[r * k..(r + 1) * k]
                        .iter()
                        .map(|v| format!("{v:>5}"))
                        .collect();
                    s.push_str(&format!("    {r:>2} {}\n", row.join("")));
                }
            }
        }
    }
    if !j.checkpoint.is_empty() {
        s.push_str(&format!("  checkpoint: {}\n", j.checkpoint));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_and_reasons_from_a_users_files_are_shown_escaped_and_listed_in_json() {
        let job = pb::Job {
            id: "job-1".into(),
            reason: "datasets[0]: \"bad.csv\": line 2\u{1b}[2J".into(),
            datasets: vec![pb::DatasetInfo {
                source: "mine/x.csv".into(),
                role: "source".into(),
                samples: 3,
                sample_shape: vec![2],
                classes: vec!["cat\nsays".into(), "dog".into()],
                stated: "mine/x.csv: 3 samples of 2; 2 classes: cat\nsays, dog\u{7}".into(),
            }],
            ..Default::default()
        };
        let o = Outcome {
            seconds: 0.0,
            job,
            last_evaluation: None,
        };
        let text = human(&o);
        assert!(
            text.contains("  source data        mine/x.csv: 3 samples of 2; 2 classes: cat\\nsays, dog\\u{7}\n"),
            "{text}"
        );
        assert!(
            text.contains("reason: datasets[0]: \"bad.csv\": line 2\\u{1b}[2J"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&json_line(&o.job, 0.0)).expect("one JSON object");
        assert_eq!(json["datasets"][0]["classes"][0], "cat\nsays");
        assert_eq!(json["datasets"][0]["sample_shape"], serde_json::json!([2]));
    }

    #[test]
    fn a_finished_job_reports_its_recorded_run_time() {
        // Watched after it ended: the watch itself took no time, the job 11.7 s.
        let job = pb::Job {
            id: "job-1".into(),
            state: pb::JobState::Completed as i32,
            started_unix_ms: 1_000,
            finished_unix_ms: 12_700,
            ..Default::default()
        };
        let o = Outcome {
            seconds: crate::watch::run_seconds(&job, 99_000),
            job,
            last_evaluation: None,
        };
        let text = human(&o);
        assert!(
            text.contains("COMPLETED") && text.contains(" in 11.7s\n"),
            "{text}"
        );
        assert!(json_line(&o.job, o.seconds).contains("\"seconds\":11.7"));
        // One that never started says nothing of time rather than "in 0.0s".
        let never = Outcome {
            job: pb::Job {
                state: pb::JobState::Cancelled as i32,
                ..Default::default()
            },
            last_evaluation: None,
            seconds: 0.0,
        };
        assert!(!human(&never).contains(" in "), "{}", human(&never));
    }

    #[test]
    fn dotted_metric_names_nest() {
        let m = std::collections::HashMap::from([
            ("target_accuracy".to_string(), 0.5),
            ("tasks.mnist.accuracy".to_string(), 0.9),
            ("tasks.usps.accuracy".to_string(), 0.8),
            ("mnist_stage.tasks.mnist.accuracy".to_string(), 0.7),
        ]);
        let v = nested_metrics(&m);
        assert_eq!(v["target_accuracy"], 0.5);
        assert_eq!(v["tasks"]["mnist"]["accuracy"], 0.9);
        assert_eq!(v["tasks"]["usps"]["accuracy"], 0.8);
        assert_eq!(v["mnist_stage"]["tasks"]["mnist"]["accuracy"], 0.7);
    }
}
