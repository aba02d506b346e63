//! The libtorch backend (`--features tch`): flex and libtorch-cpu workers train the same
//! parameters, alone or together in one job; devices a binary cannot provide stop it at
//! start-up. Needs the binaries built with `tch` and `LD_LIBRARY_PATH` at libtorch's `lib/`
//! (`scripts/test.sh` does both; see the README's "GPU and libtorch").
#![cfg(feature = "tch")]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graft_tests::{
    Cluster, SMALL_MNIST_SEED, bin, data_dir, last_json, max_relative_diff, show, small_mnist_job,
};
use graft_transfer::spec::ModelSpec;
use graft_transfer::{Architecture, weights};

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Runs the 20-step job on two workers with these devices (and the coordinator evaluating
/// on `eval_device`); the exported parameters and the final accuracy.
fn train_on(devices: [&str; 2], eval_device: &str) -> (Tensors, f64) {
    let mut c = Cluster::start_with_args(0, 5_000, &["--eval-device", eval_device]);
    for d in devices {
        c.add_worker_with(&["--device", d]);
    }
    let file = c.job_file("devices.toml", &small_mnist_job("devices", 2, 20, "ring"));
    let out = c.graft(&["submit", file.to_str().expect("utf-8"), "--watch", "--json"]);
    let r = last_json(&out);
    assert_eq!(
        r["state"],
        "COMPLETED",
        "{devices:?}: {}\nworker-0: {}\nworker-1: {}",
        show(&out),
        c.log("worker-0"),
        c.log("worker-1")
    );
    assert_eq!(r["steps"], 20);
    assert_eq!(r["workers"], 2);
    let acc = r["metrics"]["target_accuracy"]
        .as_f64()
        .expect("target_accuracy");
    for (i, d) in devices.iter().enumerate() {
        assert!(
            c.log(&format!("worker-{i}"))
                .contains(&format!("device={d}")),
            "worker-{i} did not register with device {d}: {}",
            c.log(&format!("worker-{i}"))
        );
    }
    let id = r["job"].as_str().expect("id");
    let path = c.tmp.path().join("export.safetensors");
    let out = c.graft(&["export", id, "--out", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "export: {}", show(&out));
    let bytes = std::fs::read(&path).expect("exported file");
    (weights::read_all(&bytes).expect("valid safetensors"), acc)
}

fn assert_same(what: &str, a: &Tensors, b: &Tensors) {
    assert_eq!(a.len(), b.len(), "{what}: parameter sets differ");
    for (name, (shape, x)) in a {
        let (other_shape, y) = &b[name];
        assert_eq!(shape, other_shape, "{what}: {name}");
        let d = max_relative_diff(x, y);
        assert!(d <= 1e-4, "{what}: {name} differs by {d:e} relative");
    }
}

/// The equivalence: the same job on flex and on libtorch-cpu ends with the same
/// parameters after 20 steps, and a job with one worker of each completes with them too
/// (each worker computes its gradients on its own device; the sum and the optimizer step are
/// host f32, so the replicas stay bit-identical and the fingerprint checks pass).
#[test]
fn flex_libtorch_and_mixed_workers_reach_the_same_parameters() {
    let (flex, flex_acc) = train_on(["cpu", "cpu"], "cpu");
    let (torch, torch_acc) = train_on(["libtorch-cpu", "libtorch-cpu"], "libtorch-cpu");
    let (mixed, mixed_acc) = train_on(["cpu", "libtorch-cpu"], "cpu");
    assert_same("flex vs libtorch-cpu", &flex, &torch);
    assert_same("flex vs mixed", &flex, &mixed);
    // The same parameters evaluated on two backends: the same accuracy on 500 samples, give
    // or take a sample whose two top logits are within rounding.
    assert!(
        (flex_acc - torch_acc).abs() <= 0.004 && (flex_acc - mixed_acc).abs() <= 0.004,
        "accuracy flex {flex_acc}, libtorch {torch_acc}, mixed {mixed_acc}"
    );
    // And training happened: the parameters left their initial values.
    let arch =
        Architecture::new(&ModelSpec::Mlp { hidden: vec![64] }, &[1, 28, 28], 10).expect("arch");
    let init = arch.init(SMALL_MNIST_SEED);
    let i = arch.index_of("features.fc1.weight").expect("param");
    assert!(max_relative_diff(&init.values()[i], &torch["features.fc1.weight"].1) > 1e-3);
}

/// `graft local --device libtorch-cpu` trains the MNIST MLP example to the accuracy flex
/// reaches, within half a point.
#[test]
fn graft_local_on_libtorch_cpu_matches_flex_accuracy() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mnist-mlp.toml");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut acc = Vec::new();
    for device in ["cpu", "libtorch-cpu"] {
        let out = Command::new(bin("graft"))
            .args([
                "local",
                example,
                "--workers",
                "2",
                "--device",
                device,
                "--json",
            ])
            .arg("--state-dir")
            .arg(tmp.path().join(device))
            .env("GRAFT_DATA_DIR", data_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run graft local");
        assert!(out.status.success(), "{device}: {}", show(&out));
        let r = last_json(&out);
        assert_eq!(r["state"], "COMPLETED", "{device}: {r}");
        acc.push(r["metrics"]["target_accuracy"].as_f64().expect("accuracy"));
    }
    assert!(acc[0] >= 0.97, "flex accuracy {}", acc[0]);
    assert!(
        (acc[0] - acc[1]).abs() <= 0.005,
        "flex {} vs libtorch-cpu {}: more than 0.5 pt apart",
        acc[0],
        acc[1]
    );
}

/// A CUDA device this binary cannot reach (no GPU here, or libtorch linked CPU-only) stops the
/// worker and the coordinator at start-up, with the device named, before they serve.
#[test]
fn an_unavailable_cuda_device_stops_worker_and_coordinator_at_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let runs: [(&str, Vec<String>); 2] = [
        (
            "graft-worker",
            ["--coordinator", "http://127.0.0.1:9", "--device", "cuda:7"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "graft-coordinator",
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--eval-device".into(),
                "cuda:7".into(),
                "--state-dir".into(),
                tmp.path().join("state").display().to_string(),
            ],
        ),
    ];
    for (binary, args) in runs {
        let started = Instant::now();
        let out = Command::new(bin(binary))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} started: {}", show(&out));
        assert!(
            stderr.contains("cuda:7") && stderr.contains("not available"),
            "{binary}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{binary} took {:?} to refuse",
            started.elapsed()
        );
    }
    assert!(
        !tmp.path().join("state").join("graft.redb").exists(),
        "the coordinator opened its store before checking its device"
    );
}

/// In process: a matrix product on libtorch-cpu equals flex's (and the exact answer), and a
/// CUDA index past any machine's count is refused with its name, not handed to burn-tch.
#[test]
fn libtorch_cpu_computes_what_flex_computes_and_bad_cuda_indices_are_refused() {
    use burn::tensor::{Device, Tensor, TensorData};
    use graft_transfer::device::{DeviceError, DeviceName};

    let lt = DeviceName::LibtorchCpu.device().expect("libtorch-cpu");
    let flex = DeviceName::Cpu.device().expect("cpu");
    let a = [[1.0f32, 2.0], [3.0, 4.0]];
    let b = [[0.5f32, -1.0], [2.0, 0.25]];
    let product = |d: &Device| {
        let x = Tensor::<2>::from_data(TensorData::from(a), d);
        let y = Tensor::<2>::from_data(TensorData::from(b), d);
        x.matmul(y).into_data().try_to_vec::<f32>().expect("f32")
    };
    assert_eq!(product(&lt), vec![4.5, -0.5, 9.5, -2.0]);
    assert_eq!(product(&lt), product(&flex));

    let e = DeviceName::Cuda(4096).device().expect_err("no such GPU");
    assert!(matches!(e, DeviceError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("cuda:4096"), "{e}");
}
