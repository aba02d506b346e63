//! Ids that travel in signatures, so that a rank is never passed where a step is meant.
//!
//! Strings on the wire stay strings (`job_id`, `worker_id`); these types are what the code
//! holds once a request has been read.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's id (`job-` and a number today), unique on its coordinator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub String);

/// A worker's id, given by the coordinator at registration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub String);

macro_rules! string_id {
    ($t:ident) => {
        impl $t {
            /// The id as the wire carries it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

string_id!(JobId);
string_id!(WorkerId);

/// A worker's place in its group, `0..world`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Rank(pub u32);

/// A count of optimizer steps done (step `n` is the one that makes `n + 1` done).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Step(pub u64);

/// A group's generation: bumped whenever its membership changes, so that a message of an
/// earlier group can be told apart and refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

macro_rules! number_id {
    ($t:ident, $n:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$n> for $t {
            fn from(v: $n) -> Self {
                Self(v)
            }
        }

        impl From<$t> for $n {
            fn from(v: $t) -> Self {
                v.0
            }
        }
    };
}

number_id!(Rank, u32);
number_id!(Step, u64);
number_id!(Generation, u64);

impl Rank {
    /// The rank as an index into the group's members.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl Generation {
    /// The generation after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_the_wire_spells_them() {
        assert_eq!(JobId::from("job-3").to_string(), "job-3");
        assert_eq!(WorkerId::from("w-1").as_str(), "w-1");
        assert_eq!(Rank(2).to_string(), "2");
        assert_eq!(Generation(4).next(), Generation(5));
        let id = JobId::from("job-3");
        assert!(id == *"job-3");
    }
}
