use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-files-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn npy<T: npyz::AutoSerialize + Copy>(w: impl std::io::Write, shape: &[u64], data: &[T]) {
    let mut out = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(w)
        .begin_nd()
        .unwrap();
    out.extend(data.iter().copied()).unwrap();
    out.finish().unwrap();
}

fn npy_file<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    npy(std::fs::File::create(path).unwrap(), shape, data);
}

fn npz<X: npyz::AutoSerialize + Copy, Y: npyz::AutoSerialize + Copy>(
    path: &Path,
    (xk, xs, x): (&str, &[u64], &[X]),
    (yk, ys, y): (&str, &[u64], &[Y]),
) {
    let mut z = npyz::npz::NpzWriter::create(path).unwrap();
    let mut w = z
        .array::<X>(xk, Default::default())
        .unwrap()
        .default_dtype()
        .shape(xs)
        .begin_nd()
        .unwrap();
    w.extend(x.iter().copied()).unwrap();
    w.finish().unwrap();
    let mut w = z
        .array::<Y>(yk, Default::default())
        .unwrap()
        .default_dtype()
        .shape(ys)
        .begin_nd()
        .unwrap();
    w.extend(y.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn err(path: &Path, opts: &FileOptions) -> String {
    load_file(path, opts).unwrap_err().to_string()
}

#[test]
fn formats_are_inferred_from_clear_names_only() {
    let f = |s: &str| FileFormat::infer(Path::new(s));
    assert_eq!(f("a/train.npz"), Some(FileFormat::Npz));
    assert_eq!(f("x.npy"), Some(FileFormat::NpyPair));
    assert_eq!(f("t.csv.gz"), Some(FileFormat::Csv));
    assert_eq!(f("t.tsv"), Some(FileFormat::Csv));
    assert_eq!(f("train-images-idx3-ubyte.gz"), Some(FileFormat::Idx));
    assert_eq!(f("data.bin"), None);
    for name in FORMATS {
        assert_eq!(FileFormat::parse(name).map(FileFormat::as_str), Some(*name));
    }
    let dir = temp_dir("infer");
    std::fs::write(dir.join("data.bin"), b"x").unwrap();
    let msg = err(&dir.join("data.bin"), &FileOptions::default());
    assert!(
        msg.contains("data.bin") && msg.contains("give `format`"),
        "{msg}"
    );
    assert!(err(&dir.join("nothing.npz"), &FileOptions::default()).contains("nothing.npz"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npz_images_channels_last_and_labels_mapped() {
    let dir = temp_dir("npz");
    let p = dir.join("train.npz");
    // 3 RGB images 2×2, channels last; sample s, pixel (y, x), channel c = 10s + 4c + 2y + x.
    let x: Vec<u8> = (0..3u8)
        .flat_map(|s| {
            (0..2u8).flat_map(move |y| {
                (0..2u8).flat_map(move |xx| (0..3u8).map(move |c| 10 * s + 4 * c + 2 * y + xx))
            })
        })
        .collect();
    npz(&p, ("x", &[3, 2, 2, 3], &x), ("y", &[3], &[2i64, 0, 2]));
    let d = load_file(&p, &FileOptions::default()).unwrap();
    assert_eq!(d.dataset.sample_shape, vec![3, 2, 2]);
    assert_eq!(d.dataset.labels, vec![2, 0, 2]);
    assert_eq!(d.classes, vec!["0", "1", "2"]);
    // Sample 1, channel 2, row 1, column 0: 10 + 8 + 2 = 20.
    assert_eq!(d.dataset.sample(1)[2 * 4 + 2], 20.0 / 255.0);
    assert!(
        d.stated.contains("3 samples of 3×2×2") && d.stated.contains("u8 divided by 255"),
        "{}",
        d.stated
    );
    assert!(
        d.stated.contains("channels last moved first"),
        "{}",
        d.stated
    );

    // Named arrays, f32 features taken as stored.
    npz(
        &p,
        ("feat", &[2, 3], &[0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0]),
        ("lab", &[2], &[1u8, 0]),
    );
    let msg = err(&p, &FileOptions::default());
    assert!(
        msg.contains("no array \"x\"") && (msg.contains("feat, lab") || msg.contains("lab, feat")),
        "{msg}"
    );
    let opts = FileOptions {
        x_key: Some("feat".into()),
        y_key: Some("lab".into()),
        ..FileOptions::default()
    };
    let d = load_file(&p, &opts).unwrap();
    assert_eq!(
        (d.dataset.sample_shape.clone(), d.dataset.sample(0).to_vec()),
        (vec![3], vec![0.5, -1.0, 2.0])
    );

    // Wrong dtype, labels below 0, labels out of range, count mismatch, not a zip.
    npz(
        &p,
        ("x", &[2, 2], &[true, false, true, true]),
        ("y", &[2], &[0u8, 1]),
    );
    let msg = err(&p, &FileOptions::default());
    assert!(
        msg.contains("train.npz") && msg.contains("dtype |b1"),
        "{msg}"
    );
    npz(&p, ("x", &[2, 2], &[0u8; 4]), ("y", &[2], &[0.0f64, 1.0]));
    assert!(err(&p, &FileOptions::default()).contains("labels have dtype <f8; expected integers"));
    npz(&p, ("x", &[2, 2], &[0u8; 4]), ("y", &[2], &[0i32, -3]));
    assert!(err(&p, &FileOptions::default()).contains("label -3 of sample 1 is out of range"));
    npz(&p, ("x", &[2, 2], &[0u8; 4]), ("y", &[2], &[0i64, 1 << 40]));
    assert!(err(&p, &FileOptions::default()).contains("out of range"));
    npz(&p, ("x", &[2, 2], &[0u8; 4]), ("y", &[3], &[0u8, 1, 1]));
    assert!(err(&p, &FileOptions::default()).contains("holds 2 samples but"));
    npz(&p, ("x", &[2, 5, 2, 2], &[0u8; 40]), ("y", &[2], &[0u8, 1]));
    assert!(err(&p, &FileOptions::default()).contains("features of shape [2, 5, 2, 2]"));
    npz(&p, ("x", &[2, 1], &[f32::NAN, 0.0]), ("y", &[2], &[0u8, 1]));
    assert!(err(&p, &FileOptions::default()).contains("non-finite value in sample 0"));
    std::fs::write(&p, b"not a zip").unwrap();
    assert!(err(&p, &FileOptions::default()).contains("not an npz"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_pair_needs_its_labels_file() {
    let dir = temp_dir("npy");
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    npy_file(&x, &[4, 2, 2], &[0.25f64; 16]);
    npy_file(&y, &[4], &[3u16, 1, 3, 0]);
    let msg = err(&x, &FileOptions::default());
    assert!(
        msg.contains("x.npy") && msg.contains("needs `labels`"),
        "{msg}"
    );
    let opts = FileOptions {
        labels: Some(y.clone()),
        ..FileOptions::default()
    };
    let d = load_file(&x, &opts).unwrap();
    assert_eq!(d.dataset.sample_shape, vec![1, 2, 2]);
    assert_eq!(
        (d.dataset.labels.clone(), d.dataset.num_classes),
        (vec![3, 1, 3, 0], 4)
    );
    std::fs::write(&y, b"\x93NUMPY garbage").unwrap();
    assert!(err(&x, &opts).contains("y.npy: not a numpy file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn csv_with_and_without_header_names_and_ragged_rows() {
    let dir = temp_dir("csv");
    let p = dir.join("t.csv");
    std::fs::write(&p, "a,b,species\n1,2,setosa\n3,4.5,virginica\n5,6,setosa\n").unwrap();
    let d = load_file(&p, &FileOptions::default()).unwrap();
    assert_eq!(d.classes, vec!["setosa", "virginica"]);
    assert_eq!(d.dataset.labels, vec![0, 1, 0]);
    assert_eq!(d.dataset.sample(1), &[3.0, 4.5]);
    assert!(d.stated.contains("label column species"), "{}", d.stated);

    std::fs::write(&p, "7,1,2\n0,3,4\n7,5,6\n").unwrap();
    let opts = FileOptions {
        label_column: Some(LabelColumn::Index(0)),
        ..FileOptions::default()
    };
    let d = load_file(&p, &opts).unwrap();
    assert_eq!(
        (d.dataset.labels.clone(), d.dataset.num_classes),
        (vec![7, 0, 7], 8)
    );
    assert_eq!(d.dataset.sample(2), &[5.0, 6.0]);
    let named = FileOptions {
        label_column: Some(LabelColumn::Name("species".into())),
        header: Some(true),
        ..FileOptions::default()
    };
    assert!(err(&p, &named).contains("no column \"species\""));

    std::fs::write(&p, "1,2,0\n3,4\n").unwrap();
    let msg = err(&p, &FileOptions::default());
    assert!(
        msg.contains("t.csv") && msg.contains("line 2") && msg.contains("ragged row"),
        "{msg}"
    );
    std::fs::write(&p, "x,y,label\n1,2,0\n3,oops,1\n").unwrap();
    let msg = err(&p, &FileOptions::default());
    assert!(
        msg.contains("line 3, column 2: \"oops\" is not a number"),
        "{msg}"
    );
    std::fs::write(&p, "1,2,0\n3,4,-1\n").unwrap();
    assert!(err(&p, &FileOptions::default()).contains("label -1 of sample 1 is out of range"));
    std::fs::write(&p, "").unwrap();
    assert!(err(&p, &FileOptions::default()).contains("no rows"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn png(path: &Path, w: u32, h: u32, value: u8, rgb: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if rgb {
        image::RgbImage::from_pixel(w, h, image::Rgb([value, 0, 255]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_pixel(w, h, image::Luma([value]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn image_folders_map_classes_check_sizes_and_report_bad_files() {
    let dir = temp_dir("images");
    png(&dir.join("cat/a.png"), 4, 4, 255, false);
    png(&dir.join("cat/b.png"), 4, 4, 0, false);
    png(&dir.join("dog/c.png"), 4, 4, 51, false);
    std::fs::write(dir.join("dog/notes.txt"), "ignored").unwrap();
    let d = load_file(&dir, &FileOptions::default()).unwrap();
    assert_eq!(d.classes, vec!["cat", "dog"]);
    assert_eq!(d.dataset.labels, vec![0, 0, 1]);
    assert_eq!(d.dataset.sample_shape, vec![1, 4, 4]);
    assert_eq!(d.dataset.sample(2)[0], 51.0 / 255.0);
    assert!(d.stated.contains("grayscale"), "{}", d.stated);

    // An RGB image (a BMP) makes the set RGB; channels = 1 makes it grayscale again.
    png(&dir.join("dog/d.bmp"), 4, 4, 10, true);
    let d = load_file(&dir, &FileOptions::default()).unwrap();
    assert_eq!(d.dataset.sample_shape, vec![3, 4, 4]);
    assert_eq!(
        d.dataset.sample(3)[2 * 16],
        1.0,
        "blue plane of the RGB image"
    );
    let one = FileOptions {
        channels: Some(1),
        ..FileOptions::default()
    };
    assert_eq!(
        load_file(&dir, &one).unwrap().dataset.sample_shape,
        vec![1, 4, 4]
    );

    png(&dir.join("dog/e.png"), 6, 3, 10, false);
    let msg = err(&dir, &FileOptions::default());
    assert!(
        msg.contains("e.png") && msg.contains("give image_size"),
        "{msg}"
    );
    let sized = FileOptions {
        image_size: Some(8),
        ..FileOptions::default()
    };
    let d = load_file(&dir, &sized).unwrap();
    assert_eq!(
        (d.dataset.sample_shape.clone(), d.dataset.len()),
        (vec![3, 8, 8], 5)
    );

    std::fs::write(dir.join("dog/f.jpg"), b"not a jpeg").unwrap();
    let msg = err(&dir, &sized);
    assert!(
        msg.contains("f.jpg") && msg.contains("unreadable image"),
        "{msg}"
    );
    std::fs::remove_file(dir.join("dog/f.jpg")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let msg = err(&dir, &sized);
    assert!(
        msg.contains("empty") && msg.contains("empty class folder"),
        "{msg}"
    );
    let bad = FileOptions {
        channels: Some(2),
        ..FileOptions::default()
    };
    assert!(err(&dir, &bad).contains("must be 1 or 3"));
    let flat = temp_dir("images-flat");
    png(&flat.join("a.png"), 2, 2, 0, false);
    assert!(err(&flat, &FileOptions::default()).contains("no class folders"));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&flat).unwrap();
}

#[test]
fn idx_by_path_gzipped_or_not() {
    let dir = temp_dir("idx");
    let (x, y) = (
        dir.join("my-images-idx3-ubyte"),
        dir.join("my-labels-idx1-ubyte.gz"),
    );
    let arr = |dims: Vec<usize>, data: Vec<u8>| idx::IdxArray {
        dims,
        data: IdxData::U8(data),
    };
    std::fs::write(
        &x,
        idx::encode_idx(&arr(vec![2, 2, 2], vec![0, 255, 0, 255, 51, 51, 51, 51])),
    )
    .unwrap();
    idx::write_idx_gz(&y, &arr(vec![2], vec![1, 4])).unwrap();
    let opts = FileOptions {
        labels: Some(y.clone()),
        ..FileOptions::default()
    };
    let d = load_file(&x, &opts).unwrap();
    assert_eq!(
        (d.dataset.sample_shape.clone(), d.dataset.num_classes),
        (vec![1, 2, 2], 5)
    );
    assert_eq!(d.dataset.sample(0), &[0.0, 1.0, 0.0, 1.0]);
    idx::write_idx_gz(&y, &arr(vec![2, 1], vec![1, 4])).unwrap();
    assert!(err(&x, &opts).contains("labels must be a 1-d u8 array"));
    std::fs::write(&x, [0u8, 0, 8, 3, 0, 0, 0, 2]).unwrap();
    assert!(err(&x, &opts).contains("truncated"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn holdout_is_seeded_complementary_and_checked() {
    let features: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let ds = Dataset::new("d", vec![1], features, (0..10).map(|i| i % 2).collect(), 2).unwrap();
    let (train, held) = holdout(&ds, 0.2, 7).unwrap();
    assert_eq!((train.len(), held.len()), (8, 2));
    assert_eq!(holdout(&ds, 0.2, 7).unwrap(), (train.clone(), held.clone()));
    let mut all: Vec<f32> = train
        .features
        .iter()
        .chain(&held.features)
        .copied()
        .collect();
    all.sort_by(f32::total_cmp);
    assert_eq!(all, ds.features, "the parts cover the set once");
    assert!(
        train.features.windows(2).all(|w| w[0] < w[1]),
        "file order kept"
    );
    assert!(
        (0..20).any(|s| holdout(&ds, 0.2, s).unwrap().1 != held),
        "the seed matters"
    );
    for bad in [0.0, 1.0, -0.5, f64::NAN, 0.01] {
        assert!(holdout(&ds, bad, 1).is_err(), "{bad}");
    }
}
