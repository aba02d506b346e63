//! numpy's `.npy` arrays, alone or in an `.npz` archive, through `npyz`.

use std::io::Read;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};

use super::{
    Features, FileData, FileOptions, RawLabels, assemble, channels_first, malformed, sample_shape,
};
use crate::data::DataError;

fn io(path: &Path, e: std::io::Error) -> DataError {
    malformed(path, format!("not a numpy file: {e}"))
}

/// The dtype as numpy writes it (`<f4`, `|u1`), for messages.
fn dtype_name(dtype: &DType) -> String {
    dtype.descr().trim_matches('\'').to_string()
}

fn scalar(path: &Path, what: &str, dtype: &DType) -> Result<(TypeChar, u64), DataError> {
    match dtype {
        DType::Plain(t) => Ok((t.type_char(), t.size_field())),
        other => Err(malformed(
            path,
            format!("{what} have dtype {}, not a number type", dtype_name(other)),
        )),
    }
}

fn check_order<R: Read>(path: &Path, npy: &NpyFile<R>) -> Result<(), DataError> {
    if npy.order() == Order::Fortran {
        return Err(malformed(
            path,
            "Fortran-ordered array: save it with np.ascontiguousarray first",
        ));
    }
    Ok(())
}

/// Features: u8 are divided by 255 (images); floats and other integers are taken as stored.
pub(super) fn features<R: Read>(path: &Path, npy: NpyFile<R>) -> Result<Features, DataError> {
    check_order(path, &npy)?;
    let dims: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let (shape, move_channels) = sample_shape(path, &dims)?;
    let dtype = npy.dtype();
    let (tc, size) = scalar(path, "features", &dtype)?;
    let name = dtype_name(&dtype);
    let e = |e| io(path, e);
    let (values, scaling): (Vec<f32>, String) = match (tc, size) {
        (TypeChar::Uint, 1) => (
            npy.into_vec::<u8>()
                .map_err(e)?
                .into_iter()
                .map(|v| f32::from(v) / 255.0)
                .collect(),
            "u8 divided by 255".into(),
        ),
        (TypeChar::Float, 4) => (npy.into_vec::<f32>().map_err(e)?, "f32 as stored".into()),
        (TypeChar::Float, 8) => (
            npy.into_vec::<f64>()
                .map_err(e)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            "f64 narrowed to f32".into(),
        ),
        (TypeChar::Int, 1) => (
            cast(npy.into_vec::<i8>().map_err(e)?),
            format!("{name} as stored"),
        ),
        (TypeChar::Int, 2) => (
            cast(npy.into_vec::<i16>().map_err(e)?),
            format!("{name} as stored"),
        ),
        (TypeChar::Uint, 2) => (
            cast(npy.into_vec::<u16>().map_err(e)?),
            format!("{name} as stored"),
        ),
        (TypeChar::Int, 4) => (
            npy.into_vec::<i32>()
                .map_err(e)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            format!("{name} as stored"),
        ),
        (TypeChar::Int, 8) => (
            npy.into_vec::<i64>()
                .map_err(e)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            format!("{name} as stored"),
        ),
        _ => {
            return Err(malformed(
                path,
                format!("features have dtype {name}; expected uint8, an integer or a float type"),
            ));
        }
    };
    let values = if move_channels {
        channels_first(&values, &shape)
    } else {
        values
    };
    let scaling = if move_channels {
        format!("{scaling}, channels last moved first")
    } else {
        scaling
    };
    Ok(Features {
        shape,
        values,
        scaling,
    })
}

fn cast<T: Into<f32>>(v: Vec<T>) -> Vec<f32> {
    v.into_iter().map(Into::into).collect()
}

/// Labels: a 1-d array of integers (or `[N, 1]`), each at least 0.
pub(super) fn labels<R: Read>(path: &Path, npy: NpyFile<R>) -> Result<RawLabels, DataError> {
    check_order(path, &npy)?;
    let dims = npy.shape().to_vec();
    if !(dims.len() == 1 || (dims.len() == 2 && dims[1] == 1)) {
        return Err(malformed(
            path,
            format!("labels of shape {dims:?}: expected [N]"),
        ));
    }
    let dtype = npy.dtype();
    let (tc, size) = scalar(path, "labels", &dtype)?;
    let e = |e| io(path, e);
    let v: Vec<i64> = match (tc, size) {
        (TypeChar::Uint, 1) => npy
            .into_vec::<u8>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 1) => npy
            .into_vec::<i8>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 2) => npy
            .into_vec::<u16>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 2) => npy
            .into_vec::<i16>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 4) => npy
            .into_vec::<u32>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 4) => npy
            .into_vec::<i32>()
            .map_err(e)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 8) => npy.into_vec::<i64>().map_err(e)?,
        (TypeChar::Uint, 8) => npy
            .into_vec::<u64>()
            .map_err(e)?
            .into_iter()
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
            .collect(),
        _ => {
            return Err(malformed(
                path,
                format!(
                    "labels have dtype {}; expected integers",
                    dtype_name(&dtype)
                ),
            ));
        }
    };
    if let Some((i, l)) = v.iter().enumerate().find(|(_, l)| **l < 0) {
        return Err(malformed(
            path,
            format!("label {l} of sample {i} is out of range (below 0)"),
        ));
    }
    Ok(RawLabels::Numbers(
        v.into_iter().map(|l| l as u64).collect(),
    ))
}

fn open_npy(path: &Path) -> Result<NpyFile<std::io::BufReader<std::fs::File>>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    NpyFile::new(std::io::BufReader::new(file)).map_err(|e| io(path, e))
}

/// Features in `path`, labels in `labels`, both `.npy`.
pub(super) fn load_pair(path: &Path, labels_path: &Path) -> Result<FileData, DataError> {
    let x = features(path, open_npy(path)?)?;
    let y = labels(labels_path, open_npy(labels_path)?)?;
    assemble(path, labels_path, x, y)
}

/// Arrays `x` and `y` (or the names in `opts`) of the `.npz` file `path`.
pub(super) fn load_npz(path: &Path, opts: &FileOptions) -> Result<FileData, DataError> {
    let mut npz = npyz::npz::NpzArchive::open(path)
        .map_err(|e| malformed(path, format!("not an npz (zip) file: {e}")))?;
    let names: Vec<String> = npz.array_names().map(str::to_string).collect();
    let x_key = opts.x_key.as_deref().unwrap_or("x");
    let y_key = opts.y_key.as_deref().unwrap_or("y");
    let missing = |key: &str| {
        malformed(
            path,
            format!(
                "no array {key:?} (it holds {}); name them with x_key and y_key",
                names.join(", ")
            ),
        )
    };
    let x = {
        let npy = npz
            .by_name(x_key)
            .map_err(|e| io(path, e))?
            .ok_or_else(|| missing(x_key))?;
        features(path, npy)?
    };
    let y = {
        let npy = npz
            .by_name(y_key)
            .map_err(|e| io(path, e))?
            .ok_or_else(|| missing(y_key))?;
        labels(path, npy)?
    };
    assemble(path, path, x, y)
}
