//! Training curves as SVG, written next to a job's checkpoints: the training loss per step,
//! and the training and evaluation accuracies. Plain SVG so that any browser shows it and no
//! plotting library is needed.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Points kept per curve; older points are thinned (every other one dropped) past it, so a
/// long job's history stays small.
const MAX_POINTS: usize = 4096;

/// A job's curves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// (step, mean training loss, training accuracy) per step.
    pub train: Vec<(u64, f64, f64)>,
    /// (step, evaluation metrics).
    pub evals: Vec<(u64, BTreeMap<String, f64>)>,
    stride: u64,
}

impl History {
    /// Adds one step's training figures.
    pub fn push_step(&mut self, step: u64, loss: f64, accuracy: f64) {
        let stride = self.stride.max(1);
        if !step.is_multiple_of(stride) {
            return;
        }
        self.train.push((step, loss, accuracy));
        if self.train.len() > MAX_POINTS {
            self.stride = stride * 2;
            let keep = self.stride;
            self.train.retain(|(s, _, _)| s.is_multiple_of(keep));
        }
    }

    /// Adds an evaluation.
    pub fn push_eval(&mut self, step: u64, metrics: BTreeMap<String, f64>) {
        self.evals.push((step, metrics));
    }
}

const W: f64 = 480.0;
const H: f64 = 300.0;
const PAD: f64 = 48.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

struct Panel<'a> {
    title: &'a str,
    x0: f64,
    series: Vec<(String, Vec<(f64, f64)>)>,
    y_range: Option<(f64, f64)>,
}

fn panel(out: &mut String, p: &Panel<'_>, max_step: f64) {
    let (ymin, ymax) = p.y_range.unwrap_or_else(|| {
        let ys = p
            .series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|(_, y)| *y))
            .filter(|y| y.is_finite());
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        if lo.is_finite() && hi > lo {
            (lo.min(0.0), hi)
        } else {
            (0.0, 1.0)
        }
    });
    let sx = |x: f64| p.x0 + PAD + (x / max_step.max(1.0)) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - ((y - ymin) / (ymax - ymin).max(1e-12)) * (H - 2.0 * PAD);
    let _ = write!(
        out,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#999"/><text x="{tx}" y="20" font-size="14" text-anchor="middle">{title}</text>"##,
        x = p.x0 + PAD,
        y = PAD,
        w = W - 2.0 * PAD,
        h = H - 2.0 * PAD,
        tx = p.x0 + W / 2.0,
        title = p.title
    );
    for (v, anchor) in [(ymin, "end"), (ymax, "end")] {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="{anchor}">{v:.3}</text>"#,
            p.x0 + PAD - 4.0,
            sy(v) + 3.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" font-size="10" text-anchor="end">step {}</text>"#,
        p.x0 + W - PAD,
        H - PAD + 14.0,
        max_step as u64
    );
    for (i, (name, pts)) in p.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = pts
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if points.len() == 1 {
            let _ = write!(
                out,
                r#"<circle cx="{}" r="3" cy="{}" fill="{colour}"/>"#,
                points[0].split(',').next().unwrap_or("0"),
                points[0].split(',').nth(1).unwrap_or("0")
            );
        } else if !points.is_empty() {
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
        }
        // The legend sits in a row under the axis, where it hides no curve.
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="10" fill="{colour}">{}</text>"#,
            p.x0 + PAD + 128.0 * i as f64,
            H - 10.0,
            escape(name)
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The two panels side by side.
pub fn render(title: &str, h: &History) -> String {
    let max_step = h
        .train
        .iter()
        .map(|p| p.0)
        .chain(h.evals.iter().map(|e| e.0))
        .max()
        .unwrap_or(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif"><title>{}</title>"#,
        2.0 * W,
        H,
        escape(title)
    );
    let loss = Panel {
        title: "training loss",
        x0: 0.0,
        series: vec![(
            "loss".into(),
            h.train.iter().map(|(s, l, _)| (*s as f64, *l)).collect(),
        )],
        y_range: None,
    };
    panel(&mut out, &loss, max_step);
    let mut series = vec![(
        "train accuracy".to_string(),
        h.train
            .iter()
            .map(|(s, _, a)| (*s as f64, *a))
            .collect::<Vec<_>>(),
    )];
    let mut names: Vec<&String> = h
        .evals
        .iter()
        .flat_map(|(_, m)| m.keys())
        .filter(|k| k.ends_with("_accuracy") && !k.contains('.'))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        series.push((
            name.clone(),
            h.evals
                .iter()
                .filter_map(|(s, m)| m.get(name).map(|v| (*s as f64, *v)))
                .collect(),
        ));
    }
    panel(
        &mut out,
        &Panel {
            title: "accuracy",
            x0: W,
            series,
            y_range: Some((0.0, 1.0)),
        },
        max_step,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_panels_with_every_series() {
        let mut h = History::default();
        for s in 1..=100 {
            h.push_step(s, 1.0 / s as f64, 0.5 + s as f64 / 250.0);
        }
        h.push_eval(
            50,
            BTreeMap::from([
                ("target_accuracy".to_string(), 0.7),
                ("target_loss".to_string(), 0.9),
            ]),
        );
        h.push_eval(
            100,
            BTreeMap::from([
                ("target_accuracy".to_string(), 0.8),
                ("target_loss".to_string(), 0.5),
            ]),
        );
        let svg = render("job-1 <x>", &h);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            3,
            "loss, train accuracy, target accuracy"
        );
        assert!(svg.contains("target_accuracy") && !svg.contains(">target_loss<"));
        assert!(svg.contains("job-1 &lt;x&gt;"));
    }

    #[test]
    fn long_histories_are_thinned() {
        let mut h = History::default();
        for s in 1..=20_000 {
            h.push_step(s, 1.0, 1.0);
        }
        assert!(
            h.train.len() <= MAX_POINTS && h.train.len() > MAX_POINTS / 4,
            "{}",
            h.train.len()
        );
        assert!(h.train.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
