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
    /// Shaded spans of time `[from, to)` with a label: schedule windows.
    pub windows: Vec<(u64, u64, String)>,
    /// Draw each run's allocated backends (a dashed step line on a right axis).
    pub backends: bool,
    /// A second panel under the first, on this span, with its title.
    pub zoom: Option<(u64, u64, String)>,
    /// Label time as days and hours of the trace (`day 3`, `21:00`) rather than hours.
    pub days: bool,
}

impl ChartOptions {
    /// The whole run, at most 1500 points per line, with backends, time in hours.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            from: 0,
            to: u64::MAX,
            max_points: 1500,
            windows: Vec::new(),
            backends: true,
            zoom: None,
            days: false,
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

/// A plot area and the span of time it shows.
struct Panel {
    top: f64,
    height: f64,
    from: u64,
    to: u64,
}

const PLOT_W: f64 = WIDTH - LEFT - RIGHT;

fn polyline(s: &mut String, points: &[(f64, f64)], color: &str, dashed: bool, width: f64) {
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
}

/// `day N` at midnight (day 1 is the trace's first), `HH:MM` otherwise.
fn day_label(t: u64) -> String {
    if t.is_multiple_of(86_400) {
        format!("day {}", t / 86_400 + 1)
    } else {
        format!("{:02}:{:02}", t % 86_400 / 3600, t % 3600 / 60)
    }
}

/// Draws one panel: grid, axes, shaded windows, the load and each run's lines.
fn panel(s: &mut String, results: &[&SimResult], options: &ChartOptions, p: &Panel) {
    let options = ChartOptions {
        from: p.from,
        to: p.to,
        ..options.clone()
    };
    let series: Vec<Vec<SimPoint>> = results.iter().map(|r| chart_points(r, &options)).collect();
    let all = || series.iter().flatten();
    let t0 = all().map(|pt| pt.t).min().unwrap_or(0);
    let t1 = all().map(|pt| pt.t).max().unwrap_or(1).max(t0 + 1);
    let signal_max = all().map(|pt| pt.load.max(pt.capacity)).fold(1.0, f64::max);
    let signal_step = tick_step(signal_max, 6.0);
    let signal_top = (signal_max / signal_step).ceil() * signal_step;
    let backends_max = f64::from(all().map(|pt| pt.allocated).max().unwrap_or(1).max(1));
    let backends_step = tick_step(backends_max, 6.0).max(1.0);
    let backends_top = (backends_max / backends_step).ceil() * backends_step;
    let (top, plot_h) = (p.top, p.height);
    let x = |t: u64| LEFT + (t.clamp(t0, t1) - t0) as f64 / (t1 - t0) as f64 * PLOT_W;
    let y = |v: f64| top + plot_h - v / signal_top * plot_h;
    let yb = |b: f64| top + plot_h - b / backends_top * plot_h;

    for (from, to, label) in &options.windows {
        if *to <= t0 || *from >= t1 {
            continue;
        }
        let (x0, x1) = (x(*from), x(*to));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="#f2c14e" fill-opacity="0.3"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#8a6500">{}</text>"##,
            (x1 - x0).max(2.0),
            x1 + 4.0,
            top + 14.0,
            escape(label)
        );
    }
    // Grid, ticks and labels.
    if options.days {
        let span = t1 - t0;
        let step = [900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400]
            .into_iter()
            .find(|&st| span / st <= 14)
            .unwrap_or(86_400);
        let mut t = t0.div_ceil(step) * step;
        while t <= t1 {
            let px = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="{}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle"{}>{}</text>"##,
                top + plot_h,
                if t.is_multiple_of(86_400) {
                    "#ccc"
                } else {
                    "#eee"
                },
                top + plot_h + 18.0,
                if t.is_multiple_of(86_400) {
                    r#" font-weight="bold""#
                } else {
                    ""
                },
                day_label(t)
            );
            t += step;
        }
    } else {
        let hours = (t1 - t0) as f64 / 3600.0;
        let hour_step = tick_step(hours, 12.0).max(1.0);
        let mut h = 0.0;
        while h <= hours + 1e-9 {
            let px = x(t0 + (h * 3600.0) as u64);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + plot_h,
                top + plot_h + 18.0,
                (t0 as f64 / 3600.0 + h).round()
            );
            h += hour_step;
        }
    }
    let mut v = 0.0;
    while v <= signal_top + 1e-9 {
        let py = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"##,
            LEFT + PLOT_W,
            LEFT - 6.0,
            py + 4.0
        );
        v += signal_step;
    }
    if options.backends {
        let mut b = 0.0;
        while b <= backends_top + 1e-9 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{b}</text>"#,
                LEFT + PLOT_W + 6.0,
                yb(b) + 4.0
            );
            b += backends_step;
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle">backends allocated</text>"#,
            WIDTH - 20.0,
            top + plot_h / 2.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{PLOT_W}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        if options.backends {
            "signal / capacity"
        } else {
            "signal / capacity (serving × target)"
        }
    );

    // Lines: load, then per run capacity and backends.
    if let Some(first) = series.first() {
        let load: Vec<_> = first.iter().map(|pt| (x(pt.t), y(pt.load))).collect();
        polyline(s, &load, "#555", false, 1.0);
    }
    for (i, points) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let capacity: Vec<_> = points.iter().map(|pt| (x(pt.t), y(pt.capacity))).collect();
        polyline(s, &capacity, color, false, 1.6);
        if options.backends {
            let mut steps = Vec::with_capacity(2 * points.len());
            for (j, pt) in points.iter().enumerate() {
                if j > 0 {
                    steps.push((x(pt.t), yb(f64::from(points[j - 1].allocated))));
                }
                steps.push((x(pt.t), yb(f64::from(pt.allocated))));
            }
            polyline(s, &steps, color, true, 1.0);
        }
    }
}

/// Draws one or more runs over the same trace: the load once (from the first run), each run's
/// capacity (serving × target) and, if asked, its allocated backends; the shaded windows; with
/// `zoom`, a second panel on a shorter span.
pub fn chart(results: &[&SimResult], options: &ChartOptions) -> String {
    let height = if options.zoom.is_some() {
        900.0
    } else {
        HEIGHT
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="17" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(&options.title)
    );
    let axis = if options.days {
        "time (trace day, UTC hour)"
    } else {
        "time (hours)"
    };
    match &options.zoom {
        None => {
            panel(
                &mut s,
                results,
                options,
                &Panel {
                    top: TOP,
                    height: HEIGHT - TOP - BOTTOM,
                    from: options.from,
                    to: options.to,
                },
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{axis}</text>"#,
                LEFT + PLOT_W / 2.0,
                HEIGHT - 18.0
            );
        }
        Some((from, to, title)) => {
            panel(
                &mut s,
                results,
                options,
                &Panel {
                    top: TOP + 10.0,
                    height: 340.0,
                    from: options.from,
                    to: options.to,
                },
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="480" font-size="15" text-anchor="middle">{}</text>"#,
                WIDTH / 2.0,
                escape(title)
            );
            panel(
                &mut s,
                results,
                options,
                &Panel {
                    top: 495.0,
                    height: 340.0,
                    from: *from,
                    to: *to,
                },
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{axis}</text>"#,
                LEFT + PLOT_W / 2.0,
                height - 18.0
            );
        }
    }

    let mut legend: Vec<(String, &str, &str)> = vec![("load".into(), "#555", "line")];
    for (i, result) in results.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let capacity = if options.backends {
            format!("{} capacity (serving × target)", result.policy)
        } else {
            format!("{} capacity", result.policy)
        };
        legend.push((capacity, color, "line"));
        if options.backends {
            legend.push((
                format!("{} backends (right axis)", result.policy),
                color,
                "dashed",
            ));
        }
    }
    if !options.windows.is_empty() {
        legend.push(("schedule window".into(), "#f2c14e", "area"));
    }
    for (i, (label, color, kind)) in legend.iter().enumerate() {
        let (lx, ly) = (LEFT + (i % 3) as f64 * 330.0, 42.0 + (i / 3) as f64 * 16.0);
        match *kind {
            "area" => {
                let _ = write!(
                    s,
                    r#"<rect x="{lx}" y="{:.1}" width="24" height="10" fill="{color}" fill-opacity="0.3"/>"#,
                    ly - 5.0
                );
            }
            dashed => {
                let dash = if dashed == "dashed" {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                };
                let _ = write!(
                    s,
                    r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>"#,
                    lx + 24.0
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}
