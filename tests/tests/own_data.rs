//! Jobs on a user's own files: an npz file, a CSV table and image folders written by the test,
//! run with `graft local` from job files that name them by relative paths; the classes of
//! differently filled files agree; a bad file creates no job; and the three examples under
//! `examples/own-data/` run on the files their script writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graft_tests::{Cluster, bin, last_json, show};
use npyz::WriterBuilder;

/// A tiny deterministic generator (the test needs no statistics, only repeatable noise).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32) - 0.5
    }
}

fn write_npz(path: &Path, x: &[f32], dim: u64, y: &[i64]) {
    let mut z = npyz::npz::NpzWriter::create(path).unwrap();
    let mut w = z
        .array::<f32>("x", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&[y.len() as u64, dim])
        .begin_nd()
        .unwrap();
    w.extend(x.iter().copied()).unwrap();
    w.finish().unwrap();
    let mut w = z
        .array::<i64>("y", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&[y.len() as u64])
        .begin_nd()
        .unwrap();
    w.extend(y.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// Three blobs in 4-d, far apart: any working pipeline separates them.
fn blobs(dir: &Path) {
    let mut r = Lcg(1);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..300 {
        let k = i % 3;
        for d in 0..4 {
            let centre = if d == k { 3.0 } else { 0.0 };
            x.push(centre + r.next());
        }
        y.push(k as i64);
    }
    write_npz(&dir.join("blobs.npz"), &x, 4, &y);
}

/// Points left and right of a line, labelled by name, with a header.
fn table(dir: &Path) {
    let mut r = Lcg(2);
    let mut text = String::from("kind,a,b\n");
    for i in 0..400 {
        let (name, a) = if i % 2 == 0 {
            ("left", -1.0 + r.next())
        } else {
            ("right", 1.0 + r.next())
        };
        text.push_str(&format!("{name},{a:.4},{:.4}\n", 2.0 * r.next()));
    }
    std::fs::write(dir.join("points.csv"), text).unwrap();
}

/// 8×8 grayscale PNGs of a horizontal bar, a dot and a vertical bar: 30 per class for
/// training, and a test folder without the dot.
fn images(dir: &Path) {
    let mut r = Lcg(3);
    for (part, classes) in [
        ("train", &["hbar", "dot", "vbar"][..]),
        ("test", &["hbar", "vbar"][..]),
    ] {
        for class in classes {
            let folder = dir.join("shapes").join(part).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for n in 0..30 {
                let img = image::GrayImage::from_fn(8, 8, |x, y| {
                    let on = match *class {
                        "hbar" => (3..5).contains(&y),
                        "vbar" => (3..5).contains(&x),
                        _ => (3..5).contains(&x) && (3..5).contains(&y),
                    };
                    let v = if on { 220.0 } else { 30.0 } + 40.0 * r.next();
                    image::Luma([v.clamp(0.0, 255.0) as u8])
                });
                img.save(folder.join(format!("{n:02}.png"))).unwrap();
            }
        }
    }
}

const TRAINING: &str = r#"
[optimizer]
kind = "sgd"
lr = 0.1
momentum = 0.9
[training]
global_batch_size = 32
steps = 150
[workers]
min = 1
max = 2
"#;

fn local(job: &Path, state: &Path) -> Output {
    Command::new(bin("graft"))
        .args(["local"])
        .arg(job)
        .args(["--workers", "2", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap()
}

fn completed(job: &Path, state: &Path) -> serde_json::Value {
    let out = local(job, state);
    assert!(out.status.success(), "{}: {}", job.display(), show(&out));
    let r = last_json(&out);
    assert_eq!(r["state"], "COMPLETED", "{}", show(&out));
    r
}

fn accuracy(r: &serde_json::Value, label: &str) -> f64 {
    r["metrics"][format!("{label}_accuracy")]
        .as_f64()
        .unwrap_or_else(|| panic!("no {label} accuracy in {r}"))
}

fn classes(r: &serde_json::Value, i: usize) -> Vec<String> {
    r["datasets"][i]["classes"]
        .as_array()
        .unwrap_or_else(|| panic!("no datasets[{i}] in {r}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn jobs_on_an_npz_file_a_csv_table_and_image_folders_train_and_state_their_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    blobs(&data);
    table(&data);
    images(&data);
    // A supervised MLP job on `datasets`, beside the data so that the relative paths hold.
    let write = |name: &str, datasets: &str| -> PathBuf {
        let p = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "name = {name:?}\nseed = 4\n[model]\nkind = \"mlp\"\nhidden = [16]\n\
             [method]\nkind = \"supervised\"\n{datasets}{TRAINING}"
        );
        std::fs::write(&p, text).unwrap();
        p
    };

    // npz, a fifth held out: the two parts are complementary and both stated.
    let npz = write(
        "npz",
        r#"[[datasets]]
path = "data/blobs.npz"
role = "source"
holdout = 0.2
[[datasets]]
path = "data/blobs.npz"
role = "eval"
holdout = 0.2
split = "test"
"#,
    );
    let r = completed(&npz, &dir.path().join("s-npz"));
    assert!(accuracy(&r, "target") >= 0.95, "{r}");
    assert_eq!(r["datasets"][0]["samples"], 240, "{r}");
    assert_eq!(r["datasets"][1]["samples"], 60, "{r}");
    assert_eq!(classes(&r, 0), ["0", "1", "2"]);
    let stated = r["datasets"][1]["stated"].as_str().unwrap();
    assert!(
        stated.contains("300 samples of 4 (f32 as stored)")
            && stated.contains("60 samples held out"),
        "{stated}"
    );

    // CSV: the label column by name, first; classes named by the table.
    let csv = write(
        "csv",
        r#"[[datasets]]
path = "data/points.csv"
label_column = "kind"
role = "source"
holdout = 0.25
[[datasets]]
path = "data/points.csv"
label_column = 0
role = "eval"
holdout = 0.25
split = "test"
"#,
    );
    let r = completed(&csv, &dir.path().join("s-csv"));
    assert!(accuracy(&r, "target") >= 0.95, "{r}");
    assert_eq!(classes(&r, 1), ["left", "right"]);
    assert_eq!(r["datasets"][1]["samples"], 100, "{r}");

    // Image folders: the test folder has no "dot", and still means the training folders'
    // classes by its labels (were "vbar" label 1, as its own folder sorts, the accuracy on
    // it would be 0). Resized from 8×8 to 12×12 as asked.
    let img = write(
        "images",
        r#"[[datasets]]
path = "data/shapes/train"
format = "image-folder"
role = "source"
image_size = 12
[[datasets]]
path = "data/shapes/test"
role = "eval"
image_size = 12
"#,
    );
    let r = completed(&img, &dir.path().join("s-img"));
    assert!(accuracy(&r, "target") >= 0.95, "{r}");
    assert_eq!(classes(&r, 0), ["dot", "hbar", "vbar"]);
    assert_eq!(classes(&r, 1), ["dot", "hbar", "vbar"]);
    assert_eq!(
        r["datasets"][1]["sample_shape"],
        serde_json::json!([1, 12, 12])
    );
}

#[test]
fn a_bad_file_is_refused_naming_it_and_no_job_is_created() {
    let c = Cluster::start(1, 3000);
    let dir = c.tmp.path().join("mine");
    std::fs::create_dir_all(dir.join("empty-class/a")).unwrap();
    std::fs::create_dir_all(dir.join("empty-class/b")).unwrap();
    image::GrayImage::new(4, 4)
        .save(dir.join("empty-class/a/0.png"))
        .unwrap();
    std::fs::write(dir.join("ragged.csv"), "a,b,y\n1,2,0\n3,1\n").unwrap();
    std::fs::write(dir.join("broken.npz"), b"PK\x03\x04 not a zip").unwrap();
    let cases = [
        ("ragged.csv", "", "ragged.csv"),
        ("broken.npz", "", "broken.npz"),
        ("empty-class", "format = \"image-folder\"", "empty-class"),
        ("missing.npz", "", "missing.npz"),
    ];
    for (file, extra, names) in cases {
        let path = dir.join(file);
        let job = c.job_file(
            "bad.toml",
            &format!(
                r#"name = "bad"
[model]
kind = "mlp"
hidden = [4]
[method]
kind = "supervised"
[[datasets]]
path = {path:?}
role = "source"
{extra}
[[datasets]]
name = "moons"
split = "test"
role = "eval"
{TRAINING}"#,
                path = path.display().to_string()
            ),
        );
        let out = c.graft(&["submit", job.to_str().unwrap()]);
        assert!(!out.status.success(), "{file}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("datasets[0]") && err.contains(names),
            "{file}: {err}"
        );
    }
    let out = c.graft(&["list"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("job-"),
        "a refused job was created: {}",
        show(&out)
    );
}

#[test]
fn the_own_data_examples_run_on_the_files_their_script_writes() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/own-data");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(examples.join("make-data.py"))
        .arg("--to")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "make-data.py: {}", show(&out));
    for (file, label, at_least) in [
        ("spirals-npz.toml", "heldout", 0.9),
        ("moons-csv-dann.toml", "target", 0.8),
        ("shapes-fine-tune.toml", "target", 0.4),
    ] {
        // Beside the data, as in the repository, so that the relative paths hold.
        let job = dir.path().join(file);
        std::fs::copy(examples.join(file), &job).unwrap();
        let r = completed(&job, &dir.path().join(format!("s-{file}")));
        let a = accuracy(&r, label);
        assert!(a >= at_least, "{file}: {label} accuracy {a}");
    }
}
