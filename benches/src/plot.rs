//! A latency-by-percentile plot as standalone SVG (x: percentile on a "nines" scale, y: ms).
//! Hand-written: a few polylines need no plotting stack or fonts.

use crate::stats::Stats;

const W: f64 = 800.0;
const H: f64 = 450.0;
const PAD_L: f64 = 70.0;
const PAD_B: f64 = 50.0;
const PAD_T: f64 = 40.0;
const PAD_R: f64 = 20.0;
/// Up to p99.999.
const MAX_NINES: f64 = 5.0;

/// The latency spectrum: (nines, milliseconds) at 101 points from p0 to p99.999.
pub fn spectrum(stats: &Stats) -> Vec<(f64, f64)> {
    let h = &stats.latency;
    if h.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|i| {
            let nines = MAX_NINES * i as f64 / 100.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

/// One line per series (name, stats).
pub fn svg(title: &str, series: &[(&str, &Stats)]) -> String {
    let named: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(n, s)| (*n, spectrum(s))).collect();
    svg_points(title, &named)
}

/// One line per series of (nines, milliseconds) points, as from [`spectrum`].
pub fn svg_points(title: &str, named: &[(&str, Vec<(f64, f64)>)]) -> String {
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let ymax = named
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let x = |n: f64| PAD_L + (W - PAD_L - PAD_R) * n / MAX_NINES;
    let y = |v: f64| H - PAD_B - (H - PAD_B - PAD_T) * v / ymax;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{PAD_L}\" y=\"22\" font-size=\"15\">{}</text>\n",
        escape(title)
    );
    for (i, label) in ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999"]
        .iter()
        .enumerate()
    {
        let xi = x(i as f64);
        out += &format!(
            "<line x1=\"{xi}\" y1=\"{PAD_T}\" x2=\"{xi}\" y2=\"{}\" stroke=\"#ddd\"/>\n<text x=\"{xi}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            H - PAD_B,
            H - PAD_B + 18.0
        );
    }
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let yi = y(v);
        out += &format!(
            "<line x1=\"{PAD_L}\" y1=\"{yi}\" x2=\"{}\" y2=\"{yi}\" stroke=\"#eee\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.2}</text>\n",
            W - PAD_R,
            PAD_L - 6.0,
            yi + 4.0
        );
    }
    out += &format!(
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">latency (ms)</text>\n",
        H / 2.0,
        H / 2.0
    );
    for (i, (name, pts)) in named.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v)))
            .collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        let ly = PAD_T + 16.0 * i as f64 + 10.0;
        out += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{c}\"/><text x=\"{}\" y=\"{ly}\">{}</text>\n",
            PAD_L + 10.0,
            ly - 4.0,
            PAD_L + 28.0,
            escape(name)
        );
    }
    out += "</svg>\n";
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
