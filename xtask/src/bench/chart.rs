//! Plain SVG bar charts for `cargo xtask bench`: horizontal bars with a label, a value and a
//! note each, grouped in panels that share nothing but the page, optional vertical markers
//! (targets, baselines). No dependencies; every size is in pixels of a fixed-width page.

use std::fmt::Write as _;

/// Page width.
const WIDTH: f64 = 1060.0;
/// Left edge of the bars (labels sit to its left).
const BARS_X: f64 = 290.0;
/// Width of the longest bar's axis.
const BARS_W: f64 = 430.0;
const BAR_H: f64 = 20.0;
const BAR_GAP: f64 = 7.0;
const FONT: &str = "font-family=\"DejaVu Sans, Verdana, sans-serif\"";

/// Colours of the bars.
pub const XDPLB: &str = "#2f6fb0";
pub const BASELINE: &str = "#9a9a9a";
pub const OTHER: &str = "#e08a2c";
pub const PLAIN: &str = "#5a9e5a";

/// One bar.
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Printed at the end of the bar (the value with its unit, a ratio...).
    pub text: String,
    pub color: &'static str,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: f64, text: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            value,
            text: text.into(),
            color: XDPLB,
        }
    }

    pub fn color(mut self, color: &'static str) -> Self {
        self.color = color;
        self
    }
}

/// A group of bars on one axis.
pub struct Panel {
    pub title: String,
    /// The axis unit, printed under the axis.
    pub unit: String,
    pub bars: Vec<Bar>,
    /// Vertical dashed lines: label and value.
    pub markers: Vec<(String, f64)>,
}

impl Panel {
    pub fn new(title: impl Into<String>, unit: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            unit: unit.into(),
            bars: Vec::new(),
            markers: Vec::new(),
        }
    }

    pub fn bar(mut self, bar: Bar) -> Self {
        self.bars.push(bar);
        self
    }

    pub fn bars(mut self, bars: impl IntoIterator<Item = Bar>) -> Self {
        self.bars.extend(bars);
        self
    }

    pub fn marker(mut self, label: impl Into<String>, value: f64) -> Self {
        self.markers.push((label.into(), value));
        self
    }
}

/// The chart: a title, a subtitle (method, machine) and the panels one under the other. Bars
/// with a value that is not a finite number >= 0 are drawn empty, with their text.
pub fn svg(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let mut body = String::new();
    let mut y = 58.0;
    for panel in panels {
        y = draw_panel(&mut body, panel, y) + 18.0;
    }
    let height = y + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" {FONT}>"
    );
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"26\" font-size=\"18\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"45\" font-size=\"11\" fill=\"#555\">{}</text>",
        escape(subtitle)
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

/// Draws `panel` from `top`; returns where it ends.
fn draw_panel(out: &mut String, panel: &Panel, top: f64) -> f64 {
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        top + 14.0,
        escape(&panel.title)
    );
    // Marker labels get a line each between the title and the bars.
    let labels = panel.markers.len() as f64 * 12.0;
    let bars_top = top + 28.0 + labels;
    let bars_bottom = bars_top + panel.bars.len() as f64 * (BAR_H + BAR_GAP);
    let largest = panel
        .bars
        .iter()
        .map(|b| b.value)
        .chain(panel.markers.iter().map(|m| m.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (step, ticks) = axis(largest);
    let top_value = step * ticks as f64;
    let x_of = |v: f64| BARS_X + BARS_W * (v / top_value).clamp(0.0, 1.0);

    // Grid and axis labels.
    for i in 0..=ticks {
        let v = step * i as f64;
        let x = x_of(v);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e3e3e3\"/>",
            bars_top - 4.0,
            bars_bottom
        );
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\" \
             text-anchor=\"middle\">{}</text>",
            bars_bottom + 13.0,
            number(v)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\" \
         text-anchor=\"middle\">{}</text>",
        BARS_X + BARS_W / 2.0,
        bars_bottom + 26.0,
        escape(&panel.unit)
    );

    for (i, bar) in panel.bars.iter().enumerate() {
        let y = bars_top + i as f64 * (BAR_H + BAR_GAP);
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            BARS_X - 8.0,
            y + BAR_H * 0.7,
            escape(&bar.label)
        );
        let end = if bar.value.is_finite() && bar.value > 0.0 {
            let end = x_of(bar.value);
            let _ = writeln!(
                out,
                "<rect x=\"{BARS_X}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR_H}\" \
                 fill=\"{}\"/>",
                (end - BARS_X).max(1.0),
                bar.color
            );
            end
        } else {
            BARS_X
        };
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            end + 5.0,
            y + BAR_H * 0.7,
            escape(&bar.text)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{BARS_X}\" y1=\"{:.1}\" x2=\"{BARS_X}\" y2=\"{bars_bottom:.1}\" \
         stroke=\"#333\"/>",
        bars_top - 4.0
    );
    for (n, (label, value)) in panel.markers.iter().enumerate() {
        if !value.is_finite() {
            continue;
        }
        let x = x_of(*value);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bars_bottom:.1}\" \
             stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>",
            bars_top - 6.0
        );
        // Its label on its own line above the bars, from the line rightwards.
        let label_y = top + 28.0 + 12.0 * n as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" \
             stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>",
            label_y - 2.0,
            bars_top - 6.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{label_y:.1}\" font-size=\"10\" fill=\"#c0392b\">{}</text>",
            x + 3.0,
            escape(label)
        );
    }
    bars_bottom + 30.0
}

/// A tick step (1, 2 or 5 times a power of ten) and the number of ticks that cover `largest`.
fn axis(largest: f64) -> (f64, usize) {
    if largest.is_nan() || largest <= 0.0 {
        return (1.0, 1);
    }
    let rough = largest / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= rough)
        .unwrap_or(10.0 * power);
    let ticks = (largest / step).ceil().max(1.0) as usize;
    (step, ticks)
}

/// An axis number: 1.5k, 2M, 0.25.
fn number(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if v >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if v >= 1e3 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else {
        trim(format!("{v:.3}"))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round_and_cover_the_largest_value() {
        assert_eq!(axis(439.0), (100.0, 5));
        assert_eq!(axis(1_450.0), (500.0, 3));
        assert_eq!(axis(0.9), (0.2, 5));
        assert_eq!(axis(0.0), (1.0, 1));
        for largest in [3.0, 17.0, 99.0, 1234.5, 987_654.0] {
            let (step, ticks) = axis(largest);
            assert!(step * ticks as f64 >= largest, "{largest}");
            assert!(ticks <= 10, "{largest}: {ticks} ticks");
        }
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(1_500.0), "1.5k");
        assert_eq!(number(2_000_000.0), "2M");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(400.0), "400");
    }

    #[test]
    fn a_chart_has_one_rect_per_drawn_bar_and_escapes_text() {
        let panel = Panel::new("ns <per> packet", "ns")
            .bar(Bar::new("a & b", 10.0, "10 ns"))
            .bar(Bar::new("b", 20.0, "20 ns").color(BASELINE))
            .bar(Bar::new("skipped", f64::NAN, "skipped"))
            .marker("target", 15.0);
        let svg = svg("t", "s", &[panel]);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        // The background and two bars; the NaN bar draws no rectangle.
        assert_eq!(svg.matches("<rect ").count(), 3);
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains("ns &lt;per&gt; packet"));
        assert!(!svg.contains("NaN"));
        // The longer bar spans the whole axis (20 is the largest tick: 5 × 4).
        assert!(svg.contains(&format!("width=\"{BARS_W:.1}\"")));
    }
}
