//! The wire is the file: a `graft.v1.JobSpec` that carries only what a job file sets is the
//! job the file describes (the coordinator applies the file's defaults to everything left
//! unset); `SubmitJob` also takes the file's text; the coordinator and the workers answer
//! gRPC server reflection; `evaluation.at_start` evaluates before the first step.
//!
//! The example jobs are built here field by field from their TOML tables, as a client in
//! another language builds its messages, without graft's own conversion (`spec_to_pb`),
//! which fills in every field and so could not show a default missing.

use std::path::Path;
use std::time::{Duration, Instant};

use graft_common::wire::spec_from_pb;
use graft_proto::v1 as pb;
use graft_proto::v1::job_service_client::JobServiceClient;
use graft_tests::{Cluster, free_port};
use graft_transfer::JobSpec;
use toml::{Table, Value};

fn table<'a>(t: &'a Table, k: &str) -> Option<&'a Table> {
    t.get(k).and_then(Value::as_table)
}
fn string(t: &Table, k: &str) -> Option<String> {
    t.get(k).and_then(Value::as_str).map(str::to_string)
}
fn uint(t: &Table, k: &str) -> Option<u64> {
    t.get(k)
        .and_then(Value::as_integer)
        .map(|v| u64::try_from(v).expect("a non-negative integer"))
}
fn float(t: &Table, k: &str) -> Option<f64> {
    t.get(k)
        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
}
fn boolean(t: &Table, k: &str) -> Option<bool> {
    t.get(k).and_then(Value::as_bool)
}
fn uints(t: &Table, k: &str) -> Option<Vec<u64>> {
    t.get(k).and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|v| v.as_integer().expect("an integer") as u64)
            .collect()
    })
}
fn kind(t: &Table) -> &str {
    t.get("kind").and_then(Value::as_str).expect("kind")
}

fn role(r: &str) -> i32 {
    (match r {
        "source" => pb::DatasetRole::Source,
        "target_labelled" => pb::DatasetRole::TargetLabelled,
        "target_unlabelled" => pb::DatasetRole::TargetUnlabelled,
        "eval" => pb::DatasetRole::Eval,
        "train" => pb::DatasetRole::Train,
        other => panic!("role {other}"),
    }) as i32
}

fn source_stage(m: &Table) -> pb::SourceStageSpec {
    pb::SourceStageSpec {
        source_steps: uint(m, "source_steps"),
        source_epochs: uint(m, "source_epochs").map(|v| v as u32),
        init_from: string(m, "init_from"),
        reset_head: boolean(m, "reset_head").unwrap_or_default(),
        ..Default::default()
    }
}

fn tasks(m: &Table) -> Vec<pb::TaskSpec> {
    m.get("tasks")
        .and_then(Value::as_array)
        .expect("tasks")
        .iter()
        .map(|t| {
            let t = t.as_table().expect("a task table");
            pb::TaskSpec {
                name: string(t, "name").expect("task name"),
                weight: float(t, "weight"),
                batch_size: uint(t, "batch_size"),
                steps: uint(t, "steps"),
                epochs: uint(t, "epochs").map(|v| v as u32),
            }
        })
        .collect()
}

fn method(m: &Table) -> pb::method_spec::Kind {
    use pb::method_spec::Kind;
    match kind(m) {
        "supervised" => Kind::Supervised(pb::SupervisedSpec {}),
        "fine_tuning" => {
            let s = source_stage(m);
            Kind::FineTuning(pb::FineTuningSpec {
                source_steps: s.source_steps,
                source_epochs: s.source_epochs,
                init_from: s.init_from,
                reset_head: s.reset_head,
                ..Default::default()
            })
        }
        "conservative" => Kind::Conservative(pb::ConservativeSpec {
            source: Some(source_stage(m)),
            penalty: (match string(m, "penalty").expect("penalty").as_str() {
                "l2_sp" => pb::Penalty::L2Sp,
                "output_kl" => pb::Penalty::OutputKl,
                "feature_l2" => pb::Penalty::FeatureL2,
                other => panic!("penalty {other}"),
            }) as i32,
            lambda: float(m, "lambda").expect("lambda"),
            temperature: float(m, "temperature").unwrap_or_default(),
        }),
        "layer_transfer" => Kind::LayerTransfer(pb::LayerTransferSpec {
            source: Some(source_stage(m)),
            freeze: m
                .get("freeze")
                .and_then(Value::as_array)
                .expect("freeze")
                .iter()
                .map(|v| v.as_str().expect("a pattern").to_string())
                .collect(),
        }),
        "multitask" => Kind::Multitask(pb::MultitaskSpec { tasks: tasks(m) }),
        "progressive" => Kind::Progressive(pb::ProgressiveSpec {
            tasks: tasks(m),
            laterals: boolean(m, "laterals"),
        }),
        "dann" => Kind::Dann(pb::DannSpec {
            lambda_max: float(m, "lambda_max"),
            gamma: float(m, "gamma"),
            domain_hidden: uints(m, "domain_hidden").unwrap_or_default(),
            target_batch_size: uint(m, "target_batch_size"),
            linear_domain_head: uints(m, "domain_hidden").is_some_and(|h| h.is_empty()),
            trade_off: float(m, "trade_off"),
            ramp: (match string(m, "ramp").as_deref() {
                None => pb::GrlRamp::Unspecified,
                Some("progress") => pb::GrlRamp::Progress,
                Some("steps") => pb::GrlRamp::Steps,
                Some(other) => panic!("ramp {other}"),
            }) as i32,
            ramp_steps: uint(m, "ramp_steps"),
        }),
        "zero_shot" => {
            let a = table(m, "attributes").expect("attributes");
            Kind::ZeroShot(pb::ZeroShotSpec {
                unseen_classes: uints(m, "unseen_classes")
                    .expect("unseen_classes")
                    .into_iter()
                    .map(|c| c as u32)
                    .collect(),
                attributes: Some(pb::AttributeSource {
                    kind: Some(match kind(a) {
                        "builtin" => {
                            pb::attribute_source::Kind::Builtin(string(a, "table").expect("table"))
                        }
                        "file" => {
                            pb::attribute_source::Kind::File(string(a, "path").expect("path"))
                        }
                        "pca" => pb::attribute_source::Kind::Pca(pb::PcaAttributes {
                            dataset: string(a, "dataset").expect("dataset"),
                            split: string(a, "split").unwrap_or_default(),
                            components: uint(a, "components").expect("components") as u32,
                        }),
                        other => panic!("attributes {other}"),
                    }),
                }),
                likelihood: string(m, "scoring").as_deref() == Some("likelihood"),
            })
        }
        other => panic!("method {other}"),
    }
}

/// The message a client builds from a job file's tables, setting only what the file sets.
fn job_of(t: &Table) -> pb::JobSpec {
    let model = table(t, "model").expect("model");
    let optimizer = table(t, "optimizer").expect("optimizer");
    let training = table(t, "training").expect("training");
    pb::JobSpec {
        name: string(t, "name").expect("name"),
        seed: uint(t, "seed").unwrap_or_default(),
        model: Some(pb::ModelSpec {
            kind: Some(match kind(model) {
                "mlp" => pb::model_spec::Kind::Mlp(pb::MlpSpec {
                    hidden: uints(model, "hidden").expect("hidden"),
                }),
                "digits_cnn" => pb::model_spec::Kind::DigitsCnn(pb::DigitsCnnSpec {}),
                other => panic!("model {other}"),
            }),
        }),
        method: Some(pb::MethodSpec {
            kind: Some(method(table(t, "method").expect("method"))),
        }),
        datasets: t
            .get("datasets")
            .and_then(Value::as_array)
            .expect("datasets")
            .iter()
            .map(|d| {
                let d = d.as_table().expect("a dataset table");
                pb::DatasetSpec {
                    name: string(d, "name").unwrap_or_default(),
                    path: string(d, "path"),
                    format: string(d, "format"),
                    labels: string(d, "labels"),
                    x_key: string(d, "x_key"),
                    y_key: string(d, "y_key"),
                    label_column: match d.get("label_column") {
                        None => None,
                        Some(Value::String(n)) => {
                            Some(pb::dataset_spec::LabelColumn::LabelColumnName(n.clone()))
                        }
                        Some(v) => Some(pb::dataset_spec::LabelColumn::LabelColumnIndex(
                            v.as_integer().expect("a column index") as u64,
                        )),
                    },
                    header: boolean(d, "header"),
                    channels: uint(d, "channels").map(|v| v as u32),
                    holdout: float(d, "holdout"),
                    normalize: table(d, "normalize").map(|n| pb::Normalize {
                        mean: float(n, "mean").expect("mean") as f32,
                        std: float(n, "std").expect("std") as f32,
                    }),
                    split: string(d, "split").unwrap_or_default(),
                    role: role(&string(d, "role").expect("role")),
                    labels_per_class: uint(d, "labels_per_class").map(|v| v as u32),
                    limit: uint(d, "limit"),
                    label: string(d, "label"),
                    samples: uint(d, "samples"),
                    noise: float(d, "noise").map(|v| v as f32),
                    rotation_deg: float(d, "rotation_deg").map(|v| v as f32),
                    task: string(d, "task"),
                    image_size: uint(d, "image_size").map(|v| v as u32),
                    standardize: boolean(d, "standardize").unwrap_or_default(),
                }
            })
            .collect(),
        optimizer: Some(pb::OptimizerSpec {
            kind: Some(match kind(optimizer) {
                "sgd" => pb::optimizer_spec::Kind::Sgd(pb::SgdSpec {
                    lr: float(optimizer, "lr").expect("lr"),
                    momentum: float(optimizer, "momentum").unwrap_or_default(),
                    weight_decay: float(optimizer, "weight_decay").unwrap_or_default(),
                    nesterov: boolean(optimizer, "nesterov").unwrap_or_default(),
                }),
                "adam" => pb::optimizer_spec::Kind::Adam(pb::AdamSpec {
                    lr: float(optimizer, "lr").expect("lr"),
                    beta1: float(optimizer, "beta1"),
                    beta2: float(optimizer, "beta2"),
                    eps: float(optimizer, "eps").unwrap_or_default(),
                    weight_decay: float(optimizer, "weight_decay").unwrap_or_default(),
                }),
                other => panic!("optimizer {other}"),
            }),
        }),
        schedule: table(t, "schedule").map(|s| pb::ScheduleSpec {
            kind: Some(match kind(s) {
                "constant" => pb::schedule_spec::Kind::Constant(pb::ConstantSchedule {}),
                "step" => pb::schedule_spec::Kind::Step(pb::StepSchedule {
                    step_size: uint(s, "step_size").expect("step_size"),
                    gamma: float(s, "gamma").expect("gamma"),
                }),
                "dann" => pb::schedule_spec::Kind::Dann(pb::DannSchedule {
                    alpha: float(s, "alpha"),
                    beta: float(s, "beta"),
                }),
                other => panic!("schedule {other}"),
            }),
        }),
        training: Some(pb::TrainingSpec {
            global_batch_size: uint(training, "global_batch_size").expect("global_batch_size"),
            steps: uint(training, "steps"),
            epochs: uint(training, "epochs").map(|v| v as u32),
            fingerprint_interval: uint(training, "fingerprint_interval").unwrap_or_default(),
        }),
        workers: table(t, "workers").map(|w| pb::WorkersSpec {
            min: uint(w, "min").expect("min") as u32,
            max: uint(w, "max").expect("max") as u32,
        }),
        checkpoint: table(t, "checkpoint").map(|c| pb::CheckpointSpec {
            interval_steps: uint(c, "interval_steps").unwrap_or_default(),
            keep: uint(c, "keep").unwrap_or_default() as u32,
        }),
        evaluation: table(t, "evaluation").map(|e| pb::EvaluationSpec {
            interval_steps: uint(e, "interval_steps").unwrap_or_default(),
            at_start: boolean(e, "at_start").unwrap_or_default(),
        }),
        allreduce: (match string(t, "allreduce").as_deref() {
            None => pb::AllReduce::Unspecified,
            Some("ring") => pb::AllReduce::Ring,
            Some("star") => pb::AllReduce::Star,
            Some(other) => panic!("allreduce {other}"),
        }) as i32,
        ring_transport: (match string(t, "ring_transport").as_deref() {
            None => pb::RingTransport::Unspecified,
            Some("tcp") => pb::RingTransport::Tcp,
            Some("grpc") => pb::RingTransport::Grpc,
            Some(other) => panic!("ring_transport {other}"),
        }) as i32,
    }
}

#[test]
fn every_example_sent_with_only_the_fields_its_file_sets_is_the_files_job() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
    let mut seen = 0;
    let files = std::fs::read_dir(dir)
        .expect("examples/")
        .chain(std::fs::read_dir(dir.join("own-data")).expect("examples/own-data/"));
    for e in files {
        let path = e.expect("entry").path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let file: JobSpec = toml::from_str(&text).expect("parses");
        let tables: Table = toml::from_str(&text).expect("parses");
        let wire = spec_from_pb(&job_of(&tables)).expect("converts");
        assert_eq!(wire, file, "{}", path.display());
        assert_eq!(wire.validate(), file.validate(), "{}", path.display());
        file.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 18, "only {seen} examples");
}

#[test]
fn defaults_where_zero_is_a_value_are_told_apart_from_zero() {
    // The issue's case: dann-moons.toml leaves lambda_max, gamma and the schedule's alpha and
    // beta out, and a faithful message sent zeros — a source-only job.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/dann-moons.toml"
    ))
    .expect("readable");
    let tables: Table = toml::from_str(&text).expect("parses");
    let mut p = job_of(&tables);
    let spec = spec_from_pb(&p).expect("converts");
    let graft_transfer::spec::MethodSpec::Dann {
        lambda_max, gamma, ..
    } = spec.method
    else {
        panic!("dann")
    };
    assert_eq!((lambda_max, gamma), (1.0, 10.0));
    assert_eq!(
        spec.schedule,
        graft_transfer::spec::ScheduleSpec::Dann {
            alpha: 10.0,
            beta: 0.75
        }
    );
    // An explicit 0 stays 0, and an empty domain head is sent as one.
    if let Some(pb::method_spec::Kind::Dann(d)) = p.method.as_mut().and_then(|m| m.kind.as_mut()) {
        d.lambda_max = Some(0.0);
        d.domain_hidden.clear();
        d.linear_domain_head = true;
    }
    let spec = spec_from_pb(&p).expect("converts");
    let graft_transfer::spec::MethodSpec::Dann {
        lambda_max,
        domain_hidden,
        ..
    } = spec.method
    else {
        panic!("dann")
    };
    assert_eq!(lambda_max, 0.0);
    assert!(domain_hidden.is_empty());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The services `addr` lists through gRPC server reflection (v1).
async fn reflected_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("an answer")
        .expect("an answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[test]
fn the_coordinator_and_the_workers_answer_server_reflection() {
    let mut cluster = Cluster::start(0, 5000);
    let port = free_port();
    cluster.add_worker_via(&[], &format!("127.0.0.1:{port}"), &[]);
    let rt = runtime();
    let coordinator = rt.block_on(reflected_services(&cluster.url));
    for s in [
        "graft.v1.ClusterService",
        "graft.v1.JobService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(coordinator.iter().any(|n| n == s), "{s} in {coordinator:?}");
    }
    assert!(
        !coordinator
            .iter()
            .any(|n| n == "graft.v1.CollectiveService"),
        "{coordinator:?}"
    );
    // The worker serves as soon as it has bound its port.
    let worker_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let worker = loop {
        match rt.block_on(async {
            tonic::transport::Endpoint::from_shared(worker_url.clone())
                .expect("url")
                .connect()
                .await
        }) {
            Ok(_) => break rt.block_on(reflected_services(&worker_url)),
            Err(e) => {
                assert!(Instant::now() < deadline, "worker never served: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    for s in [
        "graft.v1.CollectiveService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(worker.iter().any(|n| n == s), "{s} in {worker:?}");
    }
    assert!(
        !worker.iter().any(|n| n == "graft.v1.JobService"),
        "{worker:?}"
    );
}

const MOONS: &str = r#"
name = "moons-at-start"
seed = 5
[model]
kind = "mlp"
hidden = [16]
[method]
kind = "supervised"
[[datasets]]
name = "moons"
split = "train"
role = "source"
samples = 600
[[datasets]]
name = "moons"
split = "test"
role = "eval"
[optimizer]
kind = "sgd"
lr = 0.1
momentum = 0.9
[training]
global_batch_size = 32
steps = 150
[evaluation]
at_start = true
"#;

async fn submit(
    client: &mut JobServiceClient<tonic::transport::Channel>,
    spec: Option<pb::JobSpec>,
    spec_toml: &str,
) -> Result<pb::Job, tonic::Status> {
    client
        .submit_job(pb::SubmitJobRequest {
            spec,
            spec_toml: spec_toml.to_string(),
        })
        .await
        .map(|r| r.into_inner().job.expect("a job"))
}

#[test]
fn a_job_file_sent_as_text_runs_and_evaluates_before_its_first_step() {
    let cluster = Cluster::start(1, 5000);
    let rt = runtime();
    let mut client = rt
        .block_on(JobServiceClient::connect(cluster.url.clone()))
        .expect("connects");

    // Refused, naming what is wrong, and nothing is created.
    let with_stray_key = MOONS.replace("kind = \"supervised\"", "kind = \"supervised\"\nfoo = 42");
    let e = rt
        .block_on(submit(&mut client, None, &with_stray_key))
        .expect_err("an unknown key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("spec_toml:") && e.message().contains("foo"),
        "{}",
        e.message()
    );
    let tables: Table = toml::from_str(MOONS).expect("parses");
    let e = rt
        .block_on(submit(&mut client, Some(job_of(&tables)), MOONS))
        .expect_err("both");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = rt
        .block_on(submit(&mut client, None, "  "))
        .expect_err("neither");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let listed = rt
        .block_on(client.list_jobs(pb::ListJobsRequest::default()))
        .expect("lists")
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);

    let job = rt
        .block_on(submit(&mut client, None, MOONS))
        .expect("submitted as text");
    let initial = job.metrics.get("initial.target_accuracy").copied();
    let initial = initial.unwrap_or_else(|| panic!("no initial evaluation: {:?}", job.metrics));
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let j = rt
            .block_on(client.get_job(pb::GetJobRequest {
                job_id: job.id.clone(),
            }))
            .expect("get")
            .into_inner()
            .job
            .expect("a job");
        if j.state == pb::JobState::Completed as i32 {
            break j;
        }
        assert!(
            j.state != pb::JobState::Failed as i32 && Instant::now() < deadline,
            "{:?}: {}\n{}",
            j.state,
            j.reason,
            cluster.log("coordinator")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let spec = spec_from_pb(done.spec.as_ref().expect("spec")).expect("converts");
    assert_eq!(spec, toml::from_str::<JobSpec>(MOONS).expect("parses"));
    let last = done.metrics["target_accuracy"];
    eprintln!("target accuracy before the first step {initial:.4}, after the last {last:.4}");
    // The starting point is an untrained network's, kept beside where training ended.
    assert_eq!(done.metrics["initial.target_accuracy"], initial);
    assert!(
        last > 0.8 && last > initial + 0.1,
        "initial {initial}, last {last}"
    );
}
