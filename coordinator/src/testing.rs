//! Fixtures for the coordinator's unit tests.

use graft_transfer::JobSpec;

/// A small supervised job on the generated moons (no data files), with `workers` (min, max)
/// and `steps` steps, a replica check every step, reduced by the star (the unit tests drive
/// the coordinator's rounds).
pub fn moons_spec(workers: (u32, u32), steps: u64) -> JobSpec {
    toml::from_str(&format!(
        r#"
name = "t"
allreduce = "star"
[model]
kind = "mlp"
hidden = [4]
[method]
kind = "supervised"
[[datasets]]
name = "moons"
role = "source"
samples = 100
[[datasets]]
name = "moons"
split = "test"
role = "eval"
samples = 20
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 10
steps = {steps}
fingerprint_interval = 1
[workers]
min = {}
max = {}
"#,
        workers.0, workers.1
    ))
    .unwrap_or_else(|e| panic!("the fixture parses: {e}"))
}
