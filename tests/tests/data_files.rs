//! `graft data show` on dataset files this test writes: what the reader states, and a bad
//! file refused with its name and the problem (exit status 2).

use std::path::Path;
use std::process::Output;

use graft_tests::{bin, show};
use graft_transfer::data::idx::{IdxArray, IdxData, write_idx_gz};

fn data_show(path: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin("graft"))
        .args(["data", "show"])
        .arg(path)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn show_states_what_a_csv_and_an_idx_pair_hold_and_refuses_a_ragged_table() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("flowers.csv");
    std::fs::write(
        &csv,
        "length,width,species\n1.5,0.2,setosa\n4.7,1.4,versicolor\n1.3,0.2,setosa\n",
    )
    .unwrap();
    let out = data_show(&csv, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 samples of 2") && text.contains("values 0.2..4.7"),
        "{text}"
    );
    assert!(
        text.contains("0  setosa  (2 samples)") && text.contains("1  versicolor  (1 samples)"),
        "{text}"
    );

    let (x, y) = (
        dir.path().join("d-images-idx3-ubyte.gz"),
        dir.path().join("d-labels-idx1-ubyte.gz"),
    );
    let u8s = |dims: Vec<usize>, v: Vec<u8>| IdxArray {
        dims,
        data: IdxData::U8(v),
    };
    write_idx_gz(
        &x,
        &u8s(vec![2, 2, 2], vec![0, 255, 255, 0, 51, 51, 51, 51]),
    )
    .unwrap();
    write_idx_gz(&y, &u8s(vec![2], vec![3, 1])).unwrap();
    let out = data_show(&x, &["--labels", y.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 samples of 1×2×2 (u8 divided by 255), values 0..1; 4 classes"),
        "{text}"
    );

    std::fs::write(&csv, "1,2,0\n3,4,1\n5,6\n").unwrap();
    let out = data_show(&csv, &["--label-column", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flowers.csv") && err.contains("line 3") && err.contains("ragged row"),
        "{err}"
    );
    let out = data_show(&csv, &["--format", "parquet"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown format \"parquet\""),
        "{}",
        show(&out)
    );
}
