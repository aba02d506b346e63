//! CSV (and TSV) tables through the `csv` crate: one sample per row, a label column, the
//! rest numbers.

use std::io::Read;
use std::path::Path;

use super::{Features, FileData, FileOptions, LabelColumn, RawLabels, assemble, malformed};
use crate::data::DataError;

fn reader(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    Ok(if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

pub(super) fn load_csv(path: &Path, opts: &FileOptions) -> Result<FileData, DataError> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let tsv = name.trim_end_matches(".gz").ends_with(".tsv");
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .delimiter(if tsv { b'\t' } else { b',' })
        .trim(csv::Trim::All)
        .from_reader(reader(path)?);
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e
                .position()
                .map_or(String::new(), |p| format!("line {}: ", p.line()));
            match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => malformed(
                    path,
                    format!(
                        "{line}ragged row: {len} fields where the first row has {expected_len}"
                    ),
                ),
                _ => malformed(path, format!("{line}{e}")),
            }
        })?;
        rows.push(rec);
    }
    let Some(first) = rows.first() else {
        return Err(malformed(path, "no rows"));
    };
    let width = first.len();
    if width < 2 {
        return Err(malformed(
            path,
            "needs a label column and at least one feature column",
        ));
    }
    let is_number = |s: &str| s.parse::<f64>().is_ok();
    let header = match (&opts.header, &opts.label_column) {
        (Some(h), _) => *h,
        (None, Some(LabelColumn::Name(_))) => true,
        (None, _) => {
            let label = match &opts.label_column {
                Some(LabelColumn::Index(i)) => *i,
                _ => width - 1,
            };
            first
                .iter()
                .enumerate()
                .any(|(j, f)| j != label && !is_number(f))
        }
    };
    let label = match &opts.label_column {
        None => width - 1,
        Some(LabelColumn::Index(i)) if *i < width => *i,
        Some(LabelColumn::Index(i)) => {
            return Err(malformed(
                path,
                format!("label column {i} is past the {width} columns"),
            ));
        }
        Some(LabelColumn::Name(n)) => {
            if !header {
                return Err(malformed(
                    path,
                    format!("label column {n:?} named, but header = false"),
                ));
            }
            first.iter().position(|h| h == n).ok_or_else(|| {
                malformed(
                    path,
                    format!(
                        "no column {n:?} in the header ({})",
                        first.iter().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?
        }
    };
    let body = &rows[usize::from(header)..];
    let mut values = Vec::with_capacity(body.len() * (width - 1));
    let mut names = Vec::with_capacity(body.len());
    for (r, rec) in body.iter().enumerate() {
        let line = r + 1 + usize::from(header);
        for (j, field) in rec.iter().enumerate() {
            if j == label {
                names.push(field.to_string());
            } else {
                let v: f32 = field.parse().map_err(|_| {
                    malformed(
                        path,
                        format!("line {line}, column {}: {field:?} is not a number", j + 1),
                    )
                })?;
                values.push(v);
            }
        }
    }
    // Whole numbers are class numbers; anything else names classes.
    let raw = if names.iter().all(|n| n.parse::<u64>().is_ok()) {
        RawLabels::Numbers(
            names
                .iter()
                .map(|n| n.parse::<u64>().unwrap_or(0))
                .collect(),
        )
    } else if let Some((i, n)) = names
        .iter()
        .enumerate()
        .find(|(_, n)| n.parse::<i64>().is_ok_and(|v| v < 0))
    {
        return Err(malformed(
            path,
            format!("label {n} of sample {i} is out of range (below 0)"),
        ));
    } else {
        RawLabels::Names(names)
    };
    let scaling = if header {
        format!(
            "numbers as stored, label column {}",
            first.get(label).unwrap_or_default()
        )
    } else {
        format!("numbers as stored, label column {}", label + 1)
    };
    assemble(
        path,
        path,
        Features {
            shape: vec![width - 1],
            values,
            scaling,
        },
        raw,
    )
}
