//! Bilinear image resizing with PyTorch's `F.interpolate(mode="bilinear",
//! align_corners=False, antialias=False)` semantics, so that a model trained here on
//! resized digits sees the same pixels as the usual PyTorch MNIST<->USPS recipes.

/// For each output index along one axis: the two source indices and the weight of the
/// second one.
fn taps(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Appends to `out` the `[channels, out_h, out_w]` bilinear resize of the
/// `[channels, in_h, in_w]` image `src`. All sizes must be non-zero and `src` must hold
/// exactly `channels * in_h * in_w` values (callers check this).
pub(crate) fn bilinear_into(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    out: &mut Vec<f32>,
) {
    let rows = taps(in_h, out_h);
    let cols = taps(in_w, out_w);
    for plane in src.chunks_exact(in_h * in_w).take(channels) {
        for &(y0, y1, ly) in &rows {
            let (r0, r1) = (&plane[y0 * in_w..][..in_w], &plane[y1 * in_w..][..in_w]);
            for &(x0, x1, lx) in &cols {
                let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
                let bottom = (1.0 - lx) * r1[x0] + lx * r1[x1];
                out.push((1.0 - ly) * top + ly * bottom);
            }
        }
    }
}

/// The `[channels, out_h, out_w]` bilinear resize of one `[channels, in_h, in_w]` image.
#[cfg(test)]
pub(crate) fn bilinear(
    src: &[f32],
    channels: usize,
    input: (usize, usize),
    output: (usize, usize),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(channels * output.0 * output.1);
    bilinear_into(src, channels, input, output, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn identity_size_returns_same_values() {
        let img: Vec<f32> = (0..2 * 3 * 5).map(|i| (i as f32).sin()).collect();
        assert_eq!(bilinear(&img, 2, (3, 5), (3, 5)), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = vec![0.37f32; 28 * 28];
        for out in [(16, 16), (28, 28), (32, 20), (1, 1), (7, 45)] {
            let r = bilinear(&img, 1, (28, 28), out);
            assert_eq!(r.len(), out.0 * out.1);
            assert!(r.iter().all(|&v| (v - 0.37).abs() < 1e-6), "{out:?}");
        }
    }

    #[test]
    fn upsample_2x2_to_4x4_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]),
        //     size=(4, 4), mode="bilinear", align_corners=False)
        let r = bilinear(&[0.0, 1.0, 2.0, 3.0], 1, (2, 2), (4, 4));
        #[rustfmt::skip]
        let want = [
            0.0, 0.25, 0.75, 1.0,
            0.5, 0.75, 1.25, 1.5,
            1.5, 1.75, 2.25, 2.5,
            2.0, 2.25, 2.75, 3.0,
        ];
        assert!(close(&r, &want), "{r:?}");
    }

    #[test]
    fn downsample_by_two_averages_pairs_per_channel() {
        #[rustfmt::skip]
        let img = [
            0.0, 1.0, 2.0, 3.0,
            4.0, 5.0, 6.0, 7.0,
            // second channel
            10.0, 10.0, 20.0, 20.0,
            10.0, 10.0, 20.0, 20.0,
        ];
        let r = bilinear(&img, 2, (2, 4), (1, 2));
        assert!(close(&r, &[2.5, 4.5, 10.0, 20.0]), "{r:?}");
    }
}
