//! The source stage (or `init_from` file) of fine-tuning, conservative training and layer
//! transfer.

use crate::spec::error::{SpecError, bad};
use crate::spec::{JobSpec, MAX_EPOCHS, MAX_STEPS, Role};

impl JobSpec {
    pub(super) fn validate_source_stage(
        &self,
        one: impl Fn(Role) -> Result<(), SpecError>,
    ) -> Result<(), SpecError> {
        one(Role::TargetLabelled)?;
        let Some((source_steps, source_epochs, init_from)) = self.method.source_stage() else {
            return Ok(());
        };
        if init_from.is_none() && self.method.init_layout().is_some() {
            return Err(bad(
                "method.init_layout",
                "is the layout of init_from: set init_from too, or leave it out",
            ));
        }
        match (init_from, source_steps, source_epochs) {
            (Some(path), None, None) => {
                if path.trim().is_empty() {
                    return Err(bad("method.init_from", "must not be empty"));
                }
                Ok(())
            }
            (Some(_), _, _) => Err(bad(
                "method.init_from",
                "starts from a file: leave source_steps and source_epochs unset",
            )),
            (None, Some(_), Some(_)) => {
                Err(bad("method", "set source_steps or source_epochs, not both"))
            }
            (None, None, None) => Err(bad(
                "method",
                "set source_steps or source_epochs (the source stage), or init_from",
            )),
            (None, Some(0), _) => Err(bad("method.source_steps", "must be > 0")),
            (None, Some(s), _) if s > MAX_STEPS => Err(bad(
                "method.source_steps",
                format!("must be <= {MAX_STEPS}"),
            )),
            (None, _, Some(e)) if e > MAX_EPOCHS => Err(bad(
                "method.source_epochs",
                format!("must be <= {MAX_EPOCHS}"),
            )),
            (None, _, Some(0)) => Err(bad("method.source_epochs", "must be > 0")),
            (None, _, _) => one(Role::Source),
        }
    }
}
