//! A hand-written SVG chart of simulation results: load and capacity on the left axis,
//! allocated backends (a step line) on the right axis.

use std::fmt::Write as _;

use super::{SimPoint, SimResult};

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

/// What to draw.
#[derive(Clone, Debug)]
pub struct ChartOptions {
    /// The title.
    pub title: String,
    /// Only points at or after this second.
    pub from: u64,
    /// Only points at or before this second.
    pub to: u64,
    /// At most this many points per line (every k-th recorded point is drawn).
    pub max_points: usize,
}

impl ChartOptions {
    /// The whole run, at most 1500 points per line.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            from: 0,
            to: u64::MAX,
            max_points: 1500,
        }
    }
}

/// The points of a run that a chart draws.
pub fn chart_points(result: &SimResult, options: &ChartOptions) -> Vec<SimPoint> {
    let inside: Vec<SimPoint> = result
        .points
        .iter()
        .copied()
        .filter(|p| p.t >= options.from && p.t <= options.to)
        .collect();
    let stride = inside.len().div_ceil(options.max_points.max(2)).max(1);
    inside.into_iter().step_by(stride).collect()
}

/// "Nice" tick spacing for a range: 1, 2 or 5 × 10^k, about `ticks` ticks.
fn tick_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws one or more runs over the same trace: the load once (from the first run), each run's
/// capacity (serving × target) and its allocated backends.
pub fn chart(results: &[&SimResult], options: &ChartOptions) -> String {
    let series: Vec<Vec<SimPoint>> = results.iter().map(|r| chart_points(r, options)).collect();
    let all = || series.iter().flatten();
    let t0 = all().map(|p| p.t).min().unwrap_or(0);
    let t1 = all().map(|p| p.t).max().unwrap_or(1).max(t0 + 1);
    let signal_max = all().map(|p| p.load.max(p.capacity)).fold(1.0, f64::max);
    let signal_step = tick_step(signal_max, 6.0);
    let signal_top = (signal_max / signal_step).ceil() * signal_step;
    let backends_max = f64::from(all().map(|p| p.allocated).max().unwrap_or(1).max(1));
    let backends_step = tick_step(backends_max, 6.0).max(1.0);
    let backends_top = (backends_max / backends_step).ceil() * backends_step;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: u64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * plot_w;
    let y = |v: f64| TOP + plot_h - v / signal_top * plot_h;
    let yb = |b: f64| TOP + plot_h - b / backends_top * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="17" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(&options.title)
    );
    // Grid, ticks and labels.
    let hours = (t1 - t0) as f64 / 3600.0;
    let hour_step = tick_step(hours, 12.0).max(1.0);
    let mut h = 0.0;
    while h <= hours + 1e-9 {
        let px = x(t0 + (h * 3600.0) as u64);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            (t0 as f64 / 3600.0 + h).round()
        );
        h += hour_step;
    }
    let mut v = 0.0;
    while v <= signal_top + 1e-9 {
        let py = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0
        );
        v += signal_step;
    }
    let mut b = 0.0;
    while b <= backends_top + 1e-9 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{b}</text>"#,
            LEFT + plot_w + 6.0,
            yb(b) + 4.0
        );
        b += backends_step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (hours)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">signal / capacity</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle">backends allocated</text>"#,
        WIDTH - 20.0,
        TOP + plot_h / 2.0
    );

    // Lines: load, then per run capacity and backends.
    let mut legend: Vec<(String, &str, bool)> = Vec::new();
    let polyline =
        |s: &mut String, points: &[(f64, f64)], color: &str, dashed: bool, width: f64| {
            let dash = if dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash} points=""#
            );
            for (i, (px, py)) in points.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                let _ = write!(s, "{sep}{px:.1},{py:.1}");
            }
            let _ = writeln!(s, r#""/>"#);
        };
    if let Some(first) = series.first() {
        let load: Vec<_> = first.iter().map(|p| (x(p.t), y(p.load))).collect();
        polyline(&mut s, &load, "#555", false, 1.0);
        legend.push(("load".into(), "#555", false));
    }
    for (i, (result, points)) in results.iter().zip(&series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let capacity: Vec<_> = points.iter().map(|p| (x(p.t), y(p.capacity))).collect();
        polyline(&mut s, &capacity, color, false, 1.6);
        legend.push((
            format!("{} capacity (serving × target)", result.policy),
            color,
            false,
        ));
        let mut steps = Vec::with_capacity(2 * points.len());
        for (j, p) in points.iter().enumerate() {
            if j > 0 {
                steps.push((x(p.t), yb(f64::from(points[j - 1].allocated))));
            }
            steps.push((x(p.t), yb(f64::from(p.allocated))));
        }
        polyline(&mut s, &steps, color, true, 1.0);
        legend.push((
            format!("{} backends (right axis)", result.policy),
            color,
            true,
        ));
    }
    for (i, (label, color, dashed)) in legend.iter().enumerate() {
        let (lx, ly) = (LEFT + (i % 3) as f64 * 330.0, 42.0 + (i / 3) as f64 * 16.0);
        let dash = if *dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}
