//! The element-wise work on received chunks: the hot loop of the ring, kept small and
//! free of I/O so that it vectorizes and can be measured and tested alone.

/// Adds the little-endian f32 `data` into `dst` (`reduce`) or stores it there; whether any
/// received value was NaN or infinite.
///
/// Branch-free, so that it vectorizes: the exponent test is OR-ed into one flag, and the
/// caller looks for the offending element only when the flag is set.
pub(super) fn add_or_store(dst: &mut [f32], data: &[u8], reduce: bool) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let mut bad = false;
    let pairs = dst.iter_mut().zip(data.chunks_exact(4));
    if reduce {
        for (d, b) in pairs {
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            bad |= bits & EXP == EXP;
            *d += f32::from_bits(bits);
        }
    } else {
        for (d, b) in pairs {
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            bad |= bits & EXP == EXP;
            *d = f32::from_bits(bits);
        }
    }
    bad
}

/// The buckets end to end, grown from the first one rather than copied into a fresh vector:
/// a new gradient-sized allocation every step costs a page fault per page (a 64 MiB gradient
/// in one bucket spent a fifth of the ring's CPU zeroing fresh pages). With several buckets
/// the first is small and the growth still allocates once.
pub(super) fn join(buckets: Vec<Vec<f32>>) -> Vec<f32> {
    let total: usize = buckets.iter().map(Vec::len).sum();
    let mut it = buckets.into_iter();
    let mut sum = it.next().unwrap_or_default();
    sum.reserve_exact(total - sum.len());
    for b in it {
        sum.extend_from_slice(&b);
    }
    sum
}

#[cfg(test)]
mod tests {
    use graft_proto::chunk::f32_to_bytes;

    use super::*;

    #[test]
    fn add_or_store_adds_stores_and_flags_only_nan_and_infinity() {
        let received = [1.5f32, -2.0, f32::MAX, f32::MIN_POSITIVE / 2.0, -0.0];
        let bytes = f32_to_bytes(&received);
        let mut acc = vec![1.0f32; received.len()];
        assert!(!add_or_store(&mut acc, &bytes, true));
        let want: Vec<f32> = received.iter().map(|v| 1.0 + v).collect();
        assert_eq!(acc, want);
        assert!(!add_or_store(&mut acc, &bytes, false));
        assert_eq!(acc, received);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = received.to_vec();
            v[3] = bad;
            let mut dst = vec![0.0f32; v.len()];
            assert!(add_or_store(&mut dst, &f32_to_bytes(&v), true), "{bad}");
            assert!(add_or_store(&mut dst, &f32_to_bytes(&v), false), "{bad}");
        }
    }
}
