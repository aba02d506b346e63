//! `graft data fetch --mirror`, against a small HTTP server in this test that serves the
//! originals of the data directory (`GRAFT_DATA_DIR` or `../shared/data`) under their paths,
//! honours `Range`, and damages the first answers for chosen files: the fetched directory
//! must hold the same payloads as the data directory, by SHA-256, and a damaged download
//! must be refused and fetched again, never converted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use graft_tests::{bin, data_dir, show};

/// What the server does to the first answers for a path.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// A byte in the middle flipped, full length.
    Flip,
    /// The full length announced, half the bytes sent, then the connection closed.
    Cut,
}

#[derive(Default)]
struct Served {
    /// Path → damage and how many answers to damage.
    damage: HashMap<String, (Damage, usize)>,
    /// Every request: path and the Range header's value, if any.
    seen: Vec<(String, Option<String>)>,
}

struct Mirror {
    url: String,
    state: Arc<Mutex<Served>>,
}

impl Mirror {
    /// Serves `root` on a free loopback port, in threads that end with the process.
    fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Served::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, st) = (root.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &root, &st);
                });
            }
        });
        Mirror { url, state }
    }

    fn damage(&self, path: &str, how: Damage, times: usize) {
        let mut s = self.state.lock().unwrap();
        s.damage.insert(path.to_string(), (how, times));
    }

    fn requests(&self, path: &str) -> Vec<Option<String>> {
        let s = self.state.lock().unwrap();
        s.seen
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn answer(conn: TcpStream, root: &Path, st: &Mutex<Served>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("range")
            {
                range = Some(v.trim().to_string());
            }
        }
        let damage = {
            let mut s = st.lock().unwrap();
            s.seen.push((path.clone(), range.clone()));
            match s.damage.get_mut(&path) {
                Some((how, n)) if *n > 0 => {
                    *n -= 1;
                    Some(*how)
                }
                _ => None,
            }
        };
        let Ok(mut body) = std::fs::read(root.join(&path)) else {
            out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        };
        let from = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok());
        let status = match from {
            Some(f) if f < body.len() => {
                body.drain(..f);
                format!(
                    "206 Partial Content\r\ncontent-range: bytes {f}-{}/{}",
                    f + body.len() - 1,
                    f + body.len()
                )
            }
            Some(_) => {
                out.write_all(b"HTTP/1.1 416 Range Not Satisfiable\r\ncontent-length: 0\r\n\r\n")?;
                continue;
            }
            None => "200 OK".to_string(),
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )?;
        match damage {
            Some(Damage::Flip) => {
                let mid = body.len() / 2;
                body[mid] ^= 0x55;
                out.write_all(&body)?;
            }
            Some(Damage::Cut) => {
                out.write_all(&body[..body.len() / 2])?;
                out.flush()?;
                return Ok(()); // closes the connection mid-body
            }
            None => out.write_all(&body)?,
        }
        out.flush()?;
    }
}

fn fetch(mirror: &Mirror, to: &Path, names: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(bin("graft"));
    cmd.args(["data", "fetch", "--mirror", &mirror.url, "--to"])
        .arg(to)
        .args(names)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY");
    cmd.output().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of what the catalog reads from a file: a gzip file's payload, else the file.
fn payload_sha(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        sha256(&out)
    } else {
        sha256(&bytes)
    }
}

fn files_under(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| format!("{sub}/{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const FOLDERS: [&str; 5] = [
    "mnist",
    "usps",
    "mnist_usps_jda",
    "office_caltech10_surf",
    "uci_optdigits",
];

#[test]
fn fetch_through_a_mirror_reproduces_the_data_directory_and_then_skips_it() {
    let data = data_dir();
    let mirror = Mirror::start(data.clone());
    let to = tempfile::tempdir().unwrap();
    let out = fetch(&mirror, to.path(), &[]);
    assert!(out.status.success(), "{}", show(&out));
    let mut n = 0;
    for sub in FOLDERS {
        let want = files_under(&data, sub);
        assert_eq!(files_under(to.path(), sub), want, "{sub}");
        for f in want {
            assert_eq!(
                payload_sha(&to.path().join(&f)),
                payload_sha(&data.join(&f)),
                "{f}"
            );
            n += 1;
        }
    }
    assert_eq!(n, 28, "every file of the data directory");
    assert!(
        !to.path().join(".graft-fetch").exists(),
        "staging left behind"
    );

    // A second fetch finds everything and downloads nothing.
    let before = mirror.state.lock().unwrap().seen.len();
    let out = fetch(&mirror, to.path(), &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        mirror.state.lock().unwrap().seen.len(),
        before,
        "{}",
        show(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("usps: already there"));
}

#[test]
fn a_damaged_download_is_refused_and_fetched_again_and_a_cut_one_resumed() {
    let data = data_dir();
    let mirror = Mirror::start(data.clone());
    mirror.damage("usps/usps.h5", Damage::Flip, 1);
    mirror.damage("uci_optdigits/digits.csv.gz", Damage::Cut, 1);
    mirror.damage("mnist/t10k-labels-idx1-ubyte.gz", Damage::Flip, 1);
    let to = tempfile::tempdir().unwrap();
    let out = fetch(&mirror, to.path(), &["usps", "optdigits", "mnist"]);
    assert!(out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("usps/usps.h5 from") && err.contains("SHA-256"),
        "{err}"
    );
    // The flipped file was fetched again from the start; the cut one resumed where it broke.
    assert_eq!(mirror.requests("usps/usps.h5"), vec![None, None]);
    let cut = mirror.requests("uci_optdigits/digits.csv.gz");
    assert_eq!(cut.len(), 2, "{cut:?}");
    let half = std::fs::metadata(data.join("uci_optdigits/digits.csv.gz"))
        .unwrap()
        .len()
        / 2;
    assert_eq!(cut[1].as_deref(), Some(format!("bytes={half}-").as_str()));
    for f in [
        "usps/usps.h5",
        "usps/usps-test-images-idx3-float.gz",
        "uci_optdigits/digits.csv.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
    ] {
        assert_eq!(
            payload_sha(&to.path().join(f)),
            payload_sha(&data.join(f)),
            "{f}"
        );
    }
}

#[test]
fn a_download_that_stays_damaged_fails_and_nothing_is_converted() {
    let data = data_dir();
    let mirror = Mirror::start(data);
    mirror.damage("usps/usps.h5", Damage::Flip, 100);
    let to = tempfile::tempdir().unwrap();
    let out = fetch(&mirror, to.path(), &["usps"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gave up after 3 attempts") && err.contains("SHA-256"),
        "{err}"
    );
    assert_eq!(mirror.requests("usps/usps.h5").len(), 3);
    assert!(
        files_under(to.path(), "usps").is_empty(),
        "a converted file was written"
    );
    let partial = to.path().join(".graft-fetch/usps/usps.h5.part");
    assert!(!partial.exists(), "damaged bytes were kept for resuming");

    let out = fetch(&mirror, to.path(), &["cifar10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown dataset \"cifar10\""),
        "{}",
        show(&out)
    );
}
