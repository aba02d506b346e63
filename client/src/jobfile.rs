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

/// Makes the relative dataset paths of a job file absolute from the folder it is in (`base`),
/// for `graft local`: its coordinator runs here, and a user names their files as they see
/// them from the job file, as compose files do. A job sent by `graft submit` keeps its paths,
/// which the coordinator reads under its data directory.
pub fn resolve_paths(spec: &mut JobSpec, base: &Path) {
    // `join` keeps an absolute path as it is.
    let absolute = |p: &mut String| *p = base.join(p.as_str()).display().to_string();
    for d in &mut spec.datasets {
        if let Some(p) = &mut d.path {
            absolute(p);
        }
        if let Some(p) = &mut d.labels {
            absolute(p);
        }
    }
}

/// The folder of a job file, absolute, for [`resolve_paths`].
///
/// # Errors
/// When the working directory cannot be read.
pub fn folder_of(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = path.parent().unwrap_or(Path::new(""));
    std::path::absolute(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
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
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
        let mut n = 0;
        let entries = std::fs::read_dir(dir)
            .expect("examples/ exists")
            .chain(std::fs::read_dir(dir.join("own-data")).expect("examples/own-data/ exists"));
        for entry in entries {
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
    fn local_paths_are_read_from_the_job_files_folder_and_absolute_ones_kept() {
        let mut spec = parse(
            r#"name = "x"
[model]
kind = "mlp"
hidden = [4]
[method]
kind = "supervised"
[[datasets]]
path = "data/x.npy"
format = "npy-pair"
labels = "data/y.npy"
role = "source"
[[datasets]]
path = "/srv/eval.csv"
label_column = 2
role = "eval"
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 8
steps = 1
"#,
        )
        .expect("parses");
        resolve_paths(&mut spec, Path::new("/home/me/jobs"));
        assert_eq!(
            spec.datasets[0].path.as_deref(),
            Some("/home/me/jobs/data/x.npy")
        );
        assert_eq!(
            spec.datasets[0].labels.as_deref(),
            Some("/home/me/jobs/data/y.npy")
        );
        assert_eq!(spec.datasets[1].path.as_deref(), Some("/srv/eval.csv"));
        assert_eq!(
            spec.datasets[1].label_column,
            Some(graft_transfer::spec::ColumnRef::Index(2))
        );
        assert_eq!(
            folder_of(Path::new("job.toml")).expect("cwd"),
            std::path::absolute(".").expect("cwd")
        );
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
