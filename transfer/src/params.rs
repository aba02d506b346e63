//! A network's parameters as flat `f32` vectors, and the flattening of the trainable ones.
//!
//! The order of parameters is the order of [`Architecture::params`](crate::Architecture);
//! the flattened gradient of a step is the concatenation of the trainable parameters'
//! gradients in that order. Every worker uses the same order, so the all-reduce can treat
//! the gradient as one vector.

use sha2::{Digest, Sha256};

/// Parameter values, one vector per parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    values: Vec<Vec<f32>>,
}

/// Flattening a vector of the wrong length.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("flat vector has {got} elements, the trainable parameters have {expected}")]
pub struct FlatLengthError {
    /// Elements the mask selects.
    pub expected: usize,
    /// Elements given.
    pub got: usize,
}

impl Params {
    /// Wraps per-tensor values.
    pub fn new(values: Vec<Vec<f32>>) -> Self {
        Self { values }
    }

    /// Per-tensor values.
    pub fn values(&self) -> &[Vec<f32>] {
        &self.values
    }

    /// Per-tensor values, mutable (the optimizer and stage resets write here).
    pub fn values_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.values
    }

    /// Number of elements the mask selects.
    pub fn flat_len(&self, mask: &[bool]) -> usize {
        self.values
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m)
            .map(|(v, _)| v.len())
            .sum()
    }

    /// The selected tensors concatenated in order.
    pub fn flatten(&self, mask: &[bool]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.flat_len(mask));
        for (v, _) in self.values.iter().zip(mask).filter(|(_, m)| **m) {
            out.extend_from_slice(v);
        }
        out
    }

    /// Writes a flat vector back into the selected tensors.
    ///
    /// # Errors
    /// [`FlatLengthError`] when `flat` does not have exactly the selected length; nothing is
    /// written then.
    pub fn unflatten(&mut self, mask: &[bool], flat: &[f32]) -> Result<(), FlatLengthError> {
        let expected = self.flat_len(mask);
        if flat.len() != expected {
            return Err(FlatLengthError {
                expected,
                got: flat.len(),
            });
        }
        let mut at = 0;
        for (v, _) in self.values.iter_mut().zip(mask).filter(|(_, m)| **m) {
            let n = v.len();
            v.copy_from_slice(&flat[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// Every tensor concatenated in order: the form in which whole states travel.
    pub fn flatten_all(&self) -> Vec<f32> {
        self.values.iter().flatten().copied().collect()
    }

    /// A hash of every parameter's exact bits: replicas that differ in one bit differ here.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for v in &self.values {
            h.update((v.len() as u64).to_le_bytes());
            for x in v {
                h.update(x.to_bits().to_le_bytes());
            }
        }
        let digest = h.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_unflatten_round_trip_skips_frozen() {
        let p = Params::new(vec![vec![1.0, 2.0], vec![3.0], vec![4.0, 5.0, 6.0]]);
        let mask = [true, false, true];
        let flat = p.flatten(&mask);
        assert_eq!(flat, vec![1.0, 2.0, 4.0, 5.0, 6.0]);
        let mut q = Params::new(vec![vec![0.0; 2], vec![9.0], vec![0.0; 3]]);
        q.unflatten(&mask, &flat).expect("right length");
        assert_eq!(q.values()[0], vec![1.0, 2.0]);
        assert_eq!(q.values()[1], vec![9.0], "frozen tensor untouched");
        assert_eq!(q.values()[2], vec![4.0, 5.0, 6.0]);
        assert!(q.unflatten(&mask, &flat[1..]).is_err());
        assert_eq!(
            q.values()[0],
            vec![1.0, 2.0],
            "a refused vector writes nothing"
        );
    }

    #[test]
    fn fingerprint_sees_one_bit() {
        let a = Params::new(vec![vec![1.0, 2.0]]);
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.values_mut()[0][1] = f32::from_bits(2.0f32.to_bits() ^ 1);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
