//! Class vectors for zero-shot learning: built-in attribute tables, a CSV file, or principal
//! components of per-class mean samples of a description dataset.

use crate::data::Dataset;
use crate::spec::Scoring;

/// Names of the built-in tables.
pub const BUILTIN_TABLES: &[&str] = &["seven_segment", "digit_strokes"];

/// The seven-segment display (segments a–g: top, upper right, lower right, bottom, lower
/// left, upper left, middle) lit for each digit.
const SEVEN_SEGMENT: [[u8; 7]; 10] = [
    [1, 1, 1, 1, 1, 1, 0],
    [0, 1, 1, 0, 0, 0, 0],
    [1, 1, 0, 1, 1, 0, 1],
    [1, 1, 1, 1, 0, 0, 1],
    [0, 1, 1, 0, 0, 1, 1],
    [1, 0, 1, 1, 0, 1, 1],
    [1, 0, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0, 1, 1],
];

/// Hand-made stroke attributes of handwritten digits: has a closed loop, two loops, a loop
/// in the upper half, a loop in the lower half, a straight vertical stroke, a top bar, a
/// diagonal stroke, a curve at the top, a curve at the bottom, open to the left, open to the
/// right, strokes that meet in the middle.
const DIGIT_STROKES: [[u8; 12]; 10] = [
    [1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1],
    [0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0],
    [1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0],
    [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1],
    [1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0],
];

/// One vector per class, in class order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassVectors {
    /// Classes.
    pub rows: usize,
    /// Attributes per class.
    pub cols: usize,
    /// Row-major `[rows, cols]`.
    pub values: Vec<f32>,
    /// Every value is 0 or 1: the network predicts attribute probabilities (sigmoid,
    /// cross-entropy); otherwise it regresses the values (squared error).
    pub binary: bool,
}

/// Why class vectors cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ClassVectorError(pub String);

/// A built-in table by name.
pub fn builtin_table(name: &str) -> Option<ClassVectors> {
    let rows: Vec<Vec<u8>> = match name {
        "seven_segment" => SEVEN_SEGMENT.iter().map(|r| r.to_vec()).collect(),
        "digit_strokes" => DIGIT_STROKES.iter().map(|r| r.to_vec()).collect(),
        _ => return None,
    };
    let cols = rows[0].len();
    Some(ClassVectors {
        rows: rows.len(),
        cols,
        values: rows.iter().flatten().map(|&v| f32::from(v)).collect(),
        binary: true,
    })
}

impl ClassVectors {
    /// Builds and checks a table.
    ///
    /// # Errors
    /// For a ragged, empty or non-finite table.
    pub fn new(rows: Vec<Vec<f32>>) -> Result<Self, ClassVectorError> {
        let cols = rows.first().map_or(0, Vec::len);
        if rows.is_empty() || cols == 0 {
            return Err(ClassVectorError("the table is empty".into()));
        }
        if cols > 4096 || rows.len() > 100_000 {
            return Err(ClassVectorError(format!(
                "the table is too large ({} x {cols})",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|r| r.len() != cols) {
            return Err(ClassVectorError(format!(
                "row {} has {} values, row 1 has {cols}",
                i + 1,
                rows[i].len()
            )));
        }
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(ClassVectorError(
                "the table holds a value that is not finite".into(),
            ));
        }
        let values: Vec<f32> = rows.into_iter().flatten().collect();
        let binary = values.iter().all(|&v| v == 0.0 || v == 1.0);
        Ok(Self {
            rows: values.len() / cols,
            cols,
            values,
            binary,
        })
    }

    /// Reads a CSV table: one row per class in class order, numbers separated by commas; blank
    /// lines and lines starting with `#` are skipped.
    ///
    /// # Errors
    /// Naming the line that is not a row of numbers.
    pub fn from_csv(text: &str) -> Result<Self, ClassVectorError> {
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let row = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClassVectorError(format!("line {}: {e}", n + 1)))?;
            rows.push(row);
        }
        Self::new(rows)
    }

    /// Principal components of the per-class mean samples of `data`, fitted on the `seen`
    /// classes only; every class (seen or not) is projected into that space, and the result
    /// scaled to unit mean square over the seen classes.
    ///
    /// # Errors
    /// When a class has no sample or fewer than two seen classes remain.
    pub fn pca(
        data: &Dataset,
        classes: usize,
        seen: &[u32],
        components: usize,
    ) -> Result<Self, ClassVectorError> {
        let dim = data.sample_dim();
        let mut means = vec![vec![0f64; dim]; classes];
        let mut counts = vec![0usize; classes];
        for i in 0..data.len() {
            let c = data.labels[i] as usize;
            if c < classes {
                counts[c] += 1;
                for (m, &v) in means[c].iter_mut().zip(data.sample(i)) {
                    *m += v as f64;
                }
            }
        }
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(ClassVectorError(format!(
                "the description dataset has no sample of class {c}"
            )));
        }
        for (m, &n) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= n as f64);
        }
        let seen: Vec<usize> = seen
            .iter()
            .map(|&c| c as usize)
            .filter(|&c| c < classes)
            .collect();
        if seen.len() < 2 {
            return Err(ClassVectorError(
                "PCA needs at least two seen classes".into(),
            ));
        }
        let k = seen.len();
        let mu: Vec<f64> = (0..dim)
            .map(|j| seen.iter().map(|&c| means[c][j]).sum::<f64>() / k as f64)
            .collect();
        let centred: Vec<Vec<f64>> = seen
            .iter()
            .map(|&c| means[c].iter().zip(&mu).map(|(a, b)| a - b).collect())
            .collect();
        // Eigenvectors of the k×k Gram matrix give the principal axes Xᵀv/‖Xᵀv‖.
        let mut gram = vec![vec![0f64; k]; k];
        for a in 0..k {
            for b in 0..k {
                gram[a][b] = centred[a].iter().zip(&centred[b]).map(|(x, y)| x * y).sum();
            }
        }
        let (vals, vecs) = jacobi_eigen(gram);
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let keep: Vec<usize> = order
            .into_iter()
            .filter(|&i| vals[i] > 1e-9 * vals.iter().cloned().fold(0.0, f64::max).max(1e-300))
            .take(components)
            .collect();
        let axes: Vec<Vec<f64>> = keep
            .iter()
            .map(|&i| {
                let mut axis = vec![0f64; dim];
                for (a, row) in centred.iter().enumerate() {
                    for (x, v) in axis.iter_mut().zip(row) {
                        *x += v * vecs[a][i];
                    }
                }
                let norm = axis.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
                axis.iter_mut().for_each(|v| *v /= norm);
                axis
            })
            .collect();
        let project = |m: &[f64]| -> Vec<f64> {
            axes.iter()
                .map(|ax| {
                    ax.iter()
                        .zip(m)
                        .zip(&mu)
                        .map(|((a, x), u)| a * (x - u))
                        .sum()
                })
                .collect()
        };
        let projected: Vec<Vec<f64>> = means.iter().map(|m| project(m)).collect();
        let ms = seen
            .iter()
            .flat_map(|&c| projected[c].iter())
            .map(|v| v * v)
            .sum::<f64>()
            / (k * axes.len()).max(1) as f64;
        let scale = 1.0 / ms.sqrt().max(1e-12);
        let rows = projected
            .into_iter()
            .map(|r| r.into_iter().map(|v| (v * scale) as f32).collect())
            .collect();
        let mut cv = Self::new(rows)?;
        cv.binary = false;
        Ok(cv)
    }

    /// Vector of class `c`.
    pub fn row(&self, c: usize) -> &[f32] {
        &self.values[c * self.cols..(c + 1) * self.cols]
    }

    /// How far class `c` is from the prediction `v`: the Euclidean distance, or for
    /// [`Scoring::Likelihood`] the negative log-likelihood of the class's binary attributes
    /// under the predicted probabilities `v`.
    pub fn score(&self, v: &[f32], c: usize, scoring: Scoring) -> f32 {
        let row = self.row(c);
        match scoring {
            Scoring::Nearest => row
                .iter()
                .zip(v)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt(),
            Scoring::Likelihood => row
                .iter()
                .zip(v)
                .map(|(a, p)| {
                    let p = p.clamp(1e-6, 1.0 - 1e-6);
                    -(a * p.ln() + (1.0 - a) * (1.0 - p).ln())
                })
                .sum(),
        }
    }

    /// The best class among `candidates` for the prediction `v`, with its score (lower is
    /// better).
    pub fn best(&self, v: &[f32], candidates: &[u32], scoring: Scoring) -> Option<(u32, f32)> {
        candidates
            .iter()
            .filter(|&&c| (c as usize) < self.rows)
            .map(|&c| (c, self.score(v, c as usize, scoring)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Eigenvalues and eigenvectors (columns) of a symmetric matrix by cyclic Jacobi rotations.
// The rotation reads as the textbook writes it: rows and columns p and q by index.
#[allow(clippy::needless_range_loop)]
fn jacobi_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v = vec![vec![0f64; n]; n];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (rp, rq) = (a[p].clone(), a[q].clone());
                a[p] = rp.iter().zip(&rq).map(|(x, y)| c * x - s * y).collect();
                a[q] = rp.iter().zip(&rq).map(|(x, y)| s * x + c * y).collect();
                for row in v.iter_mut() {
                    let (vp, vq) = (row[p], row[q]);
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_nearest() {
        let t = builtin_table("seven_segment").expect("exists");
        assert_eq!((t.rows, t.cols, t.binary), (10, 7, true));
        // 8 lights every segment.
        assert!(t.row(8).iter().all(|&v| v == 1.0));
        let (c, d) = t
            .best(t.row(7), &[7, 8, 9], Scoring::Nearest)
            .expect("some");
        assert_eq!((c, d), (7, 0.0));
        assert!(builtin_table("nope").is_none());
        let s = builtin_table("digit_strokes").expect("exists");
        for a in 0..10 {
            for b in a + 1..10 {
                assert_ne!(
                    s.row(a),
                    s.row(b),
                    "digits {a} and {b} share a stroke vector"
                );
            }
        }
    }

    #[test]
    fn likelihood_scores_are_negative_log_likelihoods() {
        let t = ClassVectors::new(vec![vec![1.0, 0.0], vec![1.0, 1.0]]).expect("valid");
        let v = [0.9f32, 0.4];
        let nll0 = -(0.9f32.ln() + 0.6f32.ln());
        assert!((t.score(&v, 0, Scoring::Likelihood) - nll0).abs() < 1e-6);
        assert!((t.score(&v, 0, Scoring::Nearest) - (0.01f32 + 0.16).sqrt()).abs() < 1e-6);
        assert_eq!(
            t.best(&v, &[0, 1], Scoring::Likelihood).map(|b| b.0),
            Some(0)
        );
        // Confident attributes weigh more under the likelihood than under the distance.
        let w = [0.99f32, 0.45];
        assert_eq!(t.best(&w, &[0, 1], Scoring::Nearest).map(|b| b.0), Some(0));
        assert_eq!(
            t.best(&[0.5f32, 0.99], &[0, 1], Scoring::Likelihood)
                .map(|b| b.0),
            Some(1)
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let t = ClassVectors::from_csv("# header\n1,0\n0.5,2\n").expect("valid");
        assert_eq!((t.rows, t.cols, t.binary), (2, 2, false));
        let e = ClassVectors::from_csv("1,0\n1,x\n").expect_err("bad");
        assert!(e.0.contains("line 2"), "{e}");
        assert!(ClassVectors::from_csv("1,0\n1\n").is_err());
        assert!(ClassVectors::from_csv("").is_err());
    }

    #[test]
    fn pca_recovers_the_spread_of_class_means() {
        // Three classes on a line in 2-D plus an unseen class further along it.
        let feats = vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
        let ds = Dataset::new("t", vec![2], feats, vec![0, 1, 2, 3], 4).expect("valid");
        let cv = ClassVectors::pca(&ds, 4, &[0, 1, 2], 1).expect("pca");
        assert_eq!(cv.cols, 1);
        let v: Vec<f32> = (0..4).map(|c| cv.row(c)[0]).collect();
        // Evenly spaced, unseen class 3 continues the line.
        let step = v[1] - v[0];
        assert!(step.abs() > 0.1);
        assert!(((v[3] - v[2]) - step).abs() < 1e-4, "{v:?}");
    }
}
