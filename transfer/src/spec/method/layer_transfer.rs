//! Layer transfer's frozen layers.

use crate::spec::error::{SpecError, bad};

pub(super) fn validate(freeze: &[String]) -> Result<(), SpecError> {
    if freeze.is_empty() {
        return Err(bad("method.freeze", "must name at least one layer"));
    }
    for (i, f) in freeze.iter().enumerate() {
        crate::methods::LayerPattern::parse(f)
            .map_err(|reason| bad(format!("method.freeze[{i}]"), reason))?;
    }
    Ok(())
}
