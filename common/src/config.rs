//! Layered configuration: a TOML file, then `<PREFIX>_<KEY>` environment variables, then
//! flags (applied by each binary); unknown keys are errors, so a typo is never ignored.

use std::path::Path;

use serde::Serialize;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Reads `file` (if any), then environment variables `<prefix>_<KEY>`, into `T`.
///
/// # Errors
/// [`ConfigError`] naming the file or key that is wrong.
pub fn layered<T: serde::de::DeserializeOwned + Serialize + Default>(
    file: Option<&Path>,
    prefix: &str,
) -> Result<T, ConfigError> {
    let defaults =
        config::Config::try_from(&T::default()).map_err(|e| ConfigError(e.to_string()))?;
    let mut b = config::Config::builder().add_source(defaults);
    if let Some(f) = file {
        if !f.exists() {
            return Err(ConfigError(format!("{}: no such file", f.display())));
        }
        b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
    }
    b = b.add_source(
        config::Environment::with_prefix(prefix)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true),
    );
    let c = b.build().map_err(|e| ConfigError(e.to_string()))?;
    c.try_deserialize().map_err(|e| ConfigError(e.to_string()))
}
