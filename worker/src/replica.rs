//! A worker's replica of a job: the network, its parameters, the optimizer state and how
//! far it has trained. It outlives the group it trains in: when the group changes, the
//! [`Group`](crate::group::Group) is torn down and formed again, and the replica stays,
//! so a survivor loses no progress.

use graft_common::wire::{class_vectors_from_pb, spec_from_pb, stage_from_pb};
use graft_proto::v1 as pb;
use graft_transfer::methods::{Method, MethodData, Stage, method_for, start_stage};
use graft_transfer::optim::Optimizer;
use graft_transfer::{Architecture, JobSpec, Params};

use crate::error::WorkerError;

/// The optimizer of the stage being trained.
struct StageOptimizer {
    stage: usize,
    opt: Optimizer,
}

/// One job's model state on this worker.
pub struct Replica {
    /// The job.
    pub job: String,
    /// Its spec.
    pub spec: JobSpec,
    /// Its network.
    pub arch: Architecture,
    /// Its method.
    pub method: Box<dyn Method>,
    /// Its stages.
    pub stages: Vec<Stage>,
    /// All parameters.
    pub params: Params,
    /// Steps done.
    pub step: u64,
    optimizer: Option<StageOptimizer>,
    /// An optimizer state to resume the current stage with (a checkpoint's), until used.
    restore: Option<(Vec<f32>, u64)>,
}

/// What an assignment says of its job: spec, network, method and stages.
type JobParts = (JobSpec, Architecture, Box<dyn Method>, Vec<Stage>);

/// The parts of an assignment a replica is built from.
fn job_of(a: &pb::Assignment) -> Result<JobParts, WorkerError> {
    let spec = spec_from_pb(
        a.spec
            .as_ref()
            .ok_or_else(|| WorkerError::Protocol("assignment without spec".into()))?,
    )
    .map_err(|e| WorkerError::Protocol(e.to_string()))?;
    let input: Vec<usize> = a.input_shape.iter().map(|&d| d as usize).collect();
    let method_data = MethodData {
        class_vectors: a
            .class_vectors
            .as_ref()
            .map(class_vectors_from_pb)
            .transpose()
            .map_err(|e| WorkerError::Protocol(e.to_string()))?,
    };
    let method = method_for(&spec, &method_data);
    let num_classes = a.num_classes as usize;
    let arch = Architecture::with_layout(
        &spec.model,
        &input,
        num_classes,
        &method.layout(num_classes),
    )
    .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let stages: Vec<Stage> = a
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| stage_from_pb(s, i))
        .collect::<Result<_, _>>()
        .map_err(|e| WorkerError::Protocol(e.to_string()))?;
    Ok((spec, arch, method, stages))
}

impl Replica {
    /// A replica of the assignment's job at its start step: `state` is the job's starting
    /// state (all parameters flat, optimizer state, optimizer steps) when it has one, else
    /// the parameters are initialised from the job's seed.
    ///
    /// # Errors
    /// [`WorkerError::Protocol`] for an assignment or state that does not fit the network.
    pub fn new(
        a: &pb::Assignment,
        state: Option<(Vec<f32>, Vec<f32>, u64)>,
    ) -> Result<Self, WorkerError> {
        let (spec, arch, method, stages) = job_of(a)?;
        let (params, restore) = match state {
            Some((flat, opt, opt_steps)) => (
                arch.params_from_flat(&flat)
                    .map_err(|e| WorkerError::Protocol(format!("starting state: {e}")))?,
                (!opt.is_empty()).then_some((opt, opt_steps)),
            ),
            None => (arch.init(spec.seed), None),
        };
        Ok(Self {
            job: a.job_id.clone(),
            spec,
            arch,
            method,
            stages,
            params,
            step: a.start_step,
            optimizer: None,
            restore,
        })
    }

    /// Steps in the job.
    pub fn total(&self) -> u64 {
        self.stages.iter().map(|s| s.steps).sum()
    }

    /// The hash of the parameters the coordinator compares across replicas.
    pub fn fingerprint(&self) -> String {
        self.params.fingerprint()
    }

    /// Whether this replica can carry on in the group `a` forms: the same job, at the step
    /// the group starts from, and not told to fetch the state from a peer.
    pub fn continues(&self, a: &pb::Assignment) -> bool {
        self.job == a.job_id && self.step == a.start_step && a.state_from.is_empty()
    }

    /// The optimizer for `stage`, made when the stage starts (after the stage's copies and
    /// re-initialisations are applied to the parameters) or resumed from a restored state.
    ///
    /// # Errors
    /// [`WorkerError::Protocol`] for a restored state that does not fit.
    pub fn optimizer(&mut self, si: usize, n: usize) -> Result<&mut Optimizer, WorkerError> {
        if self.optimizer.as_ref().is_none_or(|o| o.stage != si) {
            let stage = &self.stages[si];
            let opt = if self.step == stage.first_step {
                start_stage(&self.arch, &mut self.params, stage, si, self.spec.seed);
                self.restore = None;
                Optimizer::new(&self.spec.optimizer, n)
            } else {
                match self.restore.take() {
                    Some((state, steps)) => {
                        Optimizer::from_state(&self.spec.optimizer, n, &state, steps)
                            .map_err(|e| WorkerError::Protocol(format!("optimizer state: {e}")))?
                    }
                    None => Optimizer::new(&self.spec.optimizer, n),
                }
            };
            self.optimizer = Some(StageOptimizer { stage: si, opt });
        }
        match self.optimizer.as_mut() {
            Some(o) => Ok(&mut o.opt),
            None => Err(WorkerError::Setup("no optimizer".into())),
        }
    }

    /// All parameters flat, the optimizer's state and its step count: what rank 0 uploads
    /// and what a joining worker receives.
    pub fn state(&self) -> (Vec<f32>, Vec<f32>, u64) {
        let (opt, steps) = match (&self.optimizer, &self.restore) {
            (Some(o), _) => (o.opt.state(), o.opt.steps),
            (None, Some((state, steps))) => (state.clone(), *steps),
            (None, None) => (Vec::new(), 0),
        };
        (self.params.flatten_all(), opt, steps)
    }
}
