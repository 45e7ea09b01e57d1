//! SVG plots for the report, drawn with `plotters`' SVG backend into strings that are inlined in the HTML.
//!
//! Text is emitted as SVG `<text>` and laid out by the browser; no fonts are loaded here.

use crate::error::ObserveError;
use plotters::prelude::*;

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

/// Compact axis numbers: `12.3k`, `0.25`, `3.0e-4`.
fn axis_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a < 1e-2 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A range around `lo..hi` with a little air, never empty.
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

/// A line chart of several series over steps; `None` when no series has a finite point.
pub(crate) fn line_chart(
    title: &str,
    y_desc: &str,
    series: &[Series],
    size: (u32, u32),
) -> Result<Option<String>, ObserveError> {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(finite)
        .collect();
    if all.is_empty() {
        return Ok(None);
    }
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
    let (x_lo, x_hi) = if x_hi > x_lo {
        (x_lo, x_hi)
    } else {
        (x_lo - 1.0, x_hi + 1.0)
    };
    let (y_lo, y_hi) = padded(y_lo, y_hi, true);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(title, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, px(15.0)))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(58)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(|e| plot_err(title, e))?;
        chart
            .configure_mesh()
            .light_line_style(GRID)
            .bold_line_style(GRID)
            .axis_style(AXIS)
            .label_style((FONT, px(12.0)))
            .x_desc("step")
            .y_desc(y_desc)
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| axis_num(*v))
            .draw()
            .map_err(|e| plot_err(title, e))?;
        for s in series {
            let points: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
            if points.is_empty() {
                continue;
            }
            let color = s.color;
            if s.line {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| plot_err(title, e))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            if s.markers {
                let anno = chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| plot_err(title, e))?;
                if !s.line {
                    anno.label(s.name.as_str())
                        .legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
                }
            }
        }
        if series.len() > 1 || series.iter().any(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(GRID)
                .label_font((FONT, px(12.0)))
                .draw()
                .map_err(|e| plot_err(title, e))?;
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
            .build_cartesian_2d(x_lo..x_hi, -0.5..(f64::from(experts) - 0.5))
            .map_err(|e| plot_err(title, e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .axis_style(AXIS)
            .label_style((FONT, px(11.0)))
            .x_desc("step")
            .x_labels(8)
            .y_labels((experts as usize).min(16))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("E{:.0}", v))
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
            svg.contains("attempt 1") && svg.contains("\nval\n"),
            "legend entries: {svg}"
        );
        assert_eq!(
            svg.matches("<circle").count(),
            3,
            "two eval dots and one legend dot"
        );
    }

    #[test]
    fn empty_or_non_finite_series_draw_nothing() {
        let s = Series::line("x", vec![(0.0, f64::NAN), (1.0, f64::INFINITY)], palette(0));
        assert!(
            line_chart("t", "y", &[s], (400, 200))
                .expect("no error")
                .is_none()
        );
        let one = Series::line("x", vec![(3.0, 2.0)], palette(0));
        assert!(
            line_chart("t", "y", &[one], (400, 200))
                .expect("no error")
                .is_some(),
            "a single point still gets axes"
        );
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
