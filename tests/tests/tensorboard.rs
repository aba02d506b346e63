//! What a person watching a run sees: TensorBoard event files beside each job's
//! checkpoints, read back with the `tensorboard` Python package's own readers (the
//! event multiplexer, which finds every job under the state directory as a run, as
//! `tensorboard --logdir <state-dir>` does), and the
//! curves drawn as SVG and PNG. The package is installed by the test
//! (`scripts/python-tools.sh`).

use graft_tests::{Cluster, python, show};

/// Every scalar of every run under the state directory, as TensorBoard reads them:
/// `{run: {tag: [[step, value], ...]}}`, and each run's description of `train/loss`.
const READ: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
def description(acc, tag):
    try:
        return acc.SummaryMetadata(tag).summary_description
    except KeyError:
        return None
m = EventMultiplexer(size_guidance={"scalars": 0})
m.AddRunsFromDirectory(sys.argv[1])
m.Reload()
out = {}
for run, tags in m.Runs().items():
    acc = m.GetAccumulator(run)
    out[run] = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "loss_description": description(acc, "train/loss"),
    }
print(json.dumps(out))
"#;

fn job(name: &str, method: &str) -> String {
    format!(
        r#"
name = "{name}"
seed = 3
[model]
kind = "mlp"
hidden = [16]
[method]
{method}
[[datasets]]
name = "moons"
role = "source"
samples = 400
[[datasets]]
name = "moons"
role = "target_unlabelled"
samples = 400
rotation_deg = 35.0
[[datasets]]
name = "moons"
split = "test"
role = "eval"
rotation_deg = 35.0
[optimizer]
kind = "sgd"
lr = 0.05
[training]
global_batch_size = 32
steps = 120
[workers]
min = 1
max = 1
[evaluation]
interval_steps = 40
"#
    )
}

fn values(run: &serde_json::Value, tag: &str) -> Vec<(u64, f64)> {
    run["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no {tag}: {run}"))
        .iter()
        .map(|p| (p[0].as_u64().expect("step"), p[1].as_f64().expect("value")))
        .collect()
}

#[test]
fn tensorboard_reads_every_job_and_the_curves_are_drawn() {
    let c = Cluster::start(1, 5_000);
    let dann = c.complete("dann.toml", &job("tb-dann", "kind = \"dann\""));
    // Source-only: the target data is there but unused by the method; only its source set
    // is needed, so the same file with another method would be refused: use supervised.
    let plain = c.complete(
        "plain.toml",
        &job("tb-plain", "kind = \"supervised\"").replace(
            "role = \"target_unlabelled\"\nsamples = 400\nrotation_deg = 35.0\n",
            "role = \"eval\"\nlabel = \"rotated\"\nsamples = 400\nrotation_deg = 35.0\n",
        ),
    );
    let out = python::run(&["-c", READ, c.state.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", show(&out));
    let runs = graft_tests::last_json(&out);
    let id = |r: &serde_json::Value| r["job"].as_str().expect("id").to_string();
    let (dann_id, plain_id) = (id(&dann), id(&plain));
    let dann_run = &runs[format!("jobs/{dann_id}")];
    let plain_run = &runs[format!("jobs/{plain_id}")];
    assert!(
        dann_run.is_object() && plain_run.is_object(),
        "runs: {runs}"
    );

    // One loss, accuracy and learning rate per step.
    for run in [dann_run, plain_run] {
        for tag in ["train/loss", "train/accuracy", "train/learning_rate"] {
            let v = values(run, tag);
            assert_eq!(v.len(), 120, "{tag}");
            assert_eq!(v.first().map(|p| p.0), Some(1));
            assert_eq!(v.last().map(|p| p.0), Some(120));
        }
    }
    // λ rises from 0 as the DANN schedule says; only DANN has it, and a domain accuracy.
    let lambda = values(dann_run, "train/lambda");
    assert_eq!(lambda.len(), 120);
    assert!(lambda[0].1.abs() < 1e-6, "{:?}", lambda[0]);
    assert!(lambda.windows(2).all(|w| w[1].1 > w[0].1));
    let expected_last = 2.0 / (1.0 + (-10.0f64 * 119.0 / 120.0).exp()) - 1.0;
    assert!(
        (lambda[119].1 - expected_last).abs() < 1e-5,
        "{:?}",
        lambda[119]
    );
    assert!(plain_run["scalars"]["train/lambda"].is_null());
    assert_eq!(values(dann_run, "eval/domain_accuracy").len(), 3);
    assert!(
        dann_run["loss_description"]
            .as_str()
            .is_some_and(|d| d.contains("combined")),
        "{dann_run}"
    );
    // The last evaluation TensorBoard shows is graft's final one (f32 in the file).
    for (run, summary, tag) in [
        (dann_run, &dann, "target_accuracy"),
        (plain_run, &plain, "rotated_accuracy"),
    ] {
        let evals = values(run, &format!("eval/{tag}"));
        assert_eq!(evals.iter().map(|p| p.0).collect::<Vec<_>>(), [40, 80, 120]);
        let graft = summary["metrics"][tag].as_f64().expect("metric");
        assert!(
            (evals[2].1 - graft).abs() < 1e-6,
            "{tag}: {} vs {graft}",
            evals[2].1
        );
    }

    // The curves: SVG with the combined loss named, and a PNG.
    let dir = c.state.join("jobs").join(&dann_id);
    let svg = std::fs::read_to_string(dir.join("curves.svg")).expect("curves.svg");
    assert!(svg.contains("combined training loss (label + domain)"));
    assert!(svg.contains("domain accuracy") && svg.contains("target accuracy"));
    let png = std::fs::read(dir.join("curves.png")).expect("curves.png");
    assert_eq!(&png[..4], b"\x89PNG");
}
