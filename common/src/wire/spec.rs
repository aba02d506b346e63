//! The job spec on the wire.

use graft_proto::v1 as pb;
use graft_transfer::spec::{
    AllReduce, CheckpointSpec, ColumnRef, DatasetSpec, EvaluationSpec, JobSpec, ModelSpec,
    Normalize, OptimizerSpec, RingTransport, Role, ScheduleSpec, TrainingSpec, WorkersSpec,
    defaults,
};

use super::method::{method_from_pb, method_to_pb};
use super::{WireError, missing, usize_of};

/// The wire form of a role.
pub fn role_to_pb(r: Role) -> pb::DatasetRole {
    match r {
        Role::Source => pb::DatasetRole::Source,
        Role::TargetLabelled => pb::DatasetRole::TargetLabelled,
        Role::TargetUnlabelled => pb::DatasetRole::TargetUnlabelled,
        Role::Eval => pb::DatasetRole::Eval,
        Role::Train => pb::DatasetRole::Train,
    }
}

/// A role from the wire.
///
/// # Errors
/// [`WireError`] for an unspecified or unknown value.
pub fn role_from_pb(v: i32, field: &str) -> Result<Role, WireError> {
    match pb::DatasetRole::try_from(v) {
        Ok(pb::DatasetRole::Source) => Ok(Role::Source),
        Ok(pb::DatasetRole::TargetLabelled) => Ok(Role::TargetLabelled),
        Ok(pb::DatasetRole::TargetUnlabelled) => Ok(Role::TargetUnlabelled),
        Ok(pb::DatasetRole::Eval) => Ok(Role::Eval),
        Ok(pb::DatasetRole::Train) => Ok(Role::Train),
        _ => Err(WireError {
            field: field.into(),
            reason: format!("unknown role {v}"),
        }),
    }
}

/// The wire form of a job spec.
pub fn spec_to_pb(s: &JobSpec) -> pb::JobSpec {
    let model = match &s.model {
        ModelSpec::Mlp { hidden } => pb::model_spec::Kind::Mlp(pb::MlpSpec {
            hidden: hidden.iter().map(|&h| h as u64).collect(),
        }),
        ModelSpec::DigitsCnn {} => pb::model_spec::Kind::DigitsCnn(pb::DigitsCnnSpec {}),
    };
    let method = method_to_pb(&s.method);
    let optimizer = match &s.optimizer {
        OptimizerSpec::Sgd {
            lr,
            momentum,
            weight_decay,
            nesterov,
        } => pb::optimizer_spec::Kind::Sgd(pb::SgdSpec {
            lr: *lr,
            momentum: *momentum,
            weight_decay: *weight_decay,
            nesterov: *nesterov,
        }),
        OptimizerSpec::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => pb::optimizer_spec::Kind::Adam(pb::AdamSpec {
            lr: *lr,
            beta1: Some(*beta1),
            beta2: Some(*beta2),
            eps: *eps,
            weight_decay: *weight_decay,
        }),
    };
    let schedule = match &s.schedule {
        ScheduleSpec::Constant {} => pb::schedule_spec::Kind::Constant(pb::ConstantSchedule {}),
        ScheduleSpec::Step { step_size, gamma } => {
            pb::schedule_spec::Kind::Step(pb::StepSchedule {
                step_size: *step_size,
                gamma: *gamma,
            })
        }
        ScheduleSpec::Dann { alpha, beta } => pb::schedule_spec::Kind::Dann(pb::DannSchedule {
            alpha: Some(*alpha),
            beta: Some(*beta),
        }),
    };
    pb::JobSpec {
        name: s.name.clone(),
        seed: s.seed,
        model: Some(pb::ModelSpec { kind: Some(model) }),
        method: Some(pb::MethodSpec { kind: Some(method) }),
        datasets: s
            .datasets
            .iter()
            .map(|d| pb::DatasetSpec {
                name: d.name.clone(),
                split: d.split.clone(),
                role: role_to_pb(d.role) as i32,
                labels_per_class: d.labels_per_class.map(|v| v as u32),
                limit: d.limit.map(|v| v as u64),
                label: d.label.clone(),
                task: d.task.clone(),
                image_size: d.image_size.map(|v| v.min(u32::MAX as usize) as u32),
                standardize: d.standardize,
                samples: d.samples.map(|v| v as u64),
                noise: d.noise,
                rotation_deg: d.rotation_deg,
                path: d.path.clone(),
                format: d.format.clone(),
                labels: d.labels.clone(),
                x_key: d.x_key.clone(),
                y_key: d.y_key.clone(),
                label_column: d.label_column.as_ref().map(|c| match c {
                    ColumnRef::Index(i) => {
                        pb::dataset_spec::LabelColumn::LabelColumnIndex(*i as u64)
                    }
                    ColumnRef::Name(n) => pb::dataset_spec::LabelColumn::LabelColumnName(n.clone()),
                }),
                header: d.header,
                channels: d.channels.map(|v| v.min(u32::MAX as usize) as u32),
                holdout: d.holdout,
                normalize: d.normalize.map(|n| pb::Normalize {
                    mean: n.mean,
                    std: n.std,
                }),
            })
            .collect(),
        optimizer: Some(pb::OptimizerSpec {
            kind: Some(optimizer),
        }),
        schedule: Some(pb::ScheduleSpec {
            kind: Some(schedule),
        }),
        training: Some(pb::TrainingSpec {
            global_batch_size: s.training.global_batch_size as u64,
            steps: s.training.steps,
            epochs: s.training.epochs,
            fingerprint_interval: s.training.fingerprint_interval,
        }),
        workers: Some(pb::WorkersSpec {
            min: s.workers.min,
            max: s.workers.max,
        }),
        checkpoint: Some(pb::CheckpointSpec {
            interval_steps: s.checkpoint.interval_steps,
            keep: s.checkpoint.keep,
        }),
        evaluation: Some(pb::EvaluationSpec {
            interval_steps: s.evaluation.interval_steps,
            at_start: s.evaluation.at_start,
        }),
        allreduce: match s.allreduce {
            AllReduce::Ring => pb::AllReduce::Ring,
            AllReduce::Star => pb::AllReduce::Star,
        } as i32,
        ring_transport: match s.ring_transport {
            RingTransport::Tcp => pb::RingTransport::Tcp,
            RingTransport::Grpc => pb::RingTransport::Grpc,
        } as i32,
    }
}

/// A string field that the file defaults when it is left out: empty on the wire is unset.
fn or_default_str(v: &str, default: &str) -> String {
    if v.is_empty() { default } else { v }.to_string()
}

/// A field where 0 is no valid value, so 0 on the wire is unset.
fn or_default_nonzero<T: PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() { default } else { v }
}

/// Reads a spec off the wire, giving every field left unset the job file's default
/// ([`defaults`]): the one place where the wire's unset fields become the file's defaults, so
/// that a client sending only what its file sets gets the job its file describes.
impl TryFrom<&pb::JobSpec> for WireSpec {
    type Error = WireError;
    fn try_from(p: &pb::JobSpec) -> Result<Self, WireError> {
        let model = match p
            .model
            .as_ref()
            .and_then(|m| m.kind.as_ref())
            .ok_or_else(|| missing("model"))?
        {
            pb::model_spec::Kind::Mlp(m) => ModelSpec::Mlp {
                hidden: m
                    .hidden
                    .iter()
                    .enumerate()
                    .map(|(i, &h)| usize_of(h, &format!("model.hidden[{i}]")))
                    .collect::<Result<_, _>>()?,
            },
            pb::model_spec::Kind::DigitsCnn(_) => ModelSpec::DigitsCnn {},
        };
        let method = method_from_pb(
            p.method
                .as_ref()
                .and_then(|m| m.kind.as_ref())
                .ok_or_else(|| missing("method"))?,
        )?;
        let mut datasets = Vec::with_capacity(p.datasets.len());
        for (i, d) in p.datasets.iter().enumerate() {
            let f = |k: &str| format!("datasets[{i}].{k}");
            datasets.push(DatasetSpec {
                name: d.name.clone(),
                path: d.path.clone(),
                format: d.format.clone(),
                labels: d.labels.clone(),
                x_key: d.x_key.clone(),
                y_key: d.y_key.clone(),
                label_column: match &d.label_column {
                    None => None,
                    Some(pb::dataset_spec::LabelColumn::LabelColumnName(n)) => {
                        Some(ColumnRef::Name(n.clone()))
                    }
                    Some(pb::dataset_spec::LabelColumn::LabelColumnIndex(i)) => {
                        Some(ColumnRef::Index(usize_of(*i, &f("label_column"))?))
                    }
                },
                header: d.header,
                channels: d.channels.map(|v| v as usize),
                holdout: d.holdout,
                normalize: d.normalize.map(|n| Normalize {
                    mean: n.mean,
                    std: n.std,
                }),
                split: or_default_str(&d.split, defaults::SPLIT),
                role: role_from_pb(d.role, &f("role"))?,
                labels_per_class: d.labels_per_class.map(|v| v as usize),
                limit: d.limit.map(|v| usize_of(v, &f("limit"))).transpose()?,
                label: d.label.clone(),
                task: d.task.clone(),
                image_size: d.image_size.map(|v| v as usize),
                standardize: d.standardize,
                samples: d.samples.map(|v| usize_of(v, &f("samples"))).transpose()?,
                noise: d.noise,
                rotation_deg: d.rotation_deg,
            });
        }
        let optimizer = match p
            .optimizer
            .as_ref()
            .and_then(|o| o.kind.as_ref())
            .ok_or_else(|| missing("optimizer"))?
        {
            pb::optimizer_spec::Kind::Sgd(s) => OptimizerSpec::Sgd {
                lr: s.lr,
                momentum: s.momentum,
                weight_decay: s.weight_decay,
                nesterov: s.nesterov,
            },
            pb::optimizer_spec::Kind::Adam(a) => OptimizerSpec::Adam {
                lr: a.lr,
                beta1: a.beta1.unwrap_or(defaults::BETA1),
                beta2: a.beta2.unwrap_or(defaults::BETA2),
                eps: or_default_nonzero(a.eps, defaults::EPS),
                weight_decay: a.weight_decay,
            },
        };
        let schedule = match p.schedule.as_ref().and_then(|s| s.kind.as_ref()) {
            None | Some(pb::schedule_spec::Kind::Constant(_)) => ScheduleSpec::Constant {},
            Some(pb::schedule_spec::Kind::Step(s)) => ScheduleSpec::Step {
                step_size: s.step_size,
                gamma: s.gamma,
            },
            Some(pb::schedule_spec::Kind::Dann(d)) => ScheduleSpec::Dann {
                alpha: d.alpha.unwrap_or(defaults::SCHEDULE_ALPHA),
                beta: d.beta.unwrap_or(defaults::SCHEDULE_BETA),
            },
        };
        let t = p.training.as_ref().ok_or_else(|| missing("training"))?;
        let workers = p
            .workers
            .map_or_else(WorkersSpec::default, |w| WorkersSpec {
                min: w.min,
                max: w.max,
            });
        let c = p.checkpoint.unwrap_or_default();
        let e = p.evaluation.unwrap_or_default();
        Ok(WireSpec(JobSpec {
            name: p.name.clone(),
            seed: p.seed,
            model,
            method,
            datasets,
            optimizer,
            schedule,
            training: TrainingSpec {
                global_batch_size: usize_of(t.global_batch_size, "training.global_batch_size")?,
                steps: t.steps,
                epochs: t.epochs,
                fingerprint_interval: or_default_nonzero(
                    t.fingerprint_interval,
                    defaults::FINGERPRINT_INTERVAL,
                ),
            },
            workers,
            checkpoint: CheckpointSpec {
                interval_steps: c.interval_steps,
                keep: or_default_nonzero(c.keep, defaults::CHECKPOINT_KEEP),
            },
            evaluation: EvaluationSpec {
                interval_steps: e.interval_steps,
                at_start: e.at_start,
            },
            allreduce: match pb::AllReduce::try_from(p.allreduce) {
                Ok(pb::AllReduce::Unspecified | pb::AllReduce::Ring) => AllReduce::Ring,
                Ok(pb::AllReduce::Star) => AllReduce::Star,
                Err(_) => {
                    return Err(WireError {
                        field: "allreduce".into(),
                        reason: format!("unknown value {}", p.allreduce),
                    });
                }
            },
            ring_transport: match pb::RingTransport::try_from(p.ring_transport) {
                Ok(pb::RingTransport::Unspecified | pb::RingTransport::Tcp) => RingTransport::Tcp,
                Ok(pb::RingTransport::Grpc) => RingTransport::Grpc,
                Err(_) => {
                    return Err(WireError {
                        field: "ring_transport".into(),
                        reason: format!("unknown value {}", p.ring_transport),
                    });
                }
            },
        }))
    }
}

/// A job spec read off the wire (not yet validated).
#[derive(Debug, Clone, PartialEq)]
pub struct WireSpec(pub JobSpec);

/// Reads a spec off the wire.
///
/// # Errors
/// [`WireError`] naming the missing or bad field.
pub fn spec_from_pb(p: &pb::JobSpec) -> Result<JobSpec, WireError> {
    WireSpec::try_from(p).map(|w| w.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_the_wire() {
        let spec: JobSpec = toml::from_str(
            r#"
name = "x"
seed = 3
[model]
kind = "digits_cnn"
[method]
kind = "fine_tuning"
source_steps = 10
reset_head = true
[[datasets]]
name = "mnist"
role = "source"
[[datasets]]
name = "usps"
role = "target_labelled"
labels_per_class = 10
standardize = true
[[datasets]]
name = "usps"
split = "test"
role = "eval"
label = "usps"
[[datasets]]
path = "mine/t.csv"
label_column = "digit"
header = true
holdout = 0.25
split = "test"
role = "eval"
label = "mine"
[[datasets]]
path = "mine/images"
format = "image-folder"
channels = 3
image_size = 28
role = "eval"
label = "pictures"
[optimizer]
kind = "adam"
lr = 0.001
[schedule]
kind = "dann"
[training]
global_batch_size = 32
steps = 5
[workers]
min = 2
max = 3
"#,
        )
        .expect("parses");
        assert!(spec.datasets[1].standardize && !spec.datasets[2].standardize);
        assert_eq!(spec_from_pb(&spec_to_pb(&spec)).expect("converts"), spec);
    }

    #[test]
    fn dann_options_and_a_fixed_normalisation_round_trip() {
        let spec: JobSpec = toml::from_str(
            r#"
name = "tllib"
ring_transport = "grpc"
[model]
kind = "digits_cnn"
[method]
kind = "dann"
trade_off = 0.7
ramp = "steps"
ramp_steps = 1500
[[datasets]]
name = "mnist"
role = "source"
normalize = { mean = 0.5, std = 0.5 }
[[datasets]]
name = "usps"
role = "target_unlabelled"
[[datasets]]
name = "usps"
split = "test"
role = "eval"
[optimizer]
kind = "sgd"
lr = 0.01
momentum = 0.9
nesterov = true
weight_decay = 0.001
[training]
global_batch_size = 64
steps = 5
"#,
        )
        .expect("parses");
        spec.validate().expect("valid");
        let back = spec_from_pb(&spec_to_pb(&spec)).expect("converts");
        assert_eq!(back, spec);
        // Unset on the wire: the file's defaults (progress ramp, trade-off 1, tcp).
        let mut p = spec_to_pb(&spec);
        if let Some(pb::method_spec::Kind::Dann(d)) =
            p.method.as_mut().and_then(|m| m.kind.as_mut())
        {
            d.trade_off = None;
            d.ramp = 0;
            d.ramp_steps = None;
        }
        p.ring_transport = 0;
        let plain = spec_from_pb(&p).expect("converts");
        let graft_transfer::spec::MethodSpec::Dann {
            trade_off, ramp, ..
        } = plain.method
        else {
            panic!("dann")
        };
        assert_eq!(trade_off, 1.0);
        assert_eq!(ramp, graft_transfer::spec::GrlRamp::Progress);
        assert_eq!(plain.ring_transport, RingTransport::Tcp);
    }

    #[test]
    fn every_example_job_round_trips_through_the_wire() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).expect("examples") {
            let path = e.expect("entry").path();
            if path.extension().and_then(|x| x.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let spec: JobSpec = toml::from_str(&text).expect("parses");
            assert_eq!(
                spec_from_pb(&spec_to_pb(&spec)).expect("converts"),
                spec,
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert!(seen >= 15, "only {seen} examples");
    }

    #[test]
    fn missing_fields_are_named() {
        let mut p = pb::JobSpec::default();
        assert_eq!(spec_from_pb(&p).expect_err("empty").field, "model");
        p.model = Some(pb::ModelSpec {
            kind: Some(pb::model_spec::Kind::DigitsCnn(pb::DigitsCnnSpec {})),
        });
        p.method = Some(pb::MethodSpec {
            kind: Some(pb::method_spec::Kind::Supervised(pb::SupervisedSpec {})),
        });
        p.datasets.push(pb::DatasetSpec {
            role: 42,
            ..Default::default()
        });
        assert_eq!(
            spec_from_pb(&p).expect_err("bad role").field,
            "datasets[0].role"
        );
    }
}
