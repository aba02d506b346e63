//! The Python side of the tests: the pinned packages of `scripts/python-tools.sh` in the
//! repository's `.venv`, installed by the test itself on first use.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `.venv/bin/python` with torch, grpcio-tools, safetensors and tensorboard, after
/// `scripts/python-tools.sh` (which does nothing when the pins are installed already).
pub fn python() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let out = Command::new(repo().join("scripts/python-tools.sh"))
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/python-tools.sh");
            assert!(
                out.status.success(),
                "scripts/python-tools.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            repo().join(".venv/bin/python")
        })
        .clone()
}

/// Runs the Python of [`python`] with `args`, from the repository's root.
pub fn run(args: &[&str]) -> Output {
    Command::new(python())
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("run python")
}
