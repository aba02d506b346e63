//! PyTorch on both ends, through the Python client example (`examples/python/`):
//! graft → torch (submit, watch, export in PyTorch's layout, `load_state_dict` and evaluate
//! in PyTorch: the accuracy equals graft's evaluation) and torch → graft (a `state_dict`
//! trained in PyTorch and saved with `safetensors.torch` starts a fine-tuning job: graft's
//! evaluation before the first step equals PyTorch's accuracy). The Python packages are
//! installed by the test (`scripts/python-tools.sh`, pinned, into `.venv`).

use graft_tests::{Cluster, data_dir, last_json, python, show};
use graft_transfer::{torch_layout, weights};

const EXAMPLE: &str = "examples/python/graft_client.py";
const JOB: &str = "examples/python/mnist-mlp-small.toml";

fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", show(out));
    last_json(out)
}

fn assert_same_accuracies(what: &str, torch: &serde_json::Value, graft: &serde_json::Value) {
    let torch = torch.as_object().expect("torch metrics");
    assert!(!torch.is_empty(), "{what}: PyTorch measured nothing");
    for (k, t) in torch {
        let t = t.as_f64().expect("number");
        let g = graft[k.as_str()]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: graft has no {k}: {graft}"));
        assert!(
            (t - g).abs() <= 1e-4,
            "{what}: {k} is {t} in PyTorch and {g} in graft"
        );
        assert!(t > 0.5, "{what}: {k} = {t}: the model learnt nothing");
    }
}

/// The example end to end against real binaries: its export loads into the
/// `nn.Sequential` its metadata describes, and PyTorch's accuracy is graft's to 1e-4; the
/// CLI's `graft export --format torch` writes the same bytes.
#[test]
fn python_client_exports_a_model_pytorch_evaluates_as_graft_does() {
    let c = Cluster::start(2, 5_000);
    let model = c.tmp.path().join("model.safetensors");
    let data = data_dir();
    let out = python::run(&[
        EXAMPLE,
        "--data-dir",
        data.to_str().expect("utf-8"),
        "run",
        JOB,
        "--coordinator",
        &c.url,
        "--out",
        model.to_str().expect("utf-8"),
    ]);
    let r = stdout_json(&out);
    assert_eq!(r["state"], "COMPLETED", "{r}");
    assert_eq!(r["graft_version"], env!("CARGO_PKG_VERSION"));
    assert_same_accuracies("graft → torch", &r["torch"], &r["graft"]);
    let modules: Vec<&str> = r["architecture"]
        .as_array()
        .expect("architecture")
        .iter()
        .map(|m| m["module"].as_str().expect("module"))
        .collect();
    assert_eq!(modules, ["Flatten", "Linear", "ReLU", "Linear"]);
    // The progress line reached stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step 150/150"), "{stderr}");

    let id = r["job"].as_str().expect("id");
    let cli = c.tmp.path().join("cli.safetensors");
    let out = c.graft(&[
        "export",
        id,
        "--format",
        "torch",
        "--out",
        cli.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    // The same tensors (the metadata's order in the header may differ between two exports).
    let read = |p: &std::path::Path| {
        let bytes = std::fs::read(p).expect("export");
        assert_eq!(
            torch_layout::declared_layout(&bytes).expect("metadata"),
            Some(torch_layout::WeightsLayout::Torch)
        );
        weights::read_all(&bytes).expect("safetensors")
    };
    assert_eq!(
        read(&cli),
        read(&model),
        "graft export --format torch and the Python client got different weights"
    );
}

/// A `state_dict` trained in PyTorch (no graft metadata) starts a fine-tuning job with
/// `init_layout = "torch"`: the evaluation before the first step is PyTorch's accuracy.
/// Without `init_layout` graft's names are expected, and the job is refused naming them.
#[test]
fn a_state_dict_trained_in_pytorch_starts_a_graft_job() {
    let c = Cluster::start(1, 5_000);
    let state_dict = c.tmp.path().join("torch.safetensors");
    let data = data_dir();
    let out = python::run(&[
        EXAMPLE,
        "--data-dir",
        data.to_str().expect("utf-8"),
        "train",
        JOB,
        "--out",
        state_dict.to_str().expect("utf-8"),
        "--steps",
        "200",
    ]);
    let trained = stdout_json(&out);

    let job = |layout: &str| {
        format!(
            r#"
name = "from-pytorch"
seed = 5
[model]
kind = "mlp"
hidden = [64]
[method]
kind = "fine_tuning"
init_from = "{}"
{layout}
[[datasets]]
name = "mnist"
split = "train"
role = "target_labelled"
limit = 600
[[datasets]]
name = "mnist"
split = "test"
role = "eval"
limit = 1000
[optimizer]
kind = "sgd"
lr = 0.01
[training]
global_batch_size = 60
steps = 5
[workers]
min = 1
max = 1
[evaluation]
at_start = true
"#,
            state_dict.display()
        )
    };
    let r = c.complete("torch.toml", &job("init_layout = \"torch\""));
    // `initial.<metric>` (the summary nests dotted names).
    let metrics = &r["metrics"];
    let at_start = if metrics["initial"].is_object() {
        metrics["initial"]["target_accuracy"].clone()
    } else {
        metrics["initial.target_accuracy"].clone()
    };
    let initial = serde_json::json!({ "target_accuracy": at_start });
    assert_same_accuracies("torch → graft", &trained["torch"], &initial);

    let f = c.job_file("graft-names.toml", &job(""));
    let out = c.graft(&["submit", f.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("method.init_from") && err.contains("features.fc1.weight"),
        "{err}"
    );
}
