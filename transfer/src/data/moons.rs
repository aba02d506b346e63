//! The two interleaving moons of the DANN paper (Ganin et al. 2016, section 5.1): a 2-D
//! problem small enough to watch domain adaptation work, with the target domain made by
//! rotating the source. Generated, so it needs no files and every worker builds the same
//! points from the seed.

use serde::{Deserialize, Serialize};

use super::{DataError, Dataset};
use crate::rng::SplitMix64;

/// The point the target domain is rotated around: the middle of the two moons.
pub const CENTRE: [f64; 2] = [0.5, 0.25];

const ORDER_STREAM: u64 = 1;
const NOISE_STREAM: u64 = 2;

/// How to generate one moons domain; a job gives one per domain.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoonsConfig {
    /// Total points; the upper moon gets `samples / 2`, the lower one the rest.
    pub samples: usize,
    /// Standard deviation of the Gaussian noise added to each coordinate.
    pub noise: f32,
    /// Counter-clockwise rotation around [`CENTRE`], in degrees; non-zero makes a shifted
    /// target domain.
    pub rotation_deg: f32,
    /// Fixes the noise and the sample order.
    pub seed: u64,
}

impl Default for MoonsConfig {
    fn default() -> Self {
        Self {
            samples: 1000,
            noise: 0.1,
            rotation_deg: 0.0,
            seed: 0,
        }
    }
}

impl MoonsConfig {
    /// Rejects settings that would produce NaNs or an unusable set, before a job starts.
    pub fn validate(&self) -> Result<(), DataError> {
        let reason = if self.samples < 2 {
            format!(
                "{} samples; at least 2 are needed (one per moon)",
                self.samples
            )
        } else if !self.noise.is_finite() || self.noise < 0.0 {
            format!("noise {} must be finite and non-negative", self.noise)
        } else if !self.rotation_deg.is_finite() {
            format!("rotation {} must be finite", self.rotation_deg)
        } else {
            return Ok(());
        };
        Err(DataError::Invalid {
            name: "moons".into(),
            reason,
        })
    }
}

/// `n` evenly spaced values from 0 to π inclusive, as numpy's `linspace(0, pi, n)`.
fn linspace_pi(n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 {
        std::f64::consts::PI / (n - 1) as f64
    } else {
        0.0
    };
    (0..n).map(move |i| i as f64 * step)
}

fn rotate_point([x, y]: [f64; 2], (sin, cos): (f64, f64)) -> [f64; 2] {
    let (dx, dy) = (x - CENTRE[0], y - CENTRE[1]);
    [
        CENTRE[0] + dx * cos - dy * sin,
        CENTRE[1] + dx * sin + dy * cos,
    ]
}

/// Rotates flat `[x, y, x, y, ...]` points counter-clockwise around [`CENTRE`], the way
/// [`moons`] makes its target domain; a rotation of 0 leaves the values bit-identical.
pub fn rotate(points: &mut [f32], degrees: f32) {
    if degrees == 0.0 {
        return;
    }
    let sc = f64::from(degrees).to_radians().sin_cos();
    for p in points.chunks_exact_mut(2) {
        let [x, y] = rotate_point([f64::from(p[0]), f64::from(p[1])], sc);
        p[0] = x as f32;
        p[1] = y as f32;
    }
}

/// Generates the moons as sklearn's `make_moons` does (upper moon `(cos t, sin t)` label 0,
/// lower moon `(1 - cos t, 0.5 - sin t)` label 1, `t` evenly spaced over [0, π], Gaussian
/// noise), in a seeded random order, rotated by `cfg.rotation_deg`. Coordinates are not
/// rescaled, so the geometry matches the paper's figures.
pub fn moons(cfg: &MoonsConfig, name: &str) -> Dataset {
    let n_upper = cfg.samples / 2;
    let n_lower = cfg.samples - n_upper;
    let mut points: Vec<([f64; 2], u32)> = Vec::with_capacity(cfg.samples);
    points.extend(linspace_pi(n_upper).map(|t| ([t.cos(), t.sin()], 0)));
    points.extend(linspace_pi(n_lower).map(|t| ([1.0 - t.cos(), 1.0 - t.sin() - 0.5], 1)));
    SplitMix64::derive(cfg.seed, ORDER_STREAM).shuffle(&mut points);

    let mut noise = SplitMix64::derive(cfg.seed, NOISE_STREAM);
    let sigma = f64::from(cfg.noise);
    let rotation =
        (cfg.rotation_deg != 0.0).then(|| f64::from(cfg.rotation_deg).to_radians().sin_cos());
    let mut features = Vec::with_capacity(2 * points.len());
    let mut labels = Vec::with_capacity(points.len());
    for ([x, y], label) in points {
        let mut p = [x + sigma * noise.normal(), y + sigma * noise.normal()];
        if let Some(sc) = rotation {
            p = rotate_point(p, sc);
        }
        features.extend(p.map(|v| v as f32));
        labels.push(label);
    }
    Dataset {
        name: name.to_string(),
        sample_shape: vec![2],
        features,
        labels,
        num_classes: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rotation_deg: f32, seed: u64) -> MoonsConfig {
        MoonsConfig {
            rotation_deg,
            seed,
            ..MoonsConfig::default()
        }
    }

    fn dist(p: &[f32]) -> f64 {
        (f64::from(p[0]) - CENTRE[0]).hypot(f64::from(p[1]) - CENTRE[1])
    }

    #[test]
    fn balanced_shuffled_and_valid() {
        let d = moons(&MoonsConfig::default(), "moons/train");
        assert_eq!(d.len(), 1000);
        assert_eq!(d.class_counts(), vec![500, 500]);
        assert_eq!(d.sample_shape, vec![2]);
        let mut sorted = d.labels.clone();
        sorted.sort_unstable();
        assert_ne!(d.labels, sorted, "labels should be shuffled");
        let checked = Dataset::new(
            "x",
            d.sample_shape.clone(),
            d.features.clone(),
            d.labels.clone(),
            2,
        );
        assert_eq!(
            checked.unwrap(),
            Dataset {
                name: "x".into(),
                ..d
            }
        );
        let odd = moons(
            &MoonsConfig {
                samples: 7,
                ..MoonsConfig::default()
            },
            "m",
        );
        assert_eq!(odd.class_counts(), vec![3, 4]);
    }

    #[test]
    fn noiseless_points_lie_on_the_moons() {
        let d = moons(
            &MoonsConfig {
                noise: 0.0,
                ..MoonsConfig::default()
            },
            "m",
        );
        for i in 0..d.len() {
            let [x, y] = [f64::from(d.sample(i)[0]), f64::from(d.sample(i)[1])];
            let r = if d.labels[i] == 0 {
                assert!(y >= -1e-6);
                x.hypot(y)
            } else {
                assert!(y <= 0.5 + 1e-6);
                (x - 1.0).hypot(y - 0.5)
            };
            assert!((r - 1.0).abs() < 1e-6, "sample {i}: radius {r}");
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        assert_eq!(moons(&cfg(0.0, 5), "m"), moons(&cfg(0.0, 5), "m"));
        assert_ne!(moons(&cfg(0.0, 5), "m"), moons(&cfg(0.0, 6), "m"));
    }

    #[test]
    fn rotation_preserves_distance_to_centre_and_labels() {
        let source = moons(&cfg(0.0, 3), "s");
        let target = moons(&cfg(35.0, 3), "t");
        assert_eq!(source.labels, target.labels);
        let mut moved = 0;
        for i in 0..source.len() {
            let (a, b) = (source.sample(i), target.sample(i));
            assert!((dist(a) - dist(b)).abs() < 1e-5, "sample {i}");
            moved += usize::from((a[0] - b[0]).abs() + (a[1] - b[1]).abs() > 1e-3);
        }
        assert!(moved > 990, "only {moved} points moved");
        let mut back = target.features.clone();
        rotate(&mut back, -35.0);
        assert!(
            back.iter()
                .zip(&source.features)
                .all(|(x, y)| (x - y).abs() < 1e-5)
        );
    }

    #[test]
    fn rotation_zero_equals_unrotated_and_quarter_turn_is_exact() {
        let d = moons(&cfg(0.0, 9), "m");
        let mut same = d.features.clone();
        rotate(&mut same, 0.0);
        assert_eq!(same, d.features);
        let mut p = [1.5f32, 0.25];
        rotate(&mut p, 90.0);
        assert!(
            (p[0] - 0.5).abs() < 1e-6 && (p[1] - 1.25).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn validate_rejects_bad_settings() {
        assert!(MoonsConfig::default().validate().is_ok());
        for bad in [
            MoonsConfig {
                samples: 1,
                ..MoonsConfig::default()
            },
            MoonsConfig {
                noise: -0.1,
                ..MoonsConfig::default()
            },
            MoonsConfig {
                noise: f32::NAN,
                ..MoonsConfig::default()
            },
            MoonsConfig {
                rotation_deg: f32::INFINITY,
                ..MoonsConfig::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(DataError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
