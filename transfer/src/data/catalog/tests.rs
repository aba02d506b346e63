use std::io::Write;
use std::path::PathBuf;

use super::*;

/// The shared benchmark data: `$GRAFT_DATA_DIR`, else `shared/data` beside the workspace.
/// Tests that need it fail (rather than skip) when it is absent, so a broken checkout
/// cannot pass unnoticed.
fn data_dir() -> PathBuf {
    let dir = std::env::var_os(DATA_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    assert!(
        dir.is_dir(),
        "benchmark data not found at {}; set {DATA_DIR_ENV}",
        dir.display()
    );
    dir
}

fn real(name: &str, split: &str) -> Dataset {
    load(name, split, &data_dir(), &MoonsConfig::default())
        .unwrap_or_else(|e| panic!("loading {name}/{split}: {e}"))
}

/// A fresh, empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-catalog-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_u8(path: &Path, dims: Vec<usize>, data: Vec<u8>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    idx::write_idx_gz(
        path,
        &IdxArray {
            dims,
            data: IdxData::U8(data),
        },
    )
    .unwrap();
}

fn in_range(d: &Dataset, lo: f32, hi: f32) -> bool {
    d.features.iter().all(|&v| (lo..=hi).contains(&v))
}

#[test]
fn known_names_are_described_and_unknown_ones_rejected() {
    for name in KNOWN {
        let info = describe(name).unwrap();
        assert!(info.splits.contains(&"train"), "{name}");
    }
    assert_eq!(describe("mnist").unwrap().sample_shape, &[1, 28, 28]);
    assert!(describe("imagenet").is_none());
    let dir = Path::new("/nonexistent");
    let err = load("imagenet", "train", dir, &MoonsConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::UnknownDataset { .. }));
    assert!(err.to_string().contains("office-dslr"), "{err}");
    let err = load("optdigits", "test", dir, &MoonsConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::UnknownSplit { .. }));
    assert!(err.to_string().contains("train, all"), "{err}");
}

#[test]
fn moons_need_no_files_and_test_split_differs() {
    let dir = Path::new("/nonexistent");
    let cfg = MoonsConfig {
        samples: 200,
        ..MoonsConfig::default()
    };
    let train = load("moons", "train", dir, &cfg).unwrap();
    let test = load("moons", "test", dir, &cfg).unwrap();
    assert_eq!(train.name, "moons/train");
    assert_eq!(train, moons::moons(&cfg, "moons/train"));
    assert_ne!(train.features, test.features);
    let info = describe("moons").unwrap();
    assert_eq!(
        (test.sample_shape.as_slice(), test.num_classes),
        (info.sample_shape, 2)
    );
    let bad = MoonsConfig {
        noise: f32::NAN,
        ..cfg
    };
    assert!(matches!(
        load("moons", "train", dir, &bad),
        Err(DataError::Invalid { .. })
    ));
}

#[test]
fn missing_data_dir_names_the_path() {
    let dir = std::env::temp_dir().join(format!("graft-no-such-dir-{}", std::process::id()));
    let only = [dir.clone()];
    let err = load_in("mnist", "test", &only, &MoonsConfig::default()).unwrap_err();
    let want = dir.join("mnist/t10k-images-idx3-ubyte.gz");
    match &err {
        DataError::Missing { path, dataset } => {
            assert_eq!((path, dataset.as_str()), (&want, "mnist"))
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&want.display().to_string()), "{msg}");
    assert!(msg.contains("GRAFT_DATA_DIR"), "{msg}");
    let err = load_in("optdigits", "all", &only, &MoonsConfig::default()).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
}

#[test]
fn small_files_load_and_inconsistencies_are_reported() {
    let dir = temp_dir("pair");
    let images = dir.join("mnist/t10k-images-idx3-ubyte.gz");
    let labels = dir.join("mnist/t10k-labels-idx1-ubyte.gz");
    let cfg = MoonsConfig::default();
    let pixels: Vec<u8> = (0..3 * 784).map(|i| (i % 256) as u8).collect();
    write_u8(&images, vec![3, 28, 28], pixels);
    write_u8(&labels, vec![3], vec![7, 0, 9]);
    let d = load("mnist", "test", &dir, &cfg).unwrap();
    assert_eq!(
        (d.len(), d.labels.clone(), d.name.as_str()),
        (3, vec![7, 0, 9], "mnist/test")
    );
    assert_eq!(d.sample(0)[255], 1.0);
    assert_eq!(d.sample(0)[1], 1.0 / 255.0);

    write_u8(&labels, vec![2], vec![7, 0]);
    let err = load("mnist", "test", &dir, &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images_n: 3,
                labels_n: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("t10k-images") && msg.contains("t10k-labels"),
        "{msg}"
    );

    write_u8(&labels, vec![3], vec![7, 10, 9]);
    let err = load("mnist", "test", &dir, &cfg).unwrap_err();
    assert!(err.to_string().contains("label 10 of sample 1"), "{err}");

    write_u8(&images, vec![3, 16, 16], vec![0; 3 * 256]);
    let err = load("mnist", "test", &dir, &cfg).unwrap_err();
    assert!(err.to_string().contains("expected [N, 28, 28]"), "{err}");

    std::fs::write(&images, b"\x1f\x8b\x08\x00garbage").unwrap();
    let err = load("mnist", "test", &dir, &cfg).unwrap_err();
    assert!(matches!(err, DataError::Malformed { .. }), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn optdigits_parse_errors_name_file_and_line() {
    let dir = temp_dir("csv");
    let path = dir.join("uci_optdigits/digits.csv.gz");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let write = |text: &str| {
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
    };
    let good = format!("{}3\n", "16,".repeat(64));
    write(&format!("{good}{good}"));
    let d = load("optdigits", "all", &dir, &MoonsConfig::default()).unwrap();
    assert_eq!((d.len(), d.labels.clone()), (2, vec![3, 3]));
    assert!(d.features.iter().all(|&v| v == 1.0));

    write(&format!("{good}{}x\n", "0,".repeat(64)));
    let msg = load("optdigits", "all", &dir, &MoonsConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("digits.csv.gz") && msg.contains("line 2"),
        "{msg}"
    );

    write(&format!("{good}{}1\n", "0,".repeat(63)));
    let msg = load("optdigits", "all", &dir, &MoonsConfig::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("line 2: 64 fields"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn surf_normalisation_gives_zero_mean_unit_std() {
    // 3 rows of 4 counts; row 2 is empty, feature 3 is constant after row scaling.
    let mut x = vec![1.0, 3.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    normalise_surf(&mut x, 4);
    for j in 0..2 {
        let col: Vec<f64> = (0..3).map(|i| f64::from(x[i * 4 + j])).collect();
        let mean = col.iter().sum::<f64>() / 3.0;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "feature {j}: {col:?}"
        );
    }
    assert!(x.iter().skip(2).step_by(4).all(|&v| v == 0.0));
    assert!(x.iter().all(|v| v.is_finite()));
}

#[test]
fn real_mnist_test() {
    let d = real("mnist", "test");
    assert_eq!(d.len(), 10_000);
    assert_eq!(d.sample_shape, vec![1, 28, 28]);
    assert_eq!(&d.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert_eq!(
        d.class_counts(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert!(in_range(&d, 0.0, 1.0));
    assert!(d.features.contains(&1.0));
}

#[test]
fn real_usps_train() {
    let d = real("usps", "train");
    assert_eq!(d.len(), 7291);
    assert_eq!(d.sample_shape, vec![1, 16, 16]);
    assert_eq!(&d.labels[..5], &[6, 5, 4, 7, 3]);
    assert_eq!(
        d.class_counts(),
        vec![1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    );
    assert!(in_range(&d, 0.0, 1.0));
}

#[test]
fn real_jda_subsets() {
    let m = real("mnist2000", "train");
    assert_eq!(m.len(), 2000);
    assert_eq!(
        m.class_counts(),
        vec![196, 227, 207, 202, 196, 179, 191, 206, 195, 201]
    );
    assert!(in_range(&m, 0.0, 255.0 / 256.0));
    let u = real("usps1800", "all");
    assert_eq!((u.len(), u.name.as_str()), (1800, "usps1800/all"));
    assert_eq!(
        u.class_counts(),
        vec![352, 241, 165, 166, 166, 126, 139, 172, 129, 144]
    );
    assert!(in_range(&u, 0.0, 1.0));
}

#[test]
fn real_optdigits() {
    let d = real("optdigits", "train");
    assert_eq!(d.len(), 1797);
    assert_eq!(d.sample_shape, vec![1, 8, 8]);
    assert_eq!(
        d.class_counts(),
        vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    assert!(in_range(&d, 0.0, 1.0));
}

#[test]
fn real_office_dslr() {
    let d = real("office-dslr", "all");
    assert_eq!(d.len(), 157);
    assert_eq!(d.sample_shape, vec![800]);
    assert_eq!(
        d.class_counts(),
        vec![12, 21, 12, 13, 10, 24, 22, 12, 8, 23]
    );
    assert!(d.features.iter().all(|v| v.is_finite()));
    let mean0: f32 = (0..d.len()).map(|i| d.sample(i)[0]).sum::<f32>() / d.len() as f32;
    assert!(mean0.abs() < 1e-4, "{mean0}");
}
