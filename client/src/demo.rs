//! The built-in demonstration: the two-moons problem of the DANN paper, where the target
//! domain is the source rotated by 35°. A network trained on the source alone loses accuracy
//! on the rotated target; the same network trained with DANN on the unlabelled rotated
//! moons recovers it. The jobs are the example files `examples/source-only-moons.toml` and
//! `examples/dann-moons.toml`, built into the binary so the demo needs nothing else.

use std::collections::HashMap;

use graft_transfer::JobSpec;

const SOURCE_ONLY: &str = include_str!("../../examples/source-only-moons.toml");
const DANN: &str = include_str!("../../examples/dann-moons.toml");

/// The demo's jobs, in order: source only, then DANN.
pub fn jobs() -> Result<Vec<JobSpec>, String> {
    [SOURCE_ONLY, DANN]
        .iter()
        .map(|t| toml::from_str(t).map_err(|e| format!("built-in demo job: {e}")))
        .collect()
}

/// Both jobs' target accuracy side by side.
pub fn side_by_side(results: &[(String, HashMap<String, f64>)]) -> String {
    let mut s = String::from("target accuracy on the moons rotated by 35°:\n");
    for (name, metrics) in results {
        let acc = metrics.get("target_accuracy").copied().unwrap_or(f64::NAN);
        let domain = metrics
            .get("domain_accuracy")
            .map(|d| format!("  (domain head accuracy {d:.3})"))
            .unwrap_or_default();
        s.push_str(&format!("  {name:<20} {acc:.4}{domain}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_jobs_are_valid() {
        let jobs = super::jobs().expect("they parse");
        assert_eq!(jobs.len(), 2);
        for j in jobs {
            j.validate().unwrap_or_else(|e| panic!("{}: {e}", j.name));
        }
    }
}
