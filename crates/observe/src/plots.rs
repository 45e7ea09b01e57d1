//! SVG plots for the report, drawn with `plotters`' SVG backend into strings that are inlined in the HTML.
//!
//! Text is emitted as SVG `<text>` and laid out by the browser; no fonts are loaded here.

use crate::error::ObserveError;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use std::ops::Range;

/// Line colours (the "tab10" palette); the first is the loss curve of a stage's first attempt.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub(crate) fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";

/// plotters' SVG backend writes `font-size` as the given size / 1.24; this gives `px` pixels.
fn px(px: f64) -> f64 {
    px * 1.24
}
const GRID: RGBColor = RGBColor(232, 234, 238);
const AXIS: RGBColor = RGBColor(120, 124, 132);

/// One curve of a line chart.
pub(crate) struct Series {
    pub name: String,
    /// (x, y) in x order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Draw a line through the points.
    pub line: bool,
    /// Mark each point with a dot (evals: few points).
    pub markers: bool,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Series {
        Series {
            name: name.into(),
            points,
            color,
            line: true,
            markers: false,
        }
    }

    pub fn dots(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Series {
        Series {
            name: name.into(),
            points,
            color,
            line: false,
            markers: true,
        }
    }
}

fn plot_err<E: std::fmt::Display>(what: &str, e: E) -> ObserveError {
    ObserveError::Plot {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Tick positions of an axis: multiples of a "nice" step (1, 2 or 5 × 10^k), and how to label them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ticks {
    /// The axis range, widened to whole steps.
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub values: Vec<f64>,
    /// Divisor and suffix of every label (`1e3`, `k`), or a power of ten the axis title names instead
    /// (`×1e-4`), so that labels stay short.
    div: f64,
    suffix: &'static str,
    /// Decimals every label gets: enough to tell the step apart, so that no two labels are equal.
    decimals: usize,
}

impl Ticks {
    /// About `max` ticks over `lo..hi`, never a step below `min_step` (1 for steps: no fractional ones).
    pub fn new(lo: f64, hi: f64, max: usize, min_step: f64) -> Ticks {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && hi > lo {
            (lo, hi)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 1.0)
        };
        let rough = (hi - lo) / max.max(2).saturating_sub(1) as f64;
        let mag = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= rough * (1.0 - 1e-9))
            .unwrap_or(10.0 * mag)
            .max(min_step);
        let (first, last) = ((lo / step).floor() as i64, (hi / step).ceil() as i64);
        let values: Vec<f64> = (first..=last).map(|i| i as f64 * step).collect();
        let biggest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (div, suffix) = if biggest >= 1e6 {
            (1e6, "M")
        } else if biggest >= 1e4 {
            (1e3, "k")
        } else if biggest > 0.0 && biggest < 1e-2 {
            (10f64.powf(biggest.log10().floor()), "")
        } else {
            (1.0, "")
        };
        // The fewest decimals that show the step (in label units) exactly.
        let unit_step = step / div;
        let decimals = (0..10)
            .find(|&d| {
                let scaled = unit_step * 10f64.powi(d as i32);
                (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
            })
            .unwrap_or(10);
        Ticks {
            lo: first as f64 * step,
            hi: last as f64 * step,
            step,
            values,
            div,
            suffix,
            decimals,
        }
    }

    /// The label of tick `v`: `0` for zero (never `-0`), `12.5k`, `0.25`.
    pub fn label(&self, v: f64) -> String {
        if v.abs() < self.step * 1e-6 {
            return "0".into();
        }
        format!("{:.*}{}", self.decimals, v / self.div, self.suffix)
    }

    /// What the axis title adds when labels are scaled by a power of ten the labels do not show.
    pub fn scale_note(&self) -> String {
        if self.suffix.is_empty() && self.div != 1.0 {
            format!(" (×1e{})", self.div.log10().round() as i32)
        } else {
            String::new()
        }
    }
}

/// A linear axis over `lo..hi` whose ticks are exactly the given values (plotters would pick its own,
/// some of them fractional steps or labels that round to the same text).
struct TickAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl TickAxis {
    fn new(lo: f64, hi: f64, ticks: Vec<f64>) -> TickAxis {
        TickAxis { lo, hi, ticks }
    }
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    /// As plotters maps its own f64 axes.
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        if span <= 0.0 {
            return (limit.0 + limit.1) / 2;
        }
        let t = (v - self.lo) / span;
        let length = f64::from(limit.1 - limit.0);
        if length >= 0.0 {
            limit.0 + (length * t + 1e-3).floor() as i32
        } else {
            limit.0 + (length * t - 1e-3).ceil() as i32
        }
    }

    /// The ticks as bold grid lines; no light ones.
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// The range the y axis shows for values in `lo..hi`: some air, and zero kept as the floor of
/// non-negative values that come close to it.
fn padded(lo: f64, hi: f64, floor_zero: bool) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        if lo == 0.0 && floor_zero {
            return (0.0, 1.0);
        }
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let pad = (hi - lo) * 0.05;
    let lo = if floor_zero && lo >= 0.0 && lo - pad < 0.0 {
        0.0
    } else {
        lo - pad
    };
    (lo, hi + pad)
}

/// The least number of points a line chart needs: with one point there is no line, only an empty
/// frame with made-up axes, so such a figure belongs in a table.
pub(crate) const MIN_CHART_POINTS: usize = 2;

/// Finite points of a series, in x order.
fn finite_points(s: &Series) -> Vec<(f64, f64)> {
    s.points
        .iter()
        .copied()
        .filter(|&(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// Whether a chart of these series has a line to draw: one line series (dots alone are no curve) with
/// [`MIN_CHART_POINTS`] finite points at different steps.
pub(crate) fn has_line(series: &[Series]) -> bool {
    series.iter().filter(|s| s.line).any(|s| {
        let mut xs: Vec<f64> = finite_points(s).into_iter().map(|p| p.0).collect();
        xs.dedup();
        xs.len() >= MIN_CHART_POINTS
    })
}

/// A line chart of several series over steps, without a legend (the report writes it in HTML below
/// the chart, where it never covers a curve); `None` when no series has a line ([`has_line`]). A
/// line series with a single point (an attempt that logged one step) is drawn as a dot.
pub(crate) fn line_chart(
    title: &str,
    y_desc: &str,
    series: &[Series],
    size: (u32, u32),
) -> Result<Option<String>, ObserveError> {
    if !has_line(series) {
        return Ok(None);
    }
    let all: Vec<(f64, f64)> = series.iter().flat_map(finite_points).collect();
    let (x_lo, x_hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.0), hi.max(p.0))
        });
    let (y_lo, y_hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    // Steps are whole numbers: ticks at least 1 apart, so that no two show the same step.
    let xt = Ticks::new(x_lo, x_hi, 7, 1.0);
    let (y_lo, y_hi) = padded(y_lo, y_hi, true);
    let yt = Ticks::new(y_lo, y_hi, 6, 0.0);
    let y_title = format!("{y_desc}{}", yt.scale_note());

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(title, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, px(14.0)))
            .margin(10)
            .x_label_area_size(38)
            .y_label_area_size(60)
            .build_cartesian_2d(
                TickAxis::new(xt.lo, xt.hi, xt.values.clone()),
                TickAxis::new(yt.lo, yt.hi, yt.values.clone()),
            )
            .map_err(|e| plot_err(title, e))?;
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .axis_style(AXIS)
            .label_style((FONT, px(12.0)))
            .axis_desc_style((FONT, px(12.0)))
            .x_desc("step")
            .y_desc(y_title.as_str())
            .x_label_formatter(&|v| xt.label(*v))
            .y_label_formatter(&|v| yt.label(*v))
            .draw()
            .map_err(|e| plot_err(title, e))?;
        for s in series {
            let points = finite_points(s);
            let color = s.color;
            if s.line && points.len() >= MIN_CHART_POINTS {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| plot_err(title, e))?;
            }
            if s.markers || (s.line && points.len() == 1) {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| plot_err(title, e))?;
            }
        }
        root.present().map_err(|e| plot_err(title, e))?;
    }
    Ok(Some(svg))
}

/// Expert load of one MoE layer: rows are experts, columns step bins, colour the expert's share of the
/// layer's tokens relative to perfect balance (1 / experts).
pub(crate) struct Heatmap {
    pub title: String,
    pub experts: u32,
    /// Step range of each column.
    pub bins: Vec<(f64, f64)>,
    /// `cells[bin][expert]`: mean share of the layer's tokens, `None` where nothing was logged.
    pub cells: Vec<Vec<Option<f64>>>,
}

/// Colour of a share `s` with `n` experts: white at perfect balance, red when overloaded (≥4× at full
/// strength), blue when underloaded, near-black navy when the expert got no tokens at all.
pub(crate) fn balance_color(share: f64, experts: u32) -> RGBColor {
    if !share.is_finite() || share <= 0.0 {
        return RGBColor(8, 29, 88);
    }
    let t = (share * f64::from(experts.max(1))).log2().clamp(-2.0, 2.0) / 2.0;
    let mix = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        RGBColor(
            (a.0 + (b.0 - a.0) * t).round() as u8,
            (a.1 + (b.1 - a.1) * t).round() as u8,
            (a.2 + (b.2 - a.2) * t).round() as u8,
        )
    };
    let white = (247.0, 247.0, 247.0);
    if t >= 0.0 {
        mix(white, (178.0, 24.0, 43.0), t)
    } else {
        mix(white, (33.0, 102.0, 172.0), -t)
    }
}

pub(crate) fn heatmap(h: &Heatmap, width: u32) -> Result<Option<String>, ObserveError> {
    if h.bins.is_empty() || h.experts == 0 {
        return Ok(None);
    }
    let x_lo = h.bins.first().map_or(0.0, |b| b.0);
    let x_hi = h.bins.last().map_or(1.0, |b| b.1).max(x_lo + 1.0);
    let experts = h.experts;
    let height = (70 + 16 * experts).clamp(150, 520);
    // Whole steps inside the drawn bins, and every expert up to 16 labels (then every n-th).
    let xt = Ticks::new(x_lo, x_hi, 7, 1.0);
    let x_ticks: Vec<f64> = xt
        .values
        .iter()
        .copied()
        .filter(|v| (x_lo..=x_hi).contains(v))
        .collect();
    let every = experts.div_ceil(16).max(1);
    let y_ticks: Vec<f64> = (0..experts)
        .step_by(every as usize)
        .map(f64::from)
        .collect();
    let mut svg = String::new();
    {
        let title = h.title.as_str();
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(title, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&h.title, (FONT, px(14.0)))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d(
                TickAxis::new(x_lo, x_hi, x_ticks),
                TickAxis::new(-0.5, f64::from(experts) - 0.5, y_ticks),
            )
            .map_err(|e| plot_err(title, e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .axis_style(AXIS)
            .label_style((FONT, px(11.0)))
            .x_desc("step")
            .x_label_formatter(&|v| xt.label(*v))
            .y_label_formatter(&|v| format!("E{}", v.round() as i64))
            .draw()
            .map_err(|e| plot_err(title, e))?;
        let cells = h.bins.iter().zip(&h.cells).flat_map(|(&(b0, b1), col)| {
            col.iter().enumerate().filter_map(move |(e, share)| {
                share.map(|s| {
                    let y = e as f64;
                    Rectangle::new(
                        [(b0, y - 0.5), (b1, y + 0.5)],
                        balance_color(s, experts).filled(),
                    )
                })
            })
        });
        chart.draw_series(cells).map_err(|e| plot_err(title, e))?;
        root.present().map_err(|e| plot_err(title, e))?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_draws_each_series() {
        let a = Series::line(
            "attempt 1",
            (0..50)
                .map(|i| (i as f64, 10.0 / (1.0 + i as f64)))
                .collect(),
            palette(0),
        );
        let b = Series::dots("val", vec![(0.0, 9.0), (49.0, 1.5)], palette(1));
        let svg = line_chart("loss", "loss", &[a, b], (600, 300))
            .expect("draws")
            .expect("has points");
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("<polyline"), "a line series is a polyline");
        assert!(
            !svg.contains("attempt 1"),
            "the legend is the report's HTML, not part of the SVG"
        );
        assert_eq!(svg.matches("<circle").count(), 2, "two eval dots");
    }

    #[test]
    fn charts_need_two_steps() {
        let s = Series::line("x", vec![(0.0, f64::NAN), (1.0, f64::INFINITY)], palette(0));
        assert!(
            line_chart("t", "y", &[s], (400, 200))
                .expect("no error")
                .is_none()
        );
        let one = Series::line("x", vec![(3.0, 2.0)], palette(0));
        let dots = Series::dots("val", vec![(3.0, 2.5), (7.0, 2.0)], palette(1));
        assert!(
            line_chart("t", "y", &[one, dots], (400, 200))
                .expect("no error")
                .is_none(),
            "one logged step is a number for a table, and eval dots alone are no curve"
        );
        let same_step = Series::line("x", vec![(3.0, 2.0), (3.0, 2.5)], palette(0));
        assert!(
            !has_line(&[same_step]),
            "two values at one step are no line"
        );
        let two = Series::line("x", vec![(3.0, 2.0), (4.0, 2.5)], palette(0));
        let lone = Series::line("attempt 2", vec![(9.0, 1.0)], palette(1));
        let svg = line_chart("t", "y", &[two, lone], (400, 200))
            .expect("no error")
            .expect("two steps draw");
        assert_eq!(
            svg.matches("<circle").count(),
            1,
            "an attempt with one step is a dot"
        );
    }

    #[test]
    fn tick_labels_are_distinct_and_never_minus_zero() {
        let cases: [(f64, f64, usize, f64); 9] = [
            (-1.0, 1.0, 6, 0.0),
            (0.0, 3.0, 7, 1.0),
            (0.0, 300.0, 7, 1.0),
            (5.6001, 5.6003, 6, 0.0),
            (0.0, 3.2e-4, 6, 0.0),
            (9_000.0, 14_000.0, 6, 0.0),
            (0.0, 2.4e6, 6, 0.0),
            (-0.03, 0.27, 6, 0.0),
            (2.0, 2.0, 6, 0.0),
        ];
        for (lo, hi, max, min_step) in cases {
            let t = Ticks::new(lo, hi, max, min_step);
            let labels: Vec<String> = t.values.iter().map(|&v| t.label(v)).collect();
            let mut unique = labels.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{lo}..{hi}: {labels:?}");
            let minus_zero =
                |l: &String| l.starts_with('-') && l[1..].chars().all(|c| c == '0' || c == '.');
            assert!(!labels.iter().any(minus_zero), "{lo}..{hi}: {labels:?}");
            assert!(t.lo <= lo && t.hi >= hi, "{lo}..{hi} inside {t:?}");
            assert!(labels.len() >= 2 && labels.len() <= max + 2, "{labels:?}");
        }
        let steps = Ticks::new(0.0, 3.0, 7, 1.0);
        assert_eq!(
            steps
                .values
                .iter()
                .map(|&v| steps.label(v))
                .collect::<Vec<_>>(),
            ["0", "1", "2", "3"],
            "steps are whole"
        );
        let lr = Ticks::new(0.0, 3.2e-4, 6, 0.0);
        assert_eq!(lr.scale_note(), " (×1e-4)");
        assert_eq!(lr.label(1e-4), "1");
        let tps = Ticks::new(9_000.0, 14_000.0, 6, 0.0);
        assert_eq!(tps.label(12_000.0), "12k");
        assert_eq!(Ticks::new(-1.0, 1.0, 6, 0.0).label(-1e-17), "0");
    }

    #[test]
    fn balance_colours() {
        assert_eq!(
            balance_color(0.25, 4),
            RGBColor(247, 247, 247),
            "perfect balance is neutral"
        );
        assert_eq!(
            balance_color(1.0, 4),
            RGBColor(178, 24, 43),
            "4x overload is full red"
        );
        assert_eq!(
            balance_color(0.0625, 4),
            RGBColor(33, 102, 172),
            "a quarter of the fair share is full blue"
        );
        assert_eq!(balance_color(0.0, 4), RGBColor(8, 29, 88), "dead");
    }

    #[test]
    fn heatmap_has_a_cell_per_value() {
        let h = Heatmap {
            title: "layer 0".into(),
            experts: 3,
            bins: vec![(0.0, 10.0), (10.0, 20.0)],
            cells: vec![
                vec![Some(0.5), Some(0.25), Some(0.25)],
                vec![Some(0.6), None, Some(0.4)],
            ],
        };
        let svg = heatmap(&h, 500).expect("draws").expect("not empty");
        // The background is one rect too.
        assert_eq!(svg.matches("<rect").count(), 1 + 5, "{svg}");
    }
}
