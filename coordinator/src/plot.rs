//! Training curves, written next to a job's checkpoints as `curves.svg` and `curves.png`:
//! the training loss per step, and the training and evaluation accuracies, with axes, ticks,
//! titles and legends, drawn with `plotters`. Text is laid out (and, in the PNG, drawn) with
//! DejaVu Sans from the `dejavu` crate, so no system font is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

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

/// Size of the figure, both panels.
const SIZE: (u32, u32) = (1100, 420);
const FONT: &str = "sans-serif";
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Why the curves could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the curves: {0}")]
pub struct PlotError(String);

fn font_ready() -> Result<(), PlotError> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the bundled DejaVu Sans is not a font ab_glyph reads".to_string())
        })
        .clone()
        .map_err(PlotError)
}

/// One curve: its name and points.
type Series = (String, Vec<(f64, f64)>);

/// What the two panels show.
struct Figure {
    title: String,
    loss_title: &'static str,
    loss: Series,
    accuracies: Vec<Series>,
    max_step: f64,
}

impl Figure {
    fn of(title: &str, h: &History) -> Self {
        let max_step = h
            .train
            .iter()
            .map(|p| p.0)
            .chain(h.evals.iter().map(|e| e.0))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut names: Vec<&String> = h
            .evals
            .iter()
            .flat_map(|(_, m)| m.keys())
            .filter(|k| k.ends_with("_accuracy") && !k.contains('.'))
            .collect();
        names.sort();
        names.dedup();
        // Only DANN reports a domain accuracy, and its loss is the sum of the label and the
        // domain losses: say so, or the curve reads as a label loss that will not go down.
        let dann = names.iter().any(|n| n.as_str() == "domain_accuracy");
        let mut accuracies = vec![(
            "train accuracy".to_string(),
            h.train.iter().map(|(s, _, a)| (*s as f64, *a)).collect(),
        )];
        for name in names {
            accuracies.push((
                name.replace('_', " "),
                h.evals
                    .iter()
                    .filter_map(|(s, m)| m.get(name).map(|v| (*s as f64, *v)))
                    .collect(),
            ));
        }
        Figure {
            title: title.to_string(),
            loss_title: if dann {
                "combined training loss (label + domain)"
            } else {
                "training loss"
            },
            loss: (
                if dann { "label + domain loss" } else { "loss" }.to_string(),
                h.train.iter().map(|(s, l, _)| (*s as f64, *l)).collect(),
            ),
            accuracies,
            max_step,
        }
    }

    fn loss_range(&self) -> (f64, f64) {
        let (lo, hi) = self
            .loss
            .1
            .iter()
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
                (lo.min(y), hi.max(y))
            });
        if lo.is_finite() && hi > lo {
            (lo.min(0.0), hi * 1.05)
        } else if lo.is_finite() {
            (lo.min(0.0), lo.abs().max(1.0) * 1.05)
        } else {
            (0.0, 1.0)
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError>
    where
        DB::ErrorType: 'static,
    {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError(e.to_string());
        root.fill(&WHITE).map_err(e)?;
        let root = root.titled(&self.title, (FONT, 20)).map_err(e)?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        let (lo, hi) = self.loss_range();
        self.panel(
            &left,
            self.loss_title,
            "loss",
            lo..hi,
            std::slice::from_ref(&self.loss),
            SeriesLabelPosition::UpperRight,
        )?;
        self.panel(
            &right,
            "accuracy",
            "accuracy",
            0.0..1.0,
            &self.accuracies,
            SeriesLabelPosition::LowerRight,
        )
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        caption: &str,
        y_desc: &str,
        y: std::ops::Range<f64>,
        series: &[Series],
        legend: SeriesLabelPosition,
    ) -> Result<(), PlotError>
    where
        DB::ErrorType: 'static,
    {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError(e.to_string());
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..self.max_step, y)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<(f64, f64)> =
                points.iter().copied().filter(|p| p.1.is_finite()).collect();
            // Evaluations are few: marked, so that a single one still shows.
            let marks = if points.len() < 50 { 3 } else { 0 };
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)).point_size(marks))
                .map_err(e)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .margin(8)
            .draw()
            .map_err(e)
    }
}

/// The two panels side by side, as SVG.
///
/// # Errors
/// [`PlotError`] if the bundled font cannot be loaded or drawing fails.
pub fn render_svg(title: &str, h: &History) -> Result<String, PlotError> {
    font_ready()?;
    let figure = Figure::of(title, h);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        figure.draw(&root)?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    Ok(svg)
}

/// The same figure as a PNG file at `path`, written beside it first and renamed into place,
/// so a reader never sees half a picture.
///
/// # Errors
/// [`PlotError`] if drawing or writing fails.
pub fn write_png(path: &Path, title: &str, h: &History) -> Result<(), PlotError> {
    font_ready()?;
    let figure = Figure::of(title, h);
    // The encoder picks the format from the extension.
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        figure.draw(&root)?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| PlotError(format!("{}: {e}", path.display())))
}

/// Writes `curves.svg` and `curves.png` into `dir`; a failure is logged, not fatal: the
/// curves are a convenience.
pub fn write(dir: &Path, title: &str, h: &History) {
    let result = std::fs::create_dir_all(dir)
        .map_err(|e| PlotError(format!("{}: {e}", dir.display())))
        .and_then(|()| render_svg(title, h))
        .and_then(|svg| {
            graft_common::fs::write_atomic(&dir.join("curves.svg"), svg.as_bytes())
                .map_err(|e| PlotError(e.to_string()))
        })
        .and_then(|()| write_png(&dir.join("curves.png"), title, h));
    if let Err(e) = result {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the training curves");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(dann: bool) -> History {
        let mut h = History::default();
        for s in 1..=100 {
            h.push_step(s, 1.0 / s as f64, 0.5 + s as f64 / 250.0);
        }
        for (s, acc) in [(50, 0.7), (100, 0.8)] {
            let mut m = BTreeMap::from([
                ("target_accuracy".to_string(), acc),
                ("target_loss".to_string(), 0.9),
            ]);
            if dann {
                m.insert("domain_accuracy".to_string(), 0.6);
            }
            h.push_eval(s, m);
        }
        h
    }

    #[test]
    fn renders_both_panels_with_ticks_titles_and_every_legend() {
        let svg = render_svg("job-1 <x>", &history(false)).expect("renders");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Loss, train accuracy, target accuracy, and their legend marks; the grid and the
        // axes are thinner.
        let wide = svg
            .split("<polyline")
            .skip(1)
            .filter(|p| {
                p.split('>')
                    .next()
                    .is_some_and(|a| a.contains("stroke-width=\"2\""))
            })
            .count();
        assert_eq!(wide, 3 + 3, "curves and legend marks");
        // plotters writes each text on a line of its own.
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        for text in [
            "training loss",
            "accuracy",
            "train accuracy",
            "target accuracy",
            "step",
            "loss",
            "job-1 &lt;x&gt;",
            "100",
            "1.00",
        ] {
            assert!(texts.contains(&text), "{text} missing");
        }
        assert!(!svg.contains("target loss"));
        assert!(!svg.contains("combined"));
    }

    #[test]
    fn dann_loss_is_labelled_as_the_combined_loss() {
        let svg = render_svg("dann", &history(true)).expect("renders");
        assert!(svg.contains("combined training loss (label + domain)"));
        assert!(svg.contains("domain accuracy"));
    }

    #[test]
    fn png_is_written_beside_the_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "job", &history(true));
        let png = std::fs::read(dir.path().join("curves.png")).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(dir.path().join("curves.svg").exists());
        assert!(!dir.path().join("curves.tmp.png").exists());
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
