//! Multi-process tests: real `graft-coordinator`, `graft-worker` and `graft` binaries on
//! loopback ports, killed for real. Run in release, one test at a time
//! (`cargo test --release -- --test-threads=1`), as `.ci/run` does.

use std::collections::BTreeMap;
use std::time::Duration;

use graft_tests::{Cluster, last_json, max_relative_diff, show, small_mnist_job, wait_for};
use graft_transfer::spec::ModelSpec;
use graft_transfer::{Architecture, weights};

fn export_tensors(c: &Cluster, job: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let out_path = c.tmp.path().join(format!("{job}.safetensors"));
    let out = c.graft(&[
        "export",
        job,
        "--out",
        out_path.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "export failed: {}", show(&out));
    let bytes = std::fs::read(&out_path).expect("exported file");
    weights::read_all(&bytes).expect("valid safetensors")
}

/// (a) and (e): two workers train the MLP on MNIST to >= 0.97; the export holds every
/// parameter with its shape; the job list survives a coordinator restart.
#[test]
fn mnist_mlp_on_two_workers_reaches_97_percent_and_exports() {
    let mut c = Cluster::start(2, 5_000);
    let job = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mnist-mlp.toml");
    let out = c.graft(&["submit", job, "--watch", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let r = last_json(&out);
    assert_eq!(r["state"], "COMPLETED", "{r}");
    assert_eq!(r["workers"], 2);
    let acc = r["metrics"]["target_accuracy"].as_f64().expect("accuracy");
    assert!(acc >= 0.97, "MNIST test accuracy {acc} < 0.97");
    let ckpt = r["checkpoint"].as_str().expect("checkpoint path");
    assert!(std::path::Path::new(ckpt).exists(), "{ckpt} does not exist");
    let id = r["job"].as_str().expect("id").to_string();
    let curves = std::fs::read_to_string(c.state.join("jobs").join(&id).join("curves.svg"))
        .expect("curves.svg next to the checkpoints");
    assert!(
        curves.contains("<polyline") && curves.contains("target accuracy"),
        "{curves}"
    );

    let tensors = export_tensors(&c, &id);
    let arch = Architecture::new(
        &ModelSpec::Mlp {
            hidden: vec![256, 128],
        },
        &[1, 28, 28],
        10,
    )
    .expect("arch");
    assert_eq!(
        tensors.len(),
        arch.params.len(),
        "export holds exactly the model's parameters"
    );
    for p in &arch.params {
        let (shape, values) = tensors
            .get(&p.name)
            .unwrap_or_else(|| panic!("{} missing from export", p.name));
        assert_eq!(shape, &p.shape, "{}", p.name);
        assert_eq!(values.len(), p.numel());
        assert!(values.iter().all(|v| v.is_finite()));
    }
    let listed = c.graft(&["checkpoints", &id, "--json"]);
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).lines().count() >= 2,
        "{}",
        show(&listed)
    );

    c.kill_coordinator();
    c.start_coordinator();
    let list = c.graft(&["list", "--json"]);
    assert!(list.status.success(), "{}", show(&list));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&format!("\"job\":\"{id}\"")) && text.contains("COMPLETED"),
        "job list after restart: {text}"
    );
}

/// (b): the same job with W = 1, 2 and 3 (same seed, same global batch) ends with the same
/// parameters to 1e-4 relative after 20 steps, with the ring (the default), and with the
/// star at W = 2.
#[test]
fn one_two_and_three_workers_reach_the_same_parameters() {
    let mut results = Vec::new();
    for (w, allreduce) in [(1u32, "ring"), (2, "ring"), (3, "ring"), (2, "star")] {
        let c = Cluster::start(w as usize, 5_000);
        let file = c.job_file("eq.toml", &small_mnist_job("equivalence", w, 20, allreduce));
        let out = c.graft(&["submit", file.to_str().expect("utf-8"), "--watch", "--json"]);
        assert!(out.status.success(), "W={w}: {}", show(&out));
        let r = last_json(&out);
        assert_eq!(r["state"], "COMPLETED", "W={w}: {r}");
        assert_eq!(r["steps"], 20);
        results.push(export_tensors(&c, r["job"].as_str().expect("id")));
    }
    for (w, other) in [
        ("2 (ring)", &results[1]),
        ("3 (ring)", &results[2]),
        ("2 (star)", &results[3]),
    ] {
        for (name, (_, a)) in &results[0] {
            let (_, b) = &other[name];
            let d = max_relative_diff(a, b);
            assert!(d <= 1e-4, "W=1 vs W={w}: {name} differs by {d:e} relative");
        }
    }
    // And training happened: the parameters moved away from their initial values.
    let arch =
        Architecture::new(&ModelSpec::Mlp { hidden: vec![64] }, &[1, 28, 28], 10).expect("arch");
    let init = arch.init(11);
    let i = arch.index_of("features.fc1.weight").expect("param");
    assert!(max_relative_diff(&init.values()[i], &results[0]["features.fc1.weight"].1) > 1e-3);
}

/// (d): a bad job file is refused with the field named, and nothing is created.
#[test]
fn bad_job_files_are_refused_naming_the_field_and_create_nothing() {
    let c = Cluster::start(0, 5_000);
    let good = small_mnist_job("bad", 1, 5, "ring");
    let cases = [
        (good.replace("lr = 0.05", "lr = 0.0"), "optimizer.lr"),
        (
            good.replace("global_batch_size = 60", "global_batch_size = 0"),
            "training.global_batch_size",
        ),
        (
            good.replace(
                "name = \"mnist\"\nsplit = \"test\"",
                "name = \"mnist\"\nsplit = \"validation\"",
            ),
            "datasets[1].split",
        ),
        (
            good.replace("momentum = 0.9", "momentum = 0.9\nmomentun = 0.1"),
            "momentun",
        ),
        (good.replace("max = 1", "max = 0"), "workers.max"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let f = c.job_file(&format!("bad{i}.toml"), text);
        let out = c.graft(&["submit", f.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "case {i} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(field),
            "case {i}: error does not name {field}: {err}"
        );
    }
    let list = c.graft(&["list", "--json"]);
    assert!(list.status.success(), "{}", show(&list));
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).trim(),
        "",
        "refused jobs must not be listed"
    );
}

/// A dataset that is not where the coordinator looks is refused with the path it tried.
#[test]
fn a_missing_dataset_names_where_graft_looked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ready = tmp.path().join("ready");
    let mut coord = std::process::Command::new(graft_tests::bin("graft-coordinator"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--data-dir")
        .arg(tmp.path().join("no-data-here"))
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("GRAFT_DATA_DIR")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start coordinator");
    let addr = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&ready)
            .ok()
            .filter(|a| !a.is_empty())
    })
    .expect("coordinator up");
    let job = tmp.path().join("j.toml");
    std::fs::write(&job, small_mnist_job("missing", 1, 5, "ring")).expect("write");
    let out = std::process::Command::new(graft_tests::bin("graft"))
        .args(["--coordinator", &format!("http://{addr}"), "submit"])
        .arg(&job)
        .output()
        .expect("graft");
    let _ = coord.kill();
    let _ = coord.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-data-here")
            && err.contains("train-images-idx3-ubyte.gz")
            && err.contains("README"),
        "{err}"
    );
}

/// Cancelling a running job ends it CANCELLED and frees its workers.
#[test]
fn cancel_stops_a_running_job() {
    let c = Cluster::start(2, 5_000);
    let file = c.job_file(
        "long.toml",
        &small_mnist_job("cancel-me", 2, 100_000, "ring"),
    );
    let out = c.graft(&["submit", file.to_str().expect("utf-8"), "--json"]);
    let id = last_json(&out)["job"].as_str().expect("id").to_string();
    wait_for(Duration::from_secs(60), || {
        (c.status(&id)["steps"].as_u64().unwrap_or(0) >= 3).then_some(())
    })
    .expect("job running");
    let out = c.graft(&["cancel", &id]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("CANCELLED"),
        "{}",
        show(&out)
    );
    let again = c.graft(&["cancel", &id]);
    assert!(
        !again.status.success(),
        "a finished job cannot be cancelled twice"
    );
    c.complete("next.toml", &small_mnist_job("next", 2, 5, "ring"));
}

/// An unreachable coordinator gives a one-line error and a non-zero exit.
#[test]
fn an_unreachable_coordinator_is_one_line_and_non_zero() {
    let out = std::process::Command::new(graft_tests::bin("graft"))
        .args(["--coordinator", "http://127.0.0.1:9", "list"])
        .output()
        .expect("graft");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the coordinator at http://127.0.0.1:9"),
        "{err}"
    );
}

/// `graft demo --json`: both built-in jobs complete, and DANN on the unlabelled rotated moons
/// beats the source-only model on the rotated target by ten points or more.
#[test]
fn demo_runs_and_dann_beats_source_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(graft_tests::bin("graft"))
        .args(["demo", "--json", "--state-dir"])
        .arg(tmp.path().join("demo"))
        .output()
        .expect("graft demo");
    assert!(out.status.success(), "{}", show(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["state"] == "COMPLETED"));
    assert_eq!(lines[0]["method"], "supervised");
    assert_eq!(lines[1]["method"], "dann");
    let source_only = lines[0]["metrics"]["target_accuracy"]
        .as_f64()
        .expect("source-only accuracy");
    let dann = lines[1]["metrics"]["target_accuracy"]
        .as_f64()
        .expect("DANN accuracy");
    assert!(
        dann >= source_only + 0.10,
        "DANN {dann} vs source only {source_only}"
    );
}

/// Losing the coordinator costs at most the work since the last checkpoint: a restarted
/// coordinator resumes the job from its newest checkpoint and the workers rejoin it.
#[test]
fn a_restarted_coordinator_resumes_from_the_last_checkpoint() {
    let mut c = Cluster::start_on_fixed_port(2, 5_000);
    let job = small_mnist_job("resume", 2, 300, "ring").replace(
        "[workers]",
        "[checkpoint]\ninterval_steps = 40\nkeep = 2\n[workers]",
    );
    let file = c.job_file("resume.toml", &job);
    let out = c.graft(&["submit", file.to_str().expect("utf-8"), "--json"]);
    let id = last_json(&out)["job"].as_str().expect("id").to_string();
    wait_for(Duration::from_secs(60), || {
        (c.status(&id)["steps"].as_u64().unwrap_or(0) >= 90).then_some(())
    })
    .expect("job past step 90");
    c.kill_coordinator();
    c.start_coordinator();
    let log = c.log("coordinator");
    let line = log
        .lines()
        .find(|l| l.contains("resuming job after restart"))
        .unwrap_or_else(|| panic!("no resume line in:\n{log}"));
    let at: u64 = line
        .split("step=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no step in {line:?}"));
    assert!(
        at >= 80 && at.is_multiple_of(40),
        "resumed at step {at}, expected the newest checkpoint (a multiple of 40, >= 80)"
    );
    let out = c.graft(&["watch", &id, "--json"]);
    let r = last_json(&out);
    assert_eq!(
        r["state"],
        "COMPLETED",
        "{}\n{}",
        show(&out),
        c.log("coordinator")
    );
    assert_eq!(r["steps"], 300);
}

fn moons_job(name: &str, method: &str, steps: u64, lr: f64) -> String {
    format!(
        r#"
name = "{name}"
seed = 5
[model]
kind = "mlp"
hidden = [16]
[method]
{method}
[[datasets]]
name = "moons"
role = "source"
[[datasets]]
name = "moons"
role = "target_labelled"
rotation_deg = 35.0
labels_per_class = 10
[[datasets]]
name = "moons"
split = "test"
role = "eval"
rotation_deg = 35.0
[optimizer]
kind = "sgd"
lr = {lr}
[training]
global_batch_size = 32
steps = {steps}
[workers]
min = 1
max = 1
"#
    )
}

/// Fine-tuning can start from a safetensors file exported by an earlier job; a file that
/// does not fit the network is refused naming `method.init_from`.
#[test]
fn fine_tuning_starts_from_an_exported_model() {
    let c = Cluster::start(1, 5_000);
    let f1 = c.job_file(
        "src.toml",
        &moons_job("source", "kind = \"supervised\"", 50, 0.1),
    );
    let out = c.graft(&["submit", f1.to_str().expect("utf-8"), "--watch", "--json"]);
    let first = last_json(&out)["job"].as_str().expect("id").to_string();
    let source = export_tensors(&c, &first);
    let exported = c.tmp.path().join(format!("{first}.safetensors"));

    // One step at a negligible rate: the result must be the imported weights.
    let method = format!(
        "kind = \"fine_tuning\"\ninit_from = \"{}\"",
        exported.display()
    );
    let f2 = c.job_file("ft.toml", &moons_job("from-file", &method, 1, 1e-12));
    let out = c.graft(&["submit", f2.to_str().expect("utf-8"), "--watch", "--json"]);
    let r = last_json(&out);
    assert_eq!(r["state"], "COMPLETED", "{}", show(&out));
    assert_eq!(r["steps"], 1, "no source stage when starting from a file");
    let tuned = export_tensors(&c, r["job"].as_str().expect("id"));
    for (name, (_, a)) in &source {
        assert!(
            max_relative_diff(a, &tuned[name].1) < 1e-6,
            "{name} was not loaded from the file"
        );
    }

    let wrong = moons_job("wrong", &method, 1, 0.1).replace("hidden = [16]", "hidden = [8]");
    let f3 = c.job_file("wrong.toml", &wrong);
    let out = c.graft(&["submit", f3.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("method.init_from") && err.contains("features.fc1.weight"),
        "{err}"
    );
}

/// Every job-file key can be overridden by `GRAFT_JOB_<KEY>` (nested keys joined by `__`);
/// an override naming no key is refused by name.
#[test]
fn job_file_keys_are_overridden_from_the_environment() {
    let c = Cluster::start(1, 5_000);
    let file = c.job_file(
        "env.toml",
        &moons_job("env", "kind = \"supervised\"", 50, 0.1),
    );
    let path = file.to_str().expect("utf-8");
    let out = c.graft_env(
        &["submit", path, "--watch", "--json"],
        &[("GRAFT_JOB_TRAINING__STEPS", "7")],
    );
    let r = last_json(&out);
    assert_eq!(r["state"], "COMPLETED", "{}", show(&out));
    assert_eq!(r["steps"], 7, "the override replaced training.steps = 50");
    let out = c.graft_env(&["submit", path], &[("GRAFT_JOB_TRAINING__STEPZ", "7")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stepz"),
        "{}",
        show(&out)
    );
}

/// The coordinator's Prometheus endpoint reports steps, samples, jobs and evaluations.
#[test]
fn metrics_endpoint_reports_training() {
    let addr = format!("127.0.0.1:{}", graft_tests::free_port());
    let c = Cluster::start_with_args(1, 5_000, &["--metrics-listen", &addr]);
    let file = c.job_file(
        "m.toml",
        &moons_job("metrics", "kind = \"supervised\"", 12, 0.1),
    );
    let out = c.graft(&["submit", file.to_str().expect("utf-8"), "--watch", "--json"]);
    assert_eq!(last_json(&out)["state"], "COMPLETED", "{}", show(&out));
    let id = last_json(&out)["job"].as_str().expect("id").to_string();
    let body = graft_tests::http_get(&addr, "/metrics");
    assert!(body.contains("graft_steps_total 12\n"), "{body}");
    assert!(
        body.contains("graft_samples_total 384\n"),
        "12 steps of 32: {body}"
    );
    assert!(body.contains("graft_jobs{state=\"COMPLETED\"} 1"), "{body}");
    assert!(body.contains("graft_workers 1\n"), "{body}");
    assert!(
        body.contains(&format!(
            "graft_job_evaluation{{job=\"{id}\",metric=\"target_accuracy\"}}"
        )),
        "{body}"
    );
    // The last step's training figures, as numbers.
    for name in ["graft_job_train_loss", "graft_job_train_accuracy"] {
        let prefix = format!("{name}{{job=\"{id}\"}} ");
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}: {body}"));
        assert!(value.is_finite() && value >= 0.0, "{name} {value}");
    }
}

/// With a certificate the coordinator serves TLS: a worker and the CLI that trust its CA
/// train a job over it; a client without the CA is refused in one line.
#[test]
fn workers_and_clients_train_over_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let mut c = Cluster::start_with_args(
        0,
        5_000,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    c.url = c.url.replace("http://", "https://");
    let mut worker = std::process::Command::new(graft_tests::bin("graft-worker"))
        .args([
            "--coordinator",
            &c.url,
            "--tls-ca",
            cert.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start worker");
    let file = c.job_file(
        "tls.toml",
        &moons_job("tls", "kind = \"supervised\"", 10, 0.1),
    );
    let ca = cert.to_str().expect("utf-8");
    let out = c.graft(&[
        "--tls-ca",
        ca,
        "submit",
        file.to_str().expect("utf-8"),
        "--watch",
        "--json",
    ]);
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(
        last_json(&out)["state"],
        "COMPLETED",
        "{}\n{}",
        show(&out),
        c.log("coordinator")
    );
    let refused = c.graft(&["list"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("tls-ca"), "{err}");
}

/// With tokens configured, clients and workers without them are refused; with them, a job
/// runs.
#[test]
fn tokens_keep_out_clients_and_workers_without_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "api_token = \"client-secret\"\ncluster_token = \"worker-secret\"\n",
    )
    .expect("write config");
    let c = Cluster::start_with_args(0, 5_000, &["--config", config.to_str().expect("utf-8")]);

    let refused = c.graft(&["list"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"),
        "{}",
        show(&refused)
    );
    let wrong = c.graft(&["--token", "guess", "list"]);
    assert!(!wrong.status.success(), "{}", show(&wrong));

    let intruder = std::process::Command::new(graft_tests::bin("graft-worker"))
        .args(["--coordinator", &c.url, "--listen", "127.0.0.1:0"])
        .output()
        .expect("run worker");
    assert!(
        !intruder.status.success(),
        "a worker without the cluster token must not join"
    );
    assert!(
        String::from_utf8_lossy(&intruder.stderr).contains("Register"),
        "{}",
        show(&intruder)
    );

    let mut worker = std::process::Command::new(graft_tests::bin("graft-worker"))
        .args(["--coordinator", &c.url, "--listen", "127.0.0.1:0"])
        .env("GRAFT_WORKER_CLUSTER_TOKEN", "worker-secret")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start worker");
    let file = c.job_file(
        "auth.toml",
        &moons_job("auth", "kind = \"supervised\"", 5, 0.1),
    );
    let out = c.graft(&[
        "--token",
        "client-secret",
        "submit",
        file.to_str().expect("utf-8"),
        "--watch",
        "--json",
    ]);
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(last_json(&out)["state"], "COMPLETED", "{}", show(&out));
}

/// Configuration layers: the file, then `GRAFT_COORDINATOR_*`, then flags; unknown keys in any
/// layer are refused by name, and tokens are never printed.
#[test]
fn configuration_layers_and_strictness() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("c.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7001\"\nheartbeat_timeout_ms = 9000\napi_token = \"s3cret\"\n",
    )
    .expect("write");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        std::process::Command::new(graft_tests::bin("graft-coordinator"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .arg("--check-config")
            .envs(env.iter().copied())
            .output()
            .expect("graft-coordinator")
    };
    let out = run(
        &[("GRAFT_COORDINATOR_HEARTBEAT_TIMEOUT_MS", "7000")],
        &["--listen", "127.0.0.1:7002"],
    );
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listen = \"127.0.0.1:7002\""),
        "flags win: {text}"
    );
    assert!(
        text.contains("heartbeat_timeout_ms = 7000"),
        "environment beats the file: {text}"
    );
    assert!(
        !text.contains("s3cret") && text.contains("<redacted>"),
        "{text}"
    );
    let out = run(&[("GRAFT_COORDINATOR_LISTNE", "x")], &[]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("listne"),
        "{}",
        show(&out)
    );
    std::fs::write(&file, "heartbeat_timeout_msec = 1\n").expect("write");
    let out = run(&[], &[]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("heartbeat_timeout_msec"),
        "{}",
        show(&out)
    );
}

/// The two data planes of the ring carry the same chunks: a W = 3 job over gRPC streams
/// (`ring_transport = "grpc"`) ends with exactly the parameters of the same job over the
/// raw-TCP links (the default), bit for bit, since the ring sums in a fixed order whatever
/// carries it.
#[test]
fn the_ring_over_grpc_streams_and_over_raw_tcp_reaches_identical_parameters() {
    let mut results = Vec::new();
    for transport in ["tcp", "grpc"] {
        let c = Cluster::start(3, 5_000);
        let job = small_mnist_job("transport", 3, 12, "ring").replacen(
            "allreduce = \"ring\"",
            &format!("allreduce = \"ring\"\nring_transport = \"{transport}\""),
            1,
        );
        let r = c.complete("transport.toml", &job);
        assert_eq!(r["steps"], 12, "{transport}: {r}");
        for w in 0..3 {
            let log = c.log(&format!("worker-{w}"));
            assert_eq!(
                graft_tests::log_field(&log, "joining the ring", "transport"),
                transport,
                "worker {w} took the job's transport: {log}"
            );
        }
        results.push(export_tensors(&c, r["job"].as_str().expect("id")));
    }
    assert!(!results[0].is_empty());
    for (name, (_, a)) in &results[0] {
        assert_eq!(&results[1][name].1, a, "{name}: grpc differs from tcp");
    }
}
