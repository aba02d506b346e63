//! The value each key of a job file takes when the file leaves it out. The serde defaults of
//! the tables read them, and so does the wire (`graft_common::wire`), which applies the same
//! ones to a `graft.v1.JobSpec` field left unset: a job sent field by field is the job its
//! file describes.

/// `datasets[].split` and `method.attributes.split`.
pub const SPLIT: &str = "train";
/// `method.temperature` of conservative training (`output_kl`).
pub const TEMPERATURE: f64 = 2.0;
/// `method.tasks[].weight`.
pub const TASK_WEIGHT: f64 = 1.0;
/// `method.laterals` of progressive networks.
pub const LATERALS: bool = true;
/// `method.lambda_max` of DANN.
pub const LAMBDA_MAX: f64 = 1.0;
/// `method.gamma` of DANN's λ schedule.
pub const DANN_GAMMA: f64 = 10.0;
/// `method.trade_off` of DANN: the weight of the domain loss.
pub const DANN_TRADE_OFF: f64 = 1.0;
/// `method.ramp_steps` of DANN's `ramp = "steps"` (TLlib's `max_iters`).
pub const DANN_RAMP_STEPS: u64 = 1000;
/// `method.domain_hidden` of DANN.
pub const DOMAIN_HIDDEN: &[usize] = &[100];
/// `optimizer.beta1` of Adam.
pub const BETA1: f64 = 0.9;
/// `optimizer.beta2` of Adam.
pub const BETA2: f64 = 0.999;
/// `optimizer.eps` of Adam.
pub const EPS: f64 = 1e-8;
/// `schedule.alpha` of the DANN schedule.
pub const SCHEDULE_ALPHA: f64 = 10.0;
/// `schedule.beta` of the DANN schedule.
pub const SCHEDULE_BETA: f64 = 0.75;
/// `training.fingerprint_interval`.
pub const FINGERPRINT_INTERVAL: u64 = 50;
/// `checkpoint.keep`.
pub const CHECKPOINT_KEEP: u32 = 3;
/// `workers.min` and `workers.max` when the file has no `workers` table.
pub const WORKERS: u32 = 1;
