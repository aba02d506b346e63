//! Upper bounds on what a job file may ask for.

/// Widest hidden layer a job may ask for; bounds the memory a job file can make the
/// coordinator and workers allocate.
pub const MAX_WIDTH: usize = 1 << 16;

/// Longest stage in steps, so that step arithmetic can never overflow.
pub const MAX_STEPS: u64 = 1 << 40;

/// Longest stage in epochs, for the same reason.
pub const MAX_EPOCHS: u32 = 1_000_000;

/// Most samples the generator may be asked for, for the same reason.
pub const MAX_GENERATED: usize = 10_000_000;
