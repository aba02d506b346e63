//! `graft data fetch` and `graft data list`: the catalog's datasets downloaded from their
//! pinned public sources, checked by SHA-256, and converted into the files the catalog reads.
//!
//! Nothing unchecked is ever converted or put in place: each download is hashed first (a
//! damaged or truncated one is dropped and fetched again), each converted file is hashed
//! against the payload pinned in [`sources`] before it is written, and files are written
//! under a temporary name and renamed, so an interrupted fetch leaves no half file where the
//! catalog looks. Partial downloads wait in `<dir>/.graft-fetch/` and are resumed.

pub mod convert;
mod download;
pub mod sources;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use graft_transfer::data::files::{self, FileFormat, FileOptions, LabelColumn};
use graft_transfer::data::{DataError, catalog, location};
use sources::{Check, Original, SOURCES, Source, Upstream};

/// Where partial downloads and verified originals wait, under the target directory.
pub const STAGING: &str = ".graft-fetch";

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A local file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A request failed or its body was cut short.
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A download does not hash to its pin.
    #[error("{what}: SHA-256 {found}, expected {expected}")]
    Mismatch {
        /// The file (and from where).
        what: String,
        /// Its digest.
        found: String,
        /// The pinned one.
        expected: String,
    },
    /// Every attempt at a file failed.
    #[error("{file}: gave up after {attempts} attempts; the last: {last}")]
    GaveUp {
        /// The file under the data directory.
        file: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<FetchError>,
    },
    /// An original does not hold what its conversion expects.
    #[error("{}: {reason}", .path.display())]
    Convert {
        /// The original.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name that is neither a dataset nor a source.
    #[error("unknown dataset {0:?}: `graft data list` shows the names")]
    Unknown(String),
    /// No directory was given and none could be worked out.
    #[error("no data directory: set GRAFT_DATA_DIR or pass --to")]
    NoDir,
}

impl FetchError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        FetchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What `graft data fetch` was asked.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Dataset or source names; none: all.
    pub names: Vec<String>,
    /// The data directory written to.
    pub to: PathBuf,
    /// A base URL serving the originals under their data-directory paths
    /// (`<mirror>/usps/usps.h5`), instead of the upstream URLs.
    pub mirror: Option<String>,
    /// Attempts per file before giving up.
    pub attempts: u32,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// What happened to one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every file was there with the right checksum.
    Present,
    /// It was downloaded (and converted).
    Fetched,
}

/// The directory `graft data fetch` writes to by default (`GRAFT_DATA_DIR`, else the
/// per-user cache), which the coordinator also searches.
pub fn default_dir() -> Result<PathBuf, FetchError> {
    location::user_data_dir().ok_or(FetchError::NoDir)
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a reader's bytes.
fn sha256_of(mut r: impl Read, path: &Path) -> Result<String, FetchError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hex(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FetchError::io(path, e)),
        }
    }
}

/// The digest `check` compares: of the file, or of its gzip payload. A file that does not
/// decompress gets `None`, which matches no pin.
fn digest_for(path: &Path, check: Check) -> Result<Option<String>, FetchError> {
    let file = std::fs::File::open(path).map_err(|e| FetchError::io(path, e))?;
    match check {
        Check::Sha256(_) => sha256_of(std::io::BufReader::new(file), path).map(Some),
        Check::GzipPayload(_) => {
            match sha256_of(
                flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
                path,
            ) {
                Ok(d) => Ok(Some(d)),
                Err(FetchError::Io { source, .. })
                    if source.kind() != std::io::ErrorKind::NotFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Whether `path` exists and passes `check`.
fn holds(path: &Path, check: Check) -> Result<bool, FetchError> {
    if !path.is_file() {
        return Ok(false);
    }
    Ok(digest_for(path, check)?.as_deref() == Some(check.digest()))
}

/// Checks `path` against `check`, naming `what` when it fails.
fn verify(path: &Path, check: Check, what: &str) -> Result<(), FetchError> {
    match digest_for(path, check)? {
        Some(d) if d == check.digest() => Ok(()),
        found => Err(FetchError::Mismatch {
            what: what.to_string(),
            found: found.unwrap_or_else(|| "(not a gzip file)".into()),
            expected: check.digest().to_string(),
        }),
    }
}

/// Whether every file of `src` is in `dir` with its pinned checksum.
fn complete(src: &Source, dir: &Path) -> Result<bool, FetchError> {
    for o in src.originals.iter().filter(|o| o.keep) {
        if !holds(&dir.join(o.path), o.check)? {
            return Ok(false);
        }
    }
    for d in src.derived {
        if !holds(&dir.join(d.path), Check::GzipPayload(d.payload_sha256))? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn parent_dir(path: &Path) -> Result<(), FetchError> {
    match path.parent() {
        Some(p) => std::fs::create_dir_all(p).map_err(|e| FetchError::io(p, e)),
        None => Ok(()),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `bytes` at `path` by way of a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    parent_dir(path)?;
    let tmp = with_suffix(path, ".tmp");
    std::fs::write(&tmp, bytes).map_err(|e| FetchError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FetchError::io(path, e))
}

/// Downloads `url` into `dest` until it passes `check`: an interrupted body is resumed on
/// the next attempt, a body that fails the check is dropped and fetched again.
fn fetch_checked(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    check: Check,
    label: &str,
    opts: &FetchOptions,
) -> Result<(), FetchError> {
    let part = with_suffix(dest, ".part");
    parent_dir(&part)?;
    let attempts = opts.attempts.max(1);
    let mut last = None;
    for attempt in 1..=attempts {
        let what = format!("{label} from {url}");
        let result =
            download::download(agent, url, &part, label, opts.progress).and_then(
                |()| match verify(&part, check, &what) {
                    Err(e @ FetchError::Mismatch { .. }) => {
                        // Never resume from bytes that hashed wrong.
                        let _ = std::fs::remove_file(&part);
                        Err(e)
                    }
                    other => other,
                },
            );
        match result {
            Ok(()) => {
                return std::fs::rename(&part, dest).map_err(|e| FetchError::io(dest, e));
            }
            Err(e) => {
                if attempt < attempts {
                    eprintln!(
                        "graft: {e}; refused, trying again ({} of {attempts})",
                        attempt + 1
                    );
                }
                last = Some(e);
            }
        }
    }
    Err(FetchError::GaveUp {
        file: label.to_string(),
        attempts,
        last: Box::new(last.unwrap_or(FetchError::NoDir)),
    })
}

/// Gets one original into the staging area (or finds it already in place), checked.
fn obtain(
    agent: &ureq::Agent,
    o: &Original,
    to: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let placed = to.join(o.path);
    if o.keep && holds(&placed, o.check)? {
        return Ok(placed);
    }
    let staged = to.join(STAGING).join(o.path);
    if holds(&staged, o.check)? {
        return Ok(staged);
    }
    match (&opts.mirror, o.upstream) {
        (Some(m), _) => {
            let url = format!("{}/{}", m.trim_end_matches('/'), o.path);
            fetch_checked(agent, &url, &staged, o.check, o.path, opts)?;
        }
        (None, Upstream::File(url)) => fetch_checked(agent, url, &staged, o.check, o.path, opts)?,
        (
            None,
            Upstream::ZipMember {
                url,
                sha256,
                member,
            },
        ) => {
            let name = url.rsplit('/').next().unwrap_or("archive.zip");
            let archive = to.join(STAGING).join(name);
            if !holds(&archive, Check::Sha256(sha256))? {
                fetch_checked(agent, url, &archive, Check::Sha256(sha256), name, opts)?;
            }
            extract_member(&archive, member, &staged)?;
            verify(
                &staged,
                o.check,
                &format!("{} (member {member} of {name})", o.path),
            )?;
        }
    }
    Ok(staged)
}

/// Copies `member` of the zip file `archive` to `dest`.
pub fn extract_member(archive: &Path, member: &str, dest: &Path) -> Result<(), FetchError> {
    let bad = |reason: String| FetchError::Convert {
        path: archive.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(archive).map_err(|e| FetchError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip file: {e}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| bad(format!("member {member}: {e}")))?;
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("member {member}: {e}")))?;
    write_atomic(dest, &bytes)
}

/// Fetches one source into `opts.to`.
fn fetch_source(
    agent: &ureq::Agent,
    src: &Source,
    opts: &FetchOptions,
) -> Result<Outcome, FetchError> {
    let to = &opts.to;
    if complete(src, to)? {
        return Ok(Outcome::Present);
    }
    let mut got = Vec::new();
    for o in src.originals {
        got.push((o, obtain(agent, o, to, opts)?));
    }
    let inputs: Vec<(&str, PathBuf)> = got.iter().map(|(o, p)| (o.path, p.clone())).collect();
    let payloads = convert::convert(src.conversion, &inputs)?;
    // Hash everything before writing anything.
    let mut files = Vec::new();
    for d in src.derived {
        let p = payloads
            .iter()
            .find(|p| p.path == d.path)
            .ok_or_else(|| FetchError::Convert {
                path: to.join(d.path),
                reason: "the conversion did not produce it".into(),
            })?;
        let found = hex(Sha256::digest(&p.bytes));
        if found != d.payload_sha256 {
            return Err(FetchError::Mismatch {
                what: format!("{} as converted", d.path),
                found,
                expected: d.payload_sha256.to_string(),
            });
        }
        let gz = convert::gzip(&p.bytes).map_err(|e| FetchError::io(&to.join(d.path), e))?;
        files.push((to.join(d.path), gz));
    }
    for (path, gz) in &files {
        write_atomic(path, gz)?;
    }
    for (o, staged) in &got {
        let placed = to.join(o.path);
        if o.keep {
            if *staged != placed {
                parent_dir(&placed)?;
                std::fs::rename(staged, &placed).map_err(|e| FetchError::io(&placed, e))?;
            }
        } else if staged.starts_with(to.join(STAGING)) {
            let _ = std::fs::remove_file(staged);
        }
    }
    Ok(Outcome::Fetched)
}

/// Fetches the sources of `opts.names` (all when empty), each only if something of it is
/// missing or wrong, and says what happened to each. A source that fails does not stop
/// the others; the first error is returned after all were tried.
///
/// # Errors
/// [`FetchError::Unknown`] for a name no source provides (nothing is fetched then), else
/// the first source's failure.
pub fn fetch(opts: &FetchOptions) -> Result<Vec<(&'static str, Outcome)>, FetchError> {
    let selected = sources::select(&opts.names).map_err(FetchError::Unknown)?;
    std::fs::create_dir_all(&opts.to).map_err(|e| FetchError::io(&opts.to, e))?;
    let agent = download::agent();
    let mut done = Vec::new();
    let mut first_err = None;
    for src in selected {
        match fetch_source(&agent, src, opts) {
            Ok(o) => {
                eprintln!(
                    "graft: {}: {}",
                    src.name,
                    match o {
                        Outcome::Present => "already there",
                        Outcome::Fetched => "fetched and checked",
                    }
                );
                done.push((src.name, o));
            }
            Err(e) => {
                eprintln!("graft: {}: {e}", src.name);
                first_err.get_or_insert(e);
            }
        }
    }
    let staging = opts.to.join(STAGING);
    if first_err.is_none() {
        // Only a leftover archive can remain; a later fetch downloads it again if needed.
        let _ = std::fs::remove_dir_all(&staging);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// The catalog as `graft data list` prints it: every dataset, whether its files are in one
/// of `roots` (the first that holds them), and where it is fetched from.
pub fn list(roots: &[PathBuf]) -> String {
    let mut out = format!(
        "Looked in: {}\n",
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for name in catalog::KNOWN {
        let Some(src) = SOURCES.iter().find(|s| s.datasets.contains(name)) else {
            out.push_str(&format!("{name:<17} generated, no files\n"));
            continue;
        };
        let files: Vec<&str> = src
            .derived
            .iter()
            .map(|d| d.path)
            .chain(src.originals.iter().filter(|o| o.keep).map(|o| o.path))
            .collect();
        let at = roots
            .iter()
            .find(|r| files.iter().all(|f| r.join(f).is_file()));
        let state = match at {
            Some(r) => format!("present in {}", r.display()),
            None => format!("missing: graft data fetch {name}"),
        };
        out.push_str(&format!("{name:<17} {state}\n{:<17} {}\n", "", src.note));
        for o in src.originals {
            out.push_str(&format!("{:<17} {} <- {}\n", "", o.path, o.upstream.url()));
        }
    }
    out
}

/// The `label_column` of the command line: a 0-based index when it is a number, else a
/// header name.
pub fn label_column(arg: &str) -> LabelColumn {
    arg.parse()
        .map_or_else(|_| LabelColumn::Name(arg.to_string()), LabelColumn::Index)
}

/// The format of the command line's `--format`.
pub fn format(arg: &str) -> Result<FileFormat, String> {
    FileFormat::parse(arg).ok_or_else(|| {
        format!(
            "unknown format {arg:?} (known: {})",
            files::FORMATS.join(", ")
        )
    })
}

/// What `graft data show` prints for a dataset file: the reader's statement, then the
/// classes, one per line with their label and sample count.
pub fn show(path: &Path, opts: &FileOptions) -> Result<String, DataError> {
    let d = files::load_file(path, opts)?;
    let counts = d.dataset.class_counts();
    let mut out = format!("{}\n", d.stated);
    for (k, name) in d.classes.iter().enumerate() {
        out.push_str(&format!(
            "{k:>5}  {name}  ({} samples)\n",
            counts.get(k).copied().unwrap_or(0)
        ));
    }
    Ok(out)
}
