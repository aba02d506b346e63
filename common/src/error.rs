//! The shared crate's errors.

/// What can go wrong in the shared helpers.
#[derive(Debug, thiserror::Error)]
pub enum CommonError {
    /// File I/O failed; the path names the file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A TLS certificate, key or URL that cannot be used.
    #[error("{0}")]
    Tls(String),
    /// A token that cannot travel in a header.
    #[error("token must be printable ASCII")]
    TokenNotAscii,
}
