//! Every transfer method, for real, through the coordinator and two worker processes on
//! small data: each one completes and shows what it is for.

use std::collections::BTreeMap;
use std::process::Command;

use graft_tests::{Cluster, bin, last_json, max_relative_diff, show};
use graft_transfer::weights;

/// A small digits job around `method` (the `[method]` table and anything after it) and
/// `datasets`, with an MLP on 28×28 inputs.
fn digits_job(name: &str, workers: u32, method: &str, datasets: &str, steps: u64) -> String {
    format!(
        r#"
name = "{name}"
seed = 4
[model]
kind = "mlp"
hidden = [64]
[optimizer]
kind = "adam"
lr = 0.002
[training]
global_batch_size = 40
steps = {steps}
fingerprint_interval = 10
[workers]
min = {workers}
max = {workers}
{datasets}
[method]
{method}
"#
    )
}

const FEW_LABEL_DATA: &str = r#"
[[datasets]]
name = "mnist"
split = "train"
role = "source"
limit = 2000
[[datasets]]
name = "usps"
split = "train"
role = "target_labelled"
labels_per_class = 5
[[datasets]]
name = "usps"
split = "test"
role = "eval"
limit = 500
"#;

fn metric(r: &serde_json::Value, path: &str) -> f64 {
    let mut v = &r["metrics"];
    for p in path.split('.') {
        v = &v[p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("metric {path} missing from {}", r["metrics"]))
}

/// `graft local examples/... --workers 2 --json`, as a user runs the examples.
fn local_example(file: &str) -> serde_json::Value {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin("graft"))
        .args(["local", &path, "--workers", "2", "--json", "--state-dir"])
        .arg(tmp.path())
        .env("GRAFT_DATA_DIR", graft_tests::data_dir())
        .output()
        .expect("graft local");
    assert!(out.status.success(), "{file}: {}", show(&out));
    last_json(&out)
}

/// The moons examples: DANN adapts to the rotated target where source-only training does not.
#[test]
fn dann_beats_source_only_on_the_rotated_moons() {
    let so = local_example("source-only-moons.toml");
    let dann = local_example("dann-moons.toml");
    let (s, d) = (
        metric(&so, "target_accuracy"),
        metric(&dann, "target_accuracy"),
    );
    assert!(d >= 0.90 && d >= s + 0.10, "DANN {d} vs source only {s}");
    let domain = metric(&dann, "domain_accuracy");
    assert!((0.0..=1.0).contains(&domain), "{domain}");
    assert_eq!(dann["workers"], 2);
}

fn export(c: &Cluster, job: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let out_path = c.tmp.path().join(format!("{job}.safetensors"));
    let out = c.graft(&["export", job, "--out", out_path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", show(&out));
    weights::read_all(&std::fs::read(&out_path).expect("file")).expect("safetensors")
}

/// Two streams per step (labelled source, unlabelled target with its own batch size, neither
/// dividing evenly): one and two workers still reach the same parameters.
#[test]
fn dann_with_one_and_two_workers_reaches_the_same_parameters() {
    let mut finals = Vec::new();
    for w in [1u32, 2] {
        let c = Cluster::start(w as usize, 5_000);
        let job = format!(
            r#"
name = "dann-eq"
seed = 9
[model]
kind = "mlp"
hidden = [16]
[method]
kind = "dann"
domain_hidden = [8]
target_batch_size = 7
[[datasets]]
name = "moons"
role = "source"
samples = 101
[[datasets]]
name = "moons"
role = "target_unlabelled"
samples = 53
rotation_deg = 30.0
[[datasets]]
name = "moons"
split = "test"
role = "eval"
rotation_deg = 30.0
[optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.9
[training]
global_batch_size = 10
steps = 25
fingerprint_interval = 5
[workers]
min = {w}
max = {w}
"#
        );
        let r = c.complete("dann-eq.toml", &job);
        let id = r["job"].as_str().expect("id").to_string();
        finals.push(export(&c, &id));
    }
    let (a, b) = (&finals[0], &finals[1]);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.keys().any(|k| k.starts_with("domain_head.")));
    for (name, (_, va)) in a {
        let d = max_relative_diff(va, &b[name].1);
        assert!(d < 1e-4, "{name}: W=1 and W=2 differ by {d}");
    }
}

/// Fine-tuning, both forms of conservative training and layer transfer run through the
/// coordinator; layer transfer sends less per step, by exactly the frozen share.
#[test]
fn few_label_methods_run_and_layer_transfer_sends_only_what_trains() {
    let c = Cluster::start(2, 5_000);
    let source = "source_steps = 60";
    let mut bytes = BTreeMap::new();
    for (name, method) in [
        ("fine_tuning", format!("kind = \"fine_tuning\"\n{source}")),
        (
            "l2_sp",
            format!("kind = \"conservative\"\n{source}\npenalty = \"l2_sp\"\nlambda = 0.01"),
        ),
        (
            "output_kl",
            format!("kind = \"conservative\"\n{source}\npenalty = \"output_kl\"\nlambda = 0.5"),
        ),
        (
            "feature_l2",
            format!("kind = \"conservative\"\n{source}\npenalty = \"feature_l2\"\nlambda = 0.1"),
        ),
        (
            "layer_transfer",
            format!("kind = \"layer_transfer\"\n{source}\nfreeze = [\"features.*\"]"),
        ),
    ] {
        let r = c.complete(
            &format!("{name}.toml"),
            &digits_job(name, 2, &method, FEW_LABEL_DATA, 30),
        );
        let acc = metric(&r, "target_accuracy");
        assert!(acc > 0.3, "{name}: USPS accuracy {acc} is near chance");
        // The source stage's model was evaluated too.
        metric(&r, "source_stage.target_accuracy");
        bytes.insert(name, metric(&r, "allreduce_bytes_per_step"));
    }
    // 784·64 + 64 parameters of features.fc1 stay home.
    let frozen = ((784 * 64 + 64) * 4) as f64;
    assert_eq!(bytes["layer_transfer"], bytes["fine_tuning"] - frozen);
    // θ₀ is never sent: conservative training sends what fine-tuning sends.
    assert_eq!(bytes["l2_sp"], bytes["fine_tuning"]);
}

const TASK_DATA: &str = r#"
[[datasets]]
name = "mnist"
split = "train"
role = "train"
task = "mnist"
limit = 2000
[[datasets]]
name = "usps"
split = "train"
role = "train"
task = "usps"
labels_per_class = 10
[[datasets]]
name = "mnist"
split = "test"
role = "eval"
task = "mnist"
limit = 500
[[datasets]]
name = "usps"
split = "test"
role = "eval"
task = "usps"
limit = 500
"#;

/// Multitask: one trunk, a head per task, per-task accuracy in the summary.
#[test]
fn multitask_reports_every_task() {
    let c = Cluster::start(2, 5_000);
    let method = "kind = \"multitask\"\n[[method.tasks]]\nname = \"mnist\"\n[[method.tasks]]\nname = \"usps\"\nbatch_size = 20";
    let r = c.complete("mt.toml", &digits_job("mt", 2, method, TASK_DATA, 60));
    for t in ["mnist", "usps"] {
        let acc = metric(&r, &format!("tasks.{t}.accuracy"));
        assert!(acc > 0.4, "task {t}: {acc}");
    }
}

/// Progressive networks: the first column's outputs on its task are the same bit for bit
/// after the second column trained.
#[test]
fn progressive_keeps_the_first_task_bit_for_bit() {
    let c = Cluster::start(2, 5_000);
    let method = "kind = \"progressive\"\n[[method.tasks]]\nname = \"mnist\"\nsteps = 40\n[[method.tasks]]\nname = \"usps\"\nsteps = 20";
    let r = c.complete("pn.toml", &digits_job("pn", 2, method, TASK_DATA, 40));
    assert_eq!(r["steps"], 60);
    let before = metric(&r, "mnist_stage.tasks.mnist.output_checksum");
    let after = metric(&r, "tasks.mnist.output_checksum");
    assert_eq!(before, after, "column 1's outputs changed");
    assert_eq!(
        metric(&r, "mnist_stage.tasks.mnist.accuracy"),
        metric(&r, "tasks.mnist.accuracy")
    );
    assert!(metric(&r, "tasks.usps.accuracy") > 0.3);
}

/// Zero-shot learning on digits 0–6 with seven-segment attributes reports ZSL, GZSL and
/// novelty detection, and tells unseen digits from seen ones better than chance.
#[test]
fn zero_shot_reports_unseen_accuracy_and_novelty() {
    let c = Cluster::start(2, 5_000);
    let data = r#"
[[datasets]]
name = "mnist"
split = "train"
role = "source"
limit = 3000
[[datasets]]
name = "mnist"
split = "test"
role = "eval"
limit = 1000
"#;
    let method = "kind = \"zero_shot\"\nunseen_classes = [7, 8, 9]\n[method.attributes]\nkind = \"builtin\"\ntable = \"seven_segment\"";
    let r = c.complete("zsl.toml", &digits_job("zsl", 2, method, data, 120));
    for m in [
        "zsl_unseen_accuracy",
        "gzsl_seen_accuracy",
        "gzsl_unseen_accuracy",
        "gzsl_harmonic_mean",
    ] {
        let v = metric(&r, m);
        assert!((0.0..=1.0).contains(&v), "{m} = {v}");
    }
    assert!(metric(&r, "gzsl_seen_accuracy") > 0.5);
    assert!(metric(&r, "novelty_auroc") > 0.6);
}

/// A job a method cannot run is refused at submission, naming the field.
#[test]
fn method_mistakes_are_refused_by_name() {
    let c = Cluster::start(0, 5_000);
    for (method, data, field) in [
        (
            "kind = \"layer_transfer\"\nsource_steps = 5\nfreeze = [\"last:0\"]",
            FEW_LABEL_DATA,
            "method.freeze[0]",
        ),
        (
            "kind = \"multitask\"\n[[method.tasks]]\nname = \"mnist\"",
            TASK_DATA,
            "datasets[1].task",
        ),
        (
            "kind = \"zero_shot\"\nunseen_classes = [12]\n[method.attributes]\nkind = \"builtin\"\ntable = \"seven_segment\"",
            "[[datasets]]\nname = \"mnist\"\nrole = \"source\"\nlimit = 100\n[[datasets]]\nname = \"mnist\"\nsplit = \"test\"\nrole = \"eval\"\nlimit = 100",
            "method.unseen_classes",
        ),
        (
            "kind = \"layer_transfer\"\nsource_steps = 5\nfreeze = [\"*\"]",
            FEW_LABEL_DATA,
            "method",
        ),
    ] {
        let path = c.job_file("bad.toml", &digits_job("bad", 1, method, data, 5));
        let out = c.graft(&["submit", path.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "expected {field}: {err}");
    }
}
