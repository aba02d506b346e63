//! `graft bench allreduce --json` and `graft bench train --json` run for real (tiny sizes) and
//! print the fields of issue #4 with values that agree with one another.

use std::process::Command;

use graft_tests::{bin, show};

/// Every JSON line of a command's stdout.
fn json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(bin("graft"))
        .args(args)
        .output()
        .expect("running graft");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

fn num(row: &serde_json::Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {row}"))
}

#[test]
fn bench_allreduce_prints_its_fields_and_busbw_follows_algbw() {
    let rows = json_lines(&[
        "bench",
        "allreduce",
        "--workers",
        "2,3",
        "--bytes",
        "64KiB",
        "--algorithm",
        "ring,star",
        "--iters",
        "3",
        "--json",
    ]);
    // The ring over both transports, the star once.
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in &rows {
        let w = num(row, "workers");
        let bytes = num(row, "bytes");
        let seconds = num(row, "seconds");
        let algbw = num(row, "algbw_gib_s");
        assert!(bytes > 0.0 && seconds > 0.0, "{row}");
        assert!(num(row, "baseline_gib_s") > 0.0, "{row}");
        let gib = f64::from(1u32 << 30);
        assert!(
            (algbw - bytes / seconds / gib).abs() <= 1e-9 * algbw.max(1.0),
            "{row}"
        );
        // nccl-tests' bus bandwidth: what each link carries in a ring.
        let busbw = num(row, "busbw_gib_s");
        assert!(
            (busbw - algbw * 2.0 * (w - 1.0) / w).abs() <= 1e-9 * busbw.max(1.0),
            "{row}"
        );
    }
    let kinds: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r["algorithm"].as_str()?, r["transport"].as_str()?)))
        .collect();
    for kind in [("ring", "tcp"), ("ring", "grpc"), ("star", "grpc")] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            2,
            "{kind:?}: {rows:?}"
        );
    }
}

#[test]
fn bench_train_prints_a_step_breakdown_that_adds_up() {
    let rows = json_lines(&[
        "bench",
        "train",
        "--workload",
        "mlp",
        "--workers",
        "2",
        "--steps",
        "20",
        "--json",
    ]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["workload"], "mlp");
    assert_eq!(row["workers"], 2);
    assert_eq!(row["ring_transport"], "tcp", "the jobs' default");
    assert!(num(row, "samples_per_s") > 0.0, "{row}");
    let step = num(row, "step_ms");
    let phases = ["compute_ms", "flatten_ms", "comm_ms", "optimizer_ms"];
    for p in phases {
        assert!(num(row, p) >= 0.0, "{p} in {row}");
    }
    assert!(num(row, "compute_ms") > 0.0, "{row}");
    // The remainder is the median of each step's time after its four phases, so it cannot
    // be negative beyond rounding; a phase's median cannot be far above the step's.
    let other = num(row, "other_ms");
    assert!(other > -0.5, "{row}");
    assert!(num(row, "compute_ms") <= step * 1.5, "{row}");
    assert!(num(row, "steps") >= 10.0, "{row}");
}
