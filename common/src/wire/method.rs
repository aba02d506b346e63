//! The transfer methods and their per-method data on the wire.

use graft_proto::v1 as pb;
use graft_transfer::methods::{DataKey, Stage, StreamPlan};
use graft_transfer::spec::{
    AttributeSource, GrlRamp, MethodSpec, Penalty, Scoring, TaskSpec, defaults,
};
use graft_transfer::torch_layout::WeightsLayout;
use graft_transfer::zeroshot::ClassVectors;

use super::{WireError, missing, usize_of};

fn source_to_pb(
    source_steps: Option<u64>,
    source_epochs: Option<u32>,
    init_from: &Option<String>,
    reset_head: bool,
    init_layout: Option<WeightsLayout>,
) -> pb::SourceStageSpec {
    pb::SourceStageSpec {
        source_steps,
        source_epochs,
        init_from: init_from.clone(),
        reset_head,
        init_layout: layout_to_pb(init_layout).into(),
    }
}

fn layout_to_pb(l: Option<WeightsLayout>) -> pb::WeightsLayout {
    match l {
        None => pb::WeightsLayout::Unspecified,
        Some(WeightsLayout::Graft) => pb::WeightsLayout::Graft,
        Some(WeightsLayout::Torch) => pb::WeightsLayout::Torch,
    }
}

fn layout_from_pb(v: i32) -> Result<Option<WeightsLayout>, WireError> {
    match pb::WeightsLayout::try_from(v) {
        Ok(pb::WeightsLayout::Unspecified) => Ok(None),
        Ok(pb::WeightsLayout::Graft) => Ok(Some(WeightsLayout::Graft)),
        Ok(pb::WeightsLayout::Torch) => Ok(Some(WeightsLayout::Torch)),
        Err(_) => Err(WireError {
            field: "method.init_layout".into(),
            reason: format!("{v} is not a WeightsLayout (0 from the file, 1 graft, 2 torch)"),
        }),
    }
}

fn tasks_to_pb(tasks: &[TaskSpec]) -> Vec<pb::TaskSpec> {
    tasks
        .iter()
        .map(|t| pb::TaskSpec {
            name: t.name.clone(),
            weight: Some(t.weight),
            batch_size: t.batch_size.map(|b| b as u64),
            steps: t.steps,
            epochs: t.epochs,
        })
        .collect()
}

fn tasks_from_pb(tasks: &[pb::TaskSpec]) -> Result<Vec<TaskSpec>, WireError> {
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok(TaskSpec {
                name: t.name.clone(),
                weight: t.weight.unwrap_or(defaults::TASK_WEIGHT),
                batch_size: t
                    .batch_size
                    .map(|b| usize_of(b, &format!("method.tasks[{i}].batch_size")))
                    .transpose()?,
                steps: t.steps,
                epochs: t.epochs,
            })
        })
        .collect()
}

/// The wire form of a method.
pub fn method_to_pb(m: &MethodSpec) -> pb::method_spec::Kind {
    use pb::method_spec::Kind;
    match m {
        MethodSpec::Supervised {} => Kind::Supervised(pb::SupervisedSpec {}),
        MethodSpec::FineTuning {
            source_steps,
            source_epochs,
            init_from,
            reset_head,
            init_layout,
        } => Kind::FineTuning(pb::FineTuningSpec {
            source_steps: *source_steps,
            source_epochs: *source_epochs,
            init_from: init_from.clone(),
            reset_head: *reset_head,
            init_layout: layout_to_pb(*init_layout).into(),
        }),
        MethodSpec::Conservative {
            source_steps,
            source_epochs,
            init_from,
            reset_head,
            init_layout,
            penalty,
            lambda,
            temperature,
        } => Kind::Conservative(pb::ConservativeSpec {
            source: Some(source_to_pb(
                *source_steps,
                *source_epochs,
                init_from,
                *reset_head,
                *init_layout,
            )),
            penalty: match penalty {
                Penalty::L2Sp => pb::Penalty::L2Sp,
                Penalty::OutputKl => pb::Penalty::OutputKl,
                Penalty::FeatureL2 => pb::Penalty::FeatureL2,
            } as i32,
            lambda: *lambda,
            temperature: *temperature,
        }),
        MethodSpec::LayerTransfer {
            source_steps,
            source_epochs,
            init_from,
            reset_head,
            init_layout,
            freeze,
        } => Kind::LayerTransfer(pb::LayerTransferSpec {
            source: Some(source_to_pb(
                *source_steps,
                *source_epochs,
                init_from,
                *reset_head,
                *init_layout,
            )),
            freeze: freeze.clone(),
        }),
        MethodSpec::Multitask { tasks } => Kind::Multitask(pb::MultitaskSpec {
            tasks: tasks_to_pb(tasks),
        }),
        MethodSpec::Progressive { tasks, laterals } => Kind::Progressive(pb::ProgressiveSpec {
            tasks: tasks_to_pb(tasks),
            laterals: Some(*laterals),
        }),
        MethodSpec::Dann {
            lambda_max,
            gamma,
            domain_hidden,
            target_batch_size,
            trade_off,
            ramp,
            ramp_steps,
        } => Kind::Dann(pb::DannSpec {
            lambda_max: Some(*lambda_max),
            gamma: Some(*gamma),
            domain_hidden: domain_hidden.iter().map(|&h| h as u64).collect(),
            linear_domain_head: domain_hidden.is_empty(),
            target_batch_size: target_batch_size.map(|b| b as u64),
            trade_off: Some(*trade_off),
            ramp: match ramp {
                GrlRamp::Progress => pb::GrlRamp::Progress,
                GrlRamp::Steps => pb::GrlRamp::Steps,
            } as i32,
            ramp_steps: *ramp_steps,
        }),
        MethodSpec::ZeroShot {
            unseen_classes,
            attributes,
            scoring,
        } => Kind::ZeroShot(pb::ZeroShotSpec {
            likelihood: *scoring == Scoring::Likelihood,
            unseen_classes: unseen_classes.clone(),
            attributes: Some(pb::AttributeSource {
                kind: Some(match attributes {
                    AttributeSource::Builtin { table } => {
                        pb::attribute_source::Kind::Builtin(table.clone())
                    }
                    AttributeSource::File { path } => {
                        pb::attribute_source::Kind::File(path.clone())
                    }
                    AttributeSource::Pca {
                        dataset,
                        split,
                        components,
                    } => pb::attribute_source::Kind::Pca(pb::PcaAttributes {
                        dataset: dataset.clone(),
                        split: split.clone(),
                        components: (*components).min(u32::MAX as usize) as u32,
                    }),
                }),
            }),
        }),
    }
}

/// `(source_steps, source_epochs, init_from, reset_head, init_layout)` off the wire.
type SourceStage = (
    Option<u64>,
    Option<u32>,
    Option<String>,
    bool,
    Option<WeightsLayout>,
);

fn source_from_pb(s: Option<&pb::SourceStageSpec>) -> Result<SourceStage, WireError> {
    s.map_or(Ok((None, None, None, false, None)), |s| {
        Ok((
            s.source_steps,
            s.source_epochs,
            s.init_from.clone(),
            s.reset_head,
            layout_from_pb(s.init_layout)?,
        ))
    })
}

/// DANN's domain head off the wire: empty is the file's default unless the message says the
/// head is linear (the file's `domain_hidden = []`), which a repeated field cannot say alone.
fn domain_hidden_from_pb(d: &pb::DannSpec) -> Result<Vec<usize>, WireError> {
    match (d.domain_hidden.is_empty(), d.linear_domain_head) {
        (true, false) => Ok(defaults::DOMAIN_HIDDEN.to_vec()),
        (true, true) => Ok(Vec::new()),
        (false, true) => Err(WireError {
            field: "method.linear_domain_head".into(),
            reason: "a linear domain head has no hidden layers: leave domain_hidden empty".into(),
        }),
        (false, false) => d
            .domain_hidden
            .iter()
            .enumerate()
            .map(|(i, &h)| usize_of(h, &format!("method.domain_hidden[{i}]")))
            .collect(),
    }
}

/// A method off the wire.
///
/// # Errors
/// [`WireError`] naming the missing or bad field.
pub fn method_from_pb(k: &pb::method_spec::Kind) -> Result<MethodSpec, WireError> {
    use pb::method_spec::Kind;
    Ok(match k {
        Kind::Supervised(_) => MethodSpec::Supervised {},
        Kind::FineTuning(f) => MethodSpec::FineTuning {
            source_steps: f.source_steps,
            source_epochs: f.source_epochs,
            init_from: f.init_from.clone(),
            reset_head: f.reset_head,
            init_layout: layout_from_pb(f.init_layout)?,
        },
        Kind::Conservative(c) => {
            let (source_steps, source_epochs, init_from, reset_head, init_layout) =
                source_from_pb(c.source.as_ref())?;
            MethodSpec::Conservative {
                source_steps,
                source_epochs,
                init_from,
                reset_head,
                init_layout,
                penalty: match pb::Penalty::try_from(c.penalty) {
                    Ok(pb::Penalty::L2Sp) => Penalty::L2Sp,
                    Ok(pb::Penalty::OutputKl) => Penalty::OutputKl,
                    Ok(pb::Penalty::FeatureL2) => Penalty::FeatureL2,
                    _ => {
                        return Err(WireError {
                            field: "method.penalty".into(),
                            reason: format!("unknown penalty {}", c.penalty),
                        });
                    }
                },
                lambda: c.lambda,
                temperature: if c.temperature == 0.0 {
                    defaults::TEMPERATURE
                } else {
                    c.temperature
                },
            }
        }
        Kind::LayerTransfer(l) => {
            let (source_steps, source_epochs, init_from, reset_head, init_layout) =
                source_from_pb(l.source.as_ref())?;
            MethodSpec::LayerTransfer {
                source_steps,
                source_epochs,
                init_from,
                reset_head,
                init_layout,
                freeze: l.freeze.clone(),
            }
        }
        Kind::Multitask(m) => MethodSpec::Multitask {
            tasks: tasks_from_pb(&m.tasks)?,
        },
        Kind::Progressive(p) => MethodSpec::Progressive {
            tasks: tasks_from_pb(&p.tasks)?,
            laterals: p.laterals.unwrap_or(defaults::LATERALS),
        },
        Kind::Dann(d) => MethodSpec::Dann {
            lambda_max: d.lambda_max.unwrap_or(defaults::LAMBDA_MAX),
            gamma: d.gamma.unwrap_or(defaults::DANN_GAMMA),
            domain_hidden: domain_hidden_from_pb(d)?,
            target_batch_size: d
                .target_batch_size
                .map(|b| usize_of(b, "method.target_batch_size"))
                .transpose()?,
            trade_off: d.trade_off.unwrap_or(defaults::DANN_TRADE_OFF),
            ramp: match pb::GrlRamp::try_from(d.ramp) {
                Ok(pb::GrlRamp::Unspecified | pb::GrlRamp::Progress) => GrlRamp::Progress,
                Ok(pb::GrlRamp::Steps) => GrlRamp::Steps,
                Err(_) => {
                    return Err(WireError {
                        field: "method.ramp".into(),
                        reason: format!("unknown value {}", d.ramp),
                    });
                }
            },
            ramp_steps: d.ramp_steps,
        },
        Kind::ZeroShot(z) => MethodSpec::ZeroShot {
            scoring: if z.likelihood {
                Scoring::Likelihood
            } else {
                Scoring::Nearest
            },
            unseen_classes: z.unseen_classes.clone(),
            attributes: match z
                .attributes
                .as_ref()
                .and_then(|a| a.kind.as_ref())
                .ok_or_else(|| missing("method.attributes"))?
            {
                pb::attribute_source::Kind::Builtin(t) => {
                    AttributeSource::Builtin { table: t.clone() }
                }
                pb::attribute_source::Kind::File(p) => AttributeSource::File { path: p.clone() },
                pb::attribute_source::Kind::Pca(p) => AttributeSource::Pca {
                    dataset: p.dataset.clone(),
                    split: if p.split.is_empty() {
                        defaults::SPLIT.to_string()
                    } else {
                        p.split.clone()
                    },
                    components: p.components as usize,
                },
            },
        },
    })
}

/// The wire form of a stage.
pub fn stage_to_pb(s: &Stage) -> pb::StagePlan {
    pb::StagePlan {
        name: s.name.clone(),
        first_step: s.first_step,
        steps: s.steps,
        reset_prefixes: s.reset_prefixes.clone(),
        streams: s
            .streams
            .iter()
            .map(|t| pb::StreamPlan {
                data: t.data.0.clone(),
                batch: t.batch as u64,
                samples: t.samples as u64,
                steps_per_epoch: t.steps_per_epoch,
            })
            .collect(),
        copies: s
            .copies
            .iter()
            .map(|(from, to)| pb::PrefixCopy {
                from: from.clone(),
                to: to.clone(),
            })
            .collect(),
    }
}

/// A stage off the wire.
///
/// # Errors
/// [`WireError`] for a stage without streams or a bad size.
pub fn stage_from_pb(p: &pb::StagePlan, i: usize) -> Result<Stage, WireError> {
    if p.streams.is_empty() {
        return Err(missing(&format!("stages[{i}].streams")));
    }
    Ok(Stage {
        name: p.name.clone(),
        first_step: p.first_step,
        steps: p.steps,
        streams: p
            .streams
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let f = |k: &str| format!("stages[{i}].streams[{j}].{k}");
                let batch = usize_of(t.batch, &f("batch"))?;
                if batch == 0 {
                    return Err(WireError {
                        field: f("batch"),
                        reason: "must be > 0".into(),
                    });
                }
                Ok(StreamPlan {
                    data: DataKey(t.data.clone()),
                    batch,
                    samples: usize_of(t.samples, &f("samples"))?,
                    steps_per_epoch: t.steps_per_epoch.max(1),
                })
            })
            .collect::<Result<_, _>>()?,
        reset_prefixes: p.reset_prefixes.clone(),
        copies: p
            .copies
            .iter()
            .map(|c| (c.from.clone(), c.to.clone()))
            .collect(),
    })
}

/// The wire form of class vectors.
pub fn class_vectors_to_pb(c: &ClassVectors) -> pb::ClassVectors {
    pb::ClassVectors {
        rows: c.rows as u32,
        cols: c.cols as u32,
        values: c.values.clone(),
        binary: c.binary,
    }
}

/// Class vectors off the wire.
///
/// # Errors
/// [`WireError`] when the values do not fill `rows × cols` or are not finite.
pub fn class_vectors_from_pb(p: &pb::ClassVectors) -> Result<ClassVectors, WireError> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(p.values.len()) {
        return Err(WireError {
            field: "class_vectors".into(),
            reason: format!("{} values do not fill {rows} x {cols}", p.values.len()),
        });
    }
    let table = p.values.chunks(cols).map(<[f32]>::to_vec).collect();
    let mut c = ClassVectors::new(table).map_err(|e| WireError {
        field: "class_vectors".into(),
        reason: e.to_string(),
    })?;
    c.binary = p.binary;
    Ok(c)
}
