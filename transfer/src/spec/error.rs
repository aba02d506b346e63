//! Validation errors: which field, and what is wrong with it.

/// A field of the spec and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Dotted path of the field, e.g. `optimizer.lr` or `datasets[1].split`.
    pub field: String,
    /// What is wrong, lowercase.
    pub reason: String,
}

/// A [`SpecError`] for `field`.
pub(super) fn bad(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}
