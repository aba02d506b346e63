//! `graft bench chaos`, bounded: three rounds of the small MNIST job on a coordinator and
//! three workers with random faults (worker kill -9, SIGSTOP, SIGTERM, coordinator kill -9),
//! each of which must complete, use every sample exactly once per epoch and end within half
//! a point of the uninterrupted run's accuracy. The full twenty rounds write
//! docs/RELIABILITY.md (`graft bench chaos --write`). Run in release, one test at a time.

use std::process::Command;

use graft_tests::{bin, data_dir, show};

#[test]
fn three_chaos_rounds_complete_exactly_once_at_the_uninterrupted_accuracy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin("graft"))
        .args(["bench", "chaos", "--rounds", "3", "--seed", "8", "--json"])
        .arg("--state-dir")
        .arg(tmp.path())
        .arg("--data-dir")
        .arg(data_dir())
        .env_remove("GRAFT_DATA_DIR")
        .output()
        .expect("running graft bench chaos");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    let rounds: Vec<&serde_json::Value> = lines.iter().filter(|l| l["round"].is_u64()).collect();
    assert_eq!(rounds.len(), 3, "{}", show(&out));
    let calm = lines
        .iter()
        .find_map(|l| l.get("uninterrupted"))
        .unwrap_or_else(|| panic!("no uninterrupted run: {}", show(&out)));
    assert_eq!(calm["steps"], 300, "{calm}");
    assert_eq!(calm["epochs"], 6, "{calm}");
    let mut fired = 0;
    for r in &rounds {
        let faults = r["faults"].as_array().expect("faults");
        fired += faults.iter().filter(|f| f["step"].is_u64()).count();
        assert_eq!(r["state"], "COMPLETED", "{r}");
        assert_eq!(r["steps"], 300, "{r}");
        assert_eq!(r["exactly_once"], true, "{r}");
        assert_eq!(r["epochs"], 6, "{r}");
        let delta = r["accuracy_delta_pt"].as_f64().expect("accuracy");
        assert!(delta.abs() <= 0.5, "{r}");
        assert_eq!(r["ok"], true, "{r}");
        // A worker killed or told to leave re-forms the group (a short stop need not: the
        // worker may be back within the heartbeat timeout).
        let removed = faults.iter().any(|f| {
            f["step"].is_u64() && (f["kind"] == "kill-worker" || f["kind"] == "term-worker")
        });
        if removed {
            assert!(r["regroups"].as_u64() >= Some(1), "no regroup: {r}");
        }
    }
    assert!(fired >= 3, "{}", show(&out));
    let totals = lines
        .iter()
        .find(|l| l.get("totals").is_some())
        .unwrap_or_else(|| panic!("no totals: {}", show(&out)));
    assert_eq!(totals["ok"], true, "{totals}");
    assert_eq!(totals["totals"]["completed"], 3, "{totals}");
    assert!(out.status.success(), "{}", show(&out));
}
