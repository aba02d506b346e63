//! Where the catalog's files are looked for: the directory a coordinator is given (or
//! `GRAFT_DATA_DIR`), then the per-user directory `graft data fetch` fills by default, so
//! that fetched data is found without configuring anything.

use std::path::{Path, PathBuf};

/// The environment variable users set to point graft at the data directory.
pub const DATA_DIR_ENV: &str = "GRAFT_DATA_DIR";

/// The directory `graft data fetch` writes to by default: `GRAFT_DATA_DIR` when set, else
/// `graft/data` in the user's cache directory (`$XDG_CACHE_HOME` or `~/.cache` on Linux).
/// `None` only where the platform names no cache directory and the variable is unset.
pub fn user_data_dir() -> Option<PathBuf> {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => dirs::cache_dir().map(|c| c.join("graft").join("data")),
    }
}

/// The directories searched, in order, for a dataset whose files are not in `data_dir`:
/// `data_dir` itself, then [`user_data_dir`] when it is another directory.
pub fn search_path(data_dir: &Path) -> Vec<PathBuf> {
    let mut roots = vec![data_dir.to_path_buf()];
    if let Some(user) = user_data_dir()
        && user != data_dir
    {
        roots.push(user);
    }
    roots
}

/// The first of `roots` that holds `rel`, else the first root (whose path then goes into the
/// "not found" error, as the place the user configured).
pub(crate) fn root_holding<'a>(roots: &'a [PathBuf], rel: &str) -> &'a Path {
    roots
        .iter()
        .find(|r| r.join(rel).is_file())
        .or_else(|| roots.first())
        .map_or(Path::new("."), PathBuf::as_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_root_holding_the_file_wins_else_the_first() {
        let base = std::env::temp_dir().join(format!("graft-location-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        std::fs::create_dir_all(b.join("mnist")).unwrap();
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(b.join("mnist/x.gz"), b"x").unwrap();
        let roots = vec![a.clone(), b.clone()];
        assert_eq!(root_holding(&roots, "mnist/x.gz"), b.as_path());
        assert_eq!(root_holding(&roots, "mnist/y.gz"), a.as_path());
        std::fs::write(a.join("x.gz"), b"x").unwrap();
        assert_eq!(root_holding(&roots, "x.gz"), a.as_path());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
