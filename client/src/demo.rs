//! The built-in demonstration: the two-moons problem of the DANN paper, where the target
//! domain is the source rotated by 35°. First a model trained on the source alone (the
//! baseline, which loses accuracy on the rotated target), then fine-tuning on ten labelled
//! target samples per class, which recovers it.

use graft_transfer::JobSpec;

/// The demo's jobs, in order.
pub fn jobs(workers: u32) -> Result<Vec<JobSpec>, String> {
    let common = |name: &str, method: &str| -> String {
        format!(
            r#"
name = "{name}"
seed = 7
[model]
kind = "mlp"
hidden = [32, 32]
[method]
{method}
[[datasets]]
name = "moons"
split = "train"
role = "source"
samples = 2000
[[datasets]]
name = "moons"
split = "train"
role = "target_labelled"
rotation_deg = 35.0
labels_per_class = 10
[[datasets]]
name = "moons"
split = "test"
role = "eval"
label = "source"
[[datasets]]
name = "moons"
split = "test"
role = "eval"
label = "target"
rotation_deg = 35.0
[optimizer]
kind = "adam"
lr = 0.01
[training]
global_batch_size = 64
steps = {steps}
[workers]
min = {workers}
max = {workers}
[evaluation]
interval_steps = 100
"#,
            steps = if method.contains("fine_tuning") {
                60
            } else {
                400
            },
        )
    };
    let baseline = common("moons-source-only", "kind = \"supervised\"");
    let finetune = common(
        "moons-fine-tuning",
        "kind = \"fine_tuning\"\nsource_steps = 400",
    );
    [baseline, finetune]
        .iter()
        .map(|t| toml::from_str(t).map_err(|e| format!("built-in demo job: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_jobs_are_valid() {
        for j in super::jobs(2).expect("they parse") {
            j.validate().unwrap_or_else(|e| panic!("{}: {e}", j.name));
        }
    }
}
