//! `graft --log-format json local`: what the processes it starts write to their logs. One
//! short job on the moons is run once and shared by the tests (`RUN`).

use std::process::{Command, Output};
use std::sync::LazyLock;

use graft_tests::{bin, last_json, show};
use serde_json::Value;

/// What a `graft --log-format json local` run left behind.
struct Run {
    out: Output,
    /// (process, its log) for the coordinator and both workers.
    logs: Vec<(String, String)>,
}

const JOB: &str = r#"
name = "logs"
seed = 5
[model]
kind = "mlp"
hidden = [16]
[method]
kind = "supervised"
[[datasets]]
name = "moons"
role = "source"
[[datasets]]
name = "moons"
split = "test"
role = "eval"
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 32
steps = 20
[evaluation]
interval_steps = 10
[workers]
min = 2
max = 2
"#;

static RUN: LazyLock<Run> = LazyLock::new(|| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("logs.toml");
    std::fs::write(&file, JOB).expect("job file");
    let state = tmp.path().join("run");
    let out = Command::new(bin("graft"))
        .args(["--log-format", "json", "local"])
        .arg(&file)
        .args(["--workers", "2", "--json", "--state-dir"])
        .arg(&state)
        // `local` talks to no coordinator but its own: the variable is ignored, not refused.
        .env("GRAFT_URL", "http://127.0.0.1:1")
        .output()
        .expect("graft local");
    let logs = ["coordinator", "worker-0", "worker-1"]
        .iter()
        .map(|name| {
            let path = state.join("logs").join(format!("{name}.log"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name.to_string(), text)
        })
        .collect();
    Run { out, logs }
});

/// The run, once it completed.
fn run() -> &'static Run {
    let r = &*RUN;
    assert!(r.out.status.success(), "{}", show(&r.out));
    assert_eq!(last_json(&r.out)["state"], "COMPLETED", "{}", show(&r.out));
    r
}

/// Every line of every log as JSON; panics naming a line that is not.
fn lines(r: &Run) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for (name, text) in &r.logs {
        assert!(!text.trim().is_empty(), "{name} logged nothing");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}.log has a line that is not JSON ({e}): {line}"));
            all.push((name.clone(), v));
        }
    }
    all
}

#[test]
fn graft_local_passes_its_log_format_to_the_processes_it_starts() {
    let r = run();
    for (name, v) in lines(r) {
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{name}: {v}"
        );
    }
}

#[test]
fn evaluation_metrics_are_json_numbers_not_a_string() {
    let r = run();
    let all = lines(r);
    let evaluated: Vec<&Value> = all
        .iter()
        .filter(|(name, v)| name == "coordinator" && v["fields"]["message"] == "evaluated")
        .map(|(_, v)| &v["fields"])
        .collect();
    // Two evaluations (steps 10 and 20), each with its accuracy, as numbers.
    let accuracies: Vec<(u64, f64)> = evaluated
        .iter()
        .filter(|f| f["metric"] == "target_accuracy")
        .map(|f| {
            let step = f["step"].as_u64().unwrap_or_else(|| panic!("step: {f}"));
            let value = f["value"]
                .as_f64()
                .unwrap_or_else(|| panic!("the value is not a JSON number: {f}"));
            (step, value)
        })
        .collect();
    assert_eq!(
        accuracies.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [10, 20],
        "{evaluated:?}"
    );
    assert!(accuracies.iter().all(|(_, a)| (0.0..=1.0).contains(a)));
    // Nothing in any line is a map written as a string.
    for (name, v) in &all {
        for (k, field) in v["fields"].as_object().into_iter().flatten() {
            assert!(
                !field
                    .as_str()
                    .is_some_and(|s| s.trim_start().starts_with('{')),
                "{name}: field {k} is a string holding a map: {v}"
            );
        }
    }
}

#[test]
fn job_states_are_spelt_as_graft_spells_them() {
    let r = run();
    let all = lines(r);
    let ended = all
        .iter()
        .find(|(name, v)| name == "coordinator" && v["fields"]["message"] == "job ended")
        .unwrap_or_else(|| panic!("no \"job ended\" line: {:?}", r.logs[0].1));
    assert_eq!(ended.1["fields"]["state"], "COMPLETED", "{}", ended.1);
    let rust_names = [
        "Pending",
        "Running",
        "Reconfiguring",
        "Completed",
        "Failed",
        "Cancelled",
    ];
    for (name, v) in &all {
        for (k, field) in v["fields"].as_object().into_iter().flatten() {
            assert!(
                !field.as_str().is_some_and(|s| rust_names.contains(&s)),
                "{name}: field {k} spells a state as Rust does: {v}"
            );
        }
    }
}

#[test]
fn own_cluster_subcommands_refuse_a_coordinator_flag_before_starting_anything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("run");
    let out = Command::new(bin("graft"))
        .args([
            "local",
            "no-such-file.toml",
            "--coordinator",
            "http://h:7070",
        ])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("graft local");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--coordinator") && err.contains("own coordinator"),
        "{err}"
    );
    assert!(!state.exists(), "a run directory was created");
}
