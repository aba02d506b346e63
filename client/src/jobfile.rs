//! Job files: TOML read into a [`JobSpec`], every key overridable by an environment variable
//! `GRAFT_JOB_<KEY>` (nested keys joined by `__`, e.g. `GRAFT_JOB_OPTIMIZER__LR=0.05`).

use std::path::Path;

use graft_transfer::JobSpec;

/// Why a job file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JobFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads a job file with its environment overrides. Values are checked by the coordinator.
///
/// # Errors
/// [`JobFileError`] naming the file and the key that does not parse.
pub fn read(path: &Path) -> Result<JobSpec, JobFileError> {
    let err = |reason: String| JobFileError {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse(&text).map_err(err)
}

/// Parses job-file text with the environment overrides.
///
/// # Errors
/// The parse error, naming the key.
pub fn parse(text: &str) -> Result<JobSpec, String> {
    // Parse once with `toml` first: its errors name the line and the key precisely.
    // A plain table first: it holds integers as i64, as `config` below does, and names the
    // line and key of one that does not fit (`config` names none, and the spec takes u64).
    toml::from_str::<toml::Table>(text).map_err(|e| e.to_string().trim().to_string())?;
    toml::from_str::<JobSpec>(text).map_err(|e| e.to_string().trim().to_string())?;
    let c = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("GRAFT_JOB")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| e.to_string())?;
    c.try_deserialize()
        .map_err(|e| format!("after GRAFT_JOB_* overrides: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_files_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("examples/ exists") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|e| e == "toml") {
                let spec = read(&p).unwrap_or_else(|e| panic!("{e}"));
                spec.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "examples/ holds job files");
    }

    #[test]
    fn a_number_too_large_names_its_key() {
        let e = parse("name = \"x\"\n[evaluation]\ninterval_steps = 9223372036854775808\n")
            .expect_err("above i64");
        assert!(e.contains("interval_steps") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn typos_are_named() {
        let e = parse("name = \"x\"\nmodle = 1\n").expect_err("unknown key");
        assert!(e.contains("modle"), "{e}");
    }
}
