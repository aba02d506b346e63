//! Turning the published originals into the IDX files the catalog reads, exactly as
//! docs/data.md describes the derived files: no value changes but the 0-based labels and the
//! narrowing of the JDA USPS floats. Every result is checked against its pinned payload
//! SHA-256 by the caller before it is written.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use graft_transfer::data::idx::{IdxArray, IdxData, encode_idx};

use super::FetchError;
use super::sources::Conversion;

/// A converted file: where it goes under the data directory and its uncompressed content.
pub struct Payload {
    pub path: String,
    pub bytes: Vec<u8>,
}

fn bad(path: &Path, reason: impl Into<String>) -> FetchError {
    FetchError::Convert {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The gzip file graft writes around a payload: level 9, no name, no time, "unknown" OS,
/// so that the same payload always gives the same file.
pub fn gzip(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .operating_system(255)
        .write(Vec::new(), Compression::new(9));
    enc.write_all(payload)?;
    enc.finish()
}

/// The decompressed content of a gzip file.
pub fn gunzip(path: &Path) -> Result<Vec<u8>, FetchError> {
    let file = std::fs::File::open(path).map_err(|e| FetchError::io(path, e))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("not a gzip file: {e}")))?;
    Ok(out)
}

fn u8_idx(dims: Vec<usize>, data: Vec<u8>) -> Vec<u8> {
    encode_idx(&IdxArray {
        dims,
        data: IdxData::U8(data),
    })
}

fn f32_idx(dims: Vec<usize>, data: Vec<f32>) -> Vec<u8> {
    encode_idx(&IdxArray {
        dims,
        data: IdxData::F32(data),
    })
}

/// Class numbers stored from `first` (1 in the MATLAB files) as 0-based bytes below 10.
fn labels<T: Copy + Into<f64>>(
    path: &Path,
    what: &str,
    values: &[T],
    first: f64,
) -> Result<Vec<u8>, FetchError> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = v.into() - first;
            if k.fract() == 0.0 && (0.0..10.0).contains(&k) {
                Ok(k as u8)
            } else {
                Err(bad(
                    path,
                    format!(
                        "{what}[{i}] = {}, not a class {first}..{}",
                        v.into(),
                        first + 9.0
                    ),
                ))
            }
        })
        .collect()
}

/// Runs `conversion` on a source's checked originals: each its path under the data
/// directory and the file where it lies now, in the source's order.
pub fn convert(
    conversion: Conversion,
    originals: &[(&str, PathBuf)],
) -> Result<Vec<Payload>, FetchError> {
    let Some((_, first)) = originals.first() else {
        return Ok(Vec::new());
    };
    match conversion {
        Conversion::None => Ok(Vec::new()),
        Conversion::Regzip => originals
            .iter()
            .map(|(rel, file)| {
                Ok(Payload {
                    path: (*rel).to_string(),
                    bytes: gunzip(file)?,
                })
            })
            .collect(),
        Conversion::UspsH5 => usps(first),
        Conversion::JdaMat => jda(first),
        Conversion::OfficeMat(stem) => office(first, stem),
    }
}

fn h5_err(path: &Path, e: impl std::fmt::Display) -> FetchError {
    bad(path, format!("HDF5: {e}"))
}

/// Reads a dataset of an HDF5 file with its shape.
fn h5_read<T: rust_hdf5::H5Type>(
    file: &rust_hdf5::H5File,
    path: &Path,
    name: &str,
) -> Result<(Vec<usize>, Vec<T>), FetchError> {
    let ds = file
        .dataset(name)
        .map_err(|e| h5_err(path, format!("{name}: {e}")))?;
    let shape = ds.shape();
    let data = ds
        .read_raw::<T>()
        .map_err(|e| h5_err(path, format!("{name}: {e}")))?;
    if shape.iter().product::<usize>() != data.len() {
        return Err(bad(
            path,
            format!("{name}: shape {shape:?} but {} values", data.len()),
        ));
    }
    Ok((shape, data))
}

fn usps(path: &Path) -> Result<Vec<Payload>, FetchError> {
    let file = rust_hdf5::H5File::open(path).map_err(|e| h5_err(path, e))?;
    let mut out = Vec::new();
    for split in ["train", "test"] {
        let (shape, data) = h5_read::<f32>(&file, path, &format!("{split}/data"))?;
        let (tshape, target) = h5_read::<i32>(&file, path, &format!("{split}/target"))?;
        let n = match shape.as_slice() {
            [n, 256] if tshape == [*n] => *n,
            _ => {
                return Err(bad(
                    path,
                    format!(
                        "/{split}: data {shape:?} and target {tshape:?}, expected [N, 256] and [N]"
                    ),
                ));
            }
        };
        let target: Vec<f64> = target.iter().map(|&t| f64::from(t)).collect();
        out.push(Payload {
            path: format!("usps/usps-{split}-images-idx3-float.gz"),
            bytes: f32_idx(vec![n, 16, 16], data),
        });
        out.push(Payload {
            path: format!("usps/usps-{split}-labels-idx1-ubyte.gz"),
            bytes: u8_idx(
                vec![n],
                labels(path, &format!("/{split}/target"), &target, 0.0)?,
            ),
        });
    }
    Ok(out)
}

fn jda(path: &Path) -> Result<Vec<Payload>, FetchError> {
    let file = rust_hdf5::H5File::open(path).map_err(|e| h5_err(path, e))?;
    let mut out = Vec::new();
    for (x, y, stem, n) in [
        ("Xs", "Ys", "jda-mnist2000", 2000),
        ("Xt", "Yt", "jda-usps1800", 1800),
    ] {
        let (xs, xv) = h5_read::<f64>(&file, path, x)?;
        let (ys, yv) = h5_read::<f64>(&file, path, y)?;
        if xs != [n, 256] || ys != [1, n] {
            return Err(bad(
                path,
                format!("{x} {xs:?} and {y} {ys:?}, expected [{n}, 256] and [1, {n}]"),
            ));
        }
        let images = if x == "Xs" {
            // MNIST is stored as k/256: the bytes k give it back exactly.
            let bytes = xv
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let k = v * 256.0;
                    if k.fract() == 0.0 && (0.0..256.0).contains(&k) {
                        Ok(k as u8)
                    } else {
                        Err(bad(
                            path,
                            format!("{x} value {i} is {v}, not a multiple of 1/256 below 1"),
                        ))
                    }
                })
                .collect::<Result<Vec<u8>, _>>()?;
            (
                format!("mnist_usps_jda/{stem}-images-idx3-ubyte.gz"),
                u8_idx(vec![n, 16, 16], bytes),
            )
        } else {
            let floats = xv.iter().map(|&v| v as f32).collect();
            (
                format!("mnist_usps_jda/{stem}-images-idx3-float.gz"),
                f32_idx(vec![n, 16, 16], floats),
            )
        };
        out.push(Payload {
            path: images.0,
            bytes: images.1,
        });
        out.push(Payload {
            path: format!("mnist_usps_jda/{stem}-labels-idx1-ubyte.gz"),
            bytes: u8_idx(vec![n], labels(path, y, &yv, 1.0)?),
        });
    }
    Ok(out)
}

/// A MATLAB numeric array's values as f64, in MATLAB's column-major order.
fn mat_values(
    path: &Path,
    name: &str,
    data: &matfile::NumericData,
) -> Result<Vec<f64>, FetchError> {
    use matfile::NumericData as N;
    fn f<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
        v.iter().map(|&x| x.into()).collect()
    }
    Ok(match data {
        N::Double { real, .. } => real.clone(),
        N::Single { real, .. } => f(real),
        N::UInt8 { real, .. } => f(real),
        N::Int8 { real, .. } => f(real),
        N::UInt16 { real, .. } => f(real),
        N::Int16 { real, .. } => f(real),
        N::UInt32 { real, .. } => f(real),
        N::Int32 { real, .. } => f(real),
        _ => {
            return Err(bad(
                path,
                format!("{name}: 64-bit integers are not expected"),
            ));
        }
    })
}

fn office(path: &Path, stem: &str) -> Result<Vec<Payload>, FetchError> {
    let file = std::fs::File::open(path).map_err(|e| FetchError::io(path, e))?;
    let mat = matfile::MatFile::parse(std::io::BufReader::new(file))
        .map_err(|e| bad(path, format!("MATLAB file: {e}")))?;
    let array = |name: &str| {
        mat.find_by_name(name)
            .ok_or_else(|| bad(path, format!("no variable {name:?}")))
    };
    let (fts, lab) = (array("fts")?, array("labels")?);
    let (n, d) = match fts.size().as_slice() {
        [n, 800] if lab.size().as_slice() == [*n, 1] => (*n, 800),
        other => {
            return Err(bad(
                path,
                format!(
                    "fts {other:?} and labels {:?}, expected [N, 800] and [N, 1]",
                    lab.size()
                ),
            ));
        }
    };
    let values = mat_values(path, "fts", fts.data())?;
    if values.len() != n * d {
        return Err(bad(
            path,
            format!("fts holds {} values for {n} x {d}", values.len()),
        ));
    }
    // MATLAB stores columns one after the other; the IDX file holds one sample per row.
    let mut counts = Vec::with_capacity(n * d);
    for i in 0..n {
        for j in 0..d {
            let v = values[j * n + i];
            if v.fract() != 0.0 || !(0.0..256.0).contains(&v) {
                return Err(bad(
                    path,
                    format!("fts({}, {}) = {v}, not a count 0..255", i + 1, j + 1),
                ));
            }
            counts.push(v as u8);
        }
    }
    let labels_v = mat_values(path, "labels", lab.data())?;
    if labels_v.len() != n {
        return Err(bad(
            path,
            format!("labels holds {} values for {n} samples", labels_v.len()),
        ));
    }
    Ok(vec![
        Payload {
            path: format!("office_caltech10_surf/{stem}-surf800-idx2-ubyte.gz"),
            bytes: u8_idx(vec![n, d], counts),
        },
        Payload {
            path: format!("office_caltech10_surf/{stem}-labels-idx1-ubyte.gz"),
            bytes: u8_idx(vec![n], labels(path, "labels", &labels_v, 1.0)?),
        },
    ])
}
