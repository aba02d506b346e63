//! Models, data and the transfer methods of graft — everything about *what* is trained,
//! nothing about networking. It runs on whatever Burn [`Device`](burn::tensor::Device) it is
//! given.
//!
//! - [`spec`]: the job specification and its validation.
//! - [`data`]: datasets — IDX loaders, the built-in catalog, the moons generator.
//! - [`model`]: the networks, written over flat parameters.
//! - [`params`]: flat parameters, flattening of the trainable ones, fingerprints.
//! - [`methods`]: the transfer methods (stages, trainable sets, losses) and one step's
//!   forward/backward.
//! - [`optim`]: optimizers and learning-rate schedules on flat vectors.
//! - [`shard`]: which samples each worker uses at each step.
//! - [`eval`]: accuracy, per-class accuracy, confusion matrix.
//! - [`weights`]: safetensors in and out.
//! - [`torch_layout`]: PyTorch's names and layout of the same networks.
//! - [`device`]: device names.
//! - [`rng`]: the deterministic random numbers every process shares.
//! - [`zeroshot`]: class vectors for zero-shot learning.

pub mod data;
pub mod device;
pub mod eval;
pub mod methods;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod shard;
pub mod spec;
pub mod torch_layout;
pub mod weights;
pub mod zeroshot;

pub use methods::StepStats;
pub use model::Architecture;
pub use params::Params;
pub use spec::JobSpec;
