//! The IDX array format (MNIST's), gzip-wrapped, in which every dataset file but one is
//! stored; docs/data.md gives the byte layout.
//!
//! Parsing is strict: a file that is shorter or longer than its header says is rejected,
//! because a silently short dataset would train on garbage without anyone noticing.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::DataError;

const TYPE_U8: u8 = 0x08;
const TYPE_F32: u8 = 0x0D;

/// The elements of an IDX file; only the two element types the datasets use are supported.
#[derive(Debug, Clone, PartialEq)]
pub enum IdxData {
    /// Unsigned bytes (type code 0x08): pixels, counts and labels.
    U8(Vec<u8>),
    /// IEEE-754 single floats (type code 0x0D), big-endian on disk.
    F32(Vec<f32>),
}

impl IdxData {
    /// Element count, whatever the type, so callers can check it against the dims.
    pub fn len(&self) -> usize {
        match self {
            IdxData::U8(v) => v.len(),
            IdxData::F32(v) => v.len(),
        }
    }

    /// Whether there are no elements (a dataset of zero samples).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed IDX file: its dimensions (first = number of samples) and row-major elements.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimensions as stored; the element count is their product.
    pub dims: Vec<usize>,
    /// The elements, last dimension varying fastest.
    pub data: IdxData,
}

/// Parses an uncompressed IDX payload; `path` is only used to name the file in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    if bytes.len() < 4 {
        let mut found = [0u8; 4];
        found[..bytes.len()].copy_from_slice(bytes);
        if found[..bytes.len().min(2)].iter().any(|&b| b != 0) {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                found,
            });
        }
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 4,
            found: bytes.len(),
        });
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let elem_size = match (magic[0], magic[1], magic[2]) {
        (0, 0, TYPE_U8) => 1usize,
        (0, 0, TYPE_F32) => 4,
        _ => {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
    };
    let ndims = usize::from(magic[3]);
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let overflow = || DataError::Malformed {
        path: path.to_path_buf(),
        reason: format!("dimensions {dims:?} are too large"),
    };
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let total = count
        .checked_mul(elem_size)
        .and_then(|n| n.checked_add(header_len))
        .ok_or_else(overflow)?;
    if bytes.len() < total {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: total,
            found: bytes.len(),
        });
    }
    if bytes.len() > total {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "{} trailing bytes after the {count} elements of dimensions {dims:?}",
                bytes.len() - total
            ),
        });
    }
    let body = &bytes[header_len..];
    let data = if elem_size == 1 {
        IdxData::U8(body.to_vec())
    } else {
        IdxData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    };
    Ok(IdxArray { dims, data })
}

/// Reads and decompresses a whole single-member gzip file, so that a corrupt stream is
/// reported as a bad file rather than as an operating-system error.
pub(crate) fn read_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof => DataError::Malformed {
                path: path.to_path_buf(),
                reason: format!("not a valid gzip file: {e}"),
            },
            _ => DataError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    Ok(bytes)
}

/// Reads a gzip-compressed IDX file, the form every dataset file is shipped in.
pub fn read_idx_gz(path: &Path) -> Result<IdxArray, DataError> {
    parse_idx(&read_gz(path)?, path)
}

/// The IDX bytes of `arr`, so tests (here and in other crates) can make small data files.
///
/// Dimensions must fit in a u32, as the format requires; larger ones are written truncated.
pub fn encode_idx(arr: &IdxArray) -> Vec<u8> {
    let type_code = match arr.data {
        IdxData::U8(_) => TYPE_U8,
        IdxData::F32(_) => TYPE_F32,
    };
    let mut out = Vec::with_capacity(4 + 4 * arr.dims.len() + 4 * arr.data.len());
    out.extend_from_slice(&[0, 0, type_code, arr.dims.len() as u8]);
    for &d in &arr.dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    match &arr.data {
        IdxData::U8(v) => out.extend_from_slice(v),
        IdxData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
    }
    out
}

/// Writes `arr` as a gzip-compressed IDX file, the layout [`read_idx_gz`] expects.
pub fn write_idx_gz(path: &Path, arr: &IdxArray) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let mut enc = GzEncoder::new(file, Compression::default());
    enc.write_all(&encode_idx(arr)).map_err(io)?;
    enc.finish().map_err(io)?.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("test.idx")
    }

    fn u8_array() -> IdxArray {
        IdxArray {
            dims: vec![2, 2, 3],
            data: IdxData::U8((0..12).collect()),
        }
    }

    #[test]
    fn good_u8_file() {
        let bytes = [
            0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255, //
        ];
        let arr = parse_idx(&bytes, &p()).unwrap();
        assert_eq!(arr.dims, vec![2, 3]);
        assert_eq!(arr.data, IdxData::U8(vec![1, 2, 3, 4, 5, 255]));
        assert_eq!(
            parse_idx(&encode_idx(&u8_array()), &p()).unwrap(),
            u8_array()
        );
    }

    #[test]
    fn good_f32_file_is_big_endian() {
        let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 2];
        bytes.extend_from_slice(&[0x3F, 0x80, 0, 0]); // 1.0
        bytes.extend_from_slice(&[0xC0, 0x20, 0, 0]); // -2.5
        let arr = parse_idx(&bytes, &p()).unwrap();
        assert_eq!(arr.dims, vec![2]);
        assert_eq!(arr.data, IdxData::F32(vec![1.0, -2.5]));
        assert_eq!(encode_idx(&arr), bytes);
    }

    #[test]
    fn truncated_data() {
        let mut bytes = encode_idx(&u8_array());
        let full = bytes.len();
        bytes.pop();
        match parse_idx(&bytes, &p()) {
            Err(DataError::Truncated {
                expected, found, ..
            }) => {
                assert_eq!((expected, found), (full, full - 1));
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn truncated_header() {
        let bytes = encode_idx(&u8_array());
        match parse_idx(&bytes[..9], &p()) {
            Err(DataError::Truncated {
                expected, found, ..
            }) => {
                assert_eq!((expected, found), (16, 9));
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        assert!(matches!(
            parse_idx(&[0, 0], &p()),
            Err(DataError::Truncated {
                expected: 4,
                found: 2,
                ..
            })
        ));
    }

    #[test]
    fn wrong_magic() {
        let mut bytes = encode_idx(&u8_array());
        bytes[2] = 0x0B; // i16: not supported
        assert!(matches!(
            parse_idx(&bytes, &p()),
            Err(DataError::BadMagic {
                found: [0, 0, 0x0B, 3],
                ..
            })
        ));
        let err = parse_idx(b"PK\x03\x04rest", &p()).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { .. }));
        assert!(
            err.to_string().starts_with("test.idx: not an IDX file"),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes() {
        let mut bytes = encode_idx(&u8_array());
        bytes.push(0);
        let err = parse_idx(&bytes, &p()).unwrap_err();
        assert!(matches!(err, DataError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
    }

    #[test]
    fn dimension_overflow() {
        let bytes = [
            0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        assert!(matches!(
            parse_idx(&bytes, &p()),
            Err(DataError::Malformed { .. })
        ));
    }

    #[test]
    fn gzip_roundtrip_and_corrupt_gzip() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "graft-idx-test-{}-roundtrip.gz",
            std::process::id()
        ));
        let arr = IdxArray {
            dims: vec![3, 2],
            data: IdxData::F32(vec![0.0, 0.25, -1.0, 1e-7, 3.5, f32::MAX]),
        };
        write_idx_gz(&path, &arr).unwrap();
        assert_eq!(read_idx_gz(&path).unwrap(), arr);

        std::fs::write(&path, encode_idx(&arr)).unwrap(); // not gzip-wrapped
        let err = read_idx_gz(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, DataError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("graft-idx-test-"), "{err}");

        let missing = dir.join(format!("graft-idx-test-{}-missing.gz", std::process::id()));
        match read_idx_gz(&missing) {
            Err(DataError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
