//! The loss curve of a run as a PNG: loss against step from the metrics JSONL, the learning
//! rate on a second axis, epoch boundaries dashed. Drawn on a plain RGB canvas with a small
//! built-in 5×7 pixel font (no system fonts needed) and encoded with the `png` crate.
//!
//! The loss axis spans at least [`MIN_SPAN_OF_MEAN`] of the mean loss (and [`MIN_SPAN`]), so a
//! loss that only wobbles draws as the flat line it is instead of noise stretched over the
//! whole height; the axis range and the data range are written above the plot.

use std::path::Path;

use anyhow::{ensure, Context, Result};

use mm_converters::atomic::write_file_atomically;

pub const WIDTH: usize = 960;
pub const HEIGHT: usize = 540;
const LEFT: usize = 84;
const RIGHT: usize = 84;
const TOP: usize = 56;
const BOTTOM: usize = 56;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [225, 225, 225];
const EPOCH: Rgb = [170, 170, 170];
/// The loss line.
pub const LOSS_COLOR: Rgb = [31, 86, 160];
/// The learning-rate line.
pub const LR_COLOR: Rgb = [230, 120, 20];

/// The loss axis spans at least this fraction of the mean loss...
pub const MIN_SPAN_OF_MEAN: f64 = 0.2;
/// ...and at least this much.
pub const MIN_SPAN: f64 = 0.05;

/// The loss axis of a drawn curve: its range and the range of the data on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScale {
    pub axis_lo: f64,
    pub axis_hi: f64,
    pub data_lo: f64,
    pub data_hi: f64,
    /// The data span was below the floor and the axis was widened to it.
    pub widened: bool,
}

impl std::fmt::Display for LossScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "loss axis {} to {}, loss {} to {}", compact(self.axis_lo), compact(self.axis_hi), compact(self.data_lo), compact(self.data_hi))?;
        if self.widened {
            write!(f, " (axis widened to {:.0}% of the mean loss: the loss is nearly flat)", MIN_SPAN_OF_MEAN * 100.0)?;
        }
        Ok(())
    }
}

/// The loss range to draw: the data's, widened about its middle to the floor when narrower
/// (not below 0 when no loss is negative).
fn loss_range(points: &[MetricPoint]) -> (f64, f64, bool) {
    let lo = points.iter().map(|p| p.loss).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.loss).fold(f64::NEG_INFINITY, f64::max);
    let mean = points.iter().map(|p| p.loss).sum::<f64>() / points.len().max(1) as f64;
    let floor = (mean.abs() * MIN_SPAN_OF_MEAN).max(MIN_SPAN);
    if hi - lo >= floor {
        return (lo, hi, false);
    }
    let mid = (lo + hi) / 2.0;
    let (mut a, mut b) = (mid - floor / 2.0, mid + floor / 2.0);
    if a < 0.0 && lo >= 0.0 {
        (a, b) = (0.0, floor.max(hi));
    }
    (a, b, true)
}

/// The loss scale `write_loss_curve` draws for a metrics file (for the line that announces
/// the PNG).
pub fn loss_scale(metrics_jsonl: &Path) -> Result<LossScale> {
    let points = read_metrics(metrics_jsonl)?;
    ensure!(!points.is_empty(), "{}: no metrics to plot", metrics_jsonl.display());
    Ok(scale_of(&points))
}

fn scale_of(points: &[MetricPoint]) -> LossScale {
    let (lo, hi, widened) = loss_range(points);
    let ya = axis(lo, hi, 6, true, 0.0);
    let data_lo = points.iter().map(|p| p.loss).fold(f64::INFINITY, f64::min);
    let data_hi = points.iter().map(|p| p.loss).fold(f64::NEG_INFINITY, f64::max);
    LossScale { axis_lo: ya.lo, axis_hi: ya.hi, data_lo, data_hi, widened }
}

/// One logged point of the metrics file.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub step: f64,
    pub epoch: Option<u64>,
    pub loss: f64,
    pub lr: Option<f64>,
}

/// Reads `step`, `epoch`, `loss`, `lr` from each JSON line. Unreadable lines (a line cut by a
/// kill) are skipped. A resumed run appends from its checkpoint on, so when the step goes
/// back, the points it supersedes are dropped.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricPoint>> {
    read_metric_column(path, "loss")
}

/// [`read_metrics`] with another column (`reward`, `kl`, …) in the points' `loss` field.
pub fn read_metric_column(path: &Path, column: &str) -> Result<Vec<MetricPoint>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut points: Vec<MetricPoint> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(step), Some(loss)) = (v["step"].as_f64(), v[column].as_f64()) else { continue };
        if !step.is_finite() || !loss.is_finite() {
            continue;
        }
        while points.last().is_some_and(|p| p.step >= step) {
            points.pop();
        }
        let lr = v["lr"].as_f64().filter(|x| x.is_finite());
        points.push(MetricPoint { step, epoch: v["epoch"].as_u64(), loss, lr });
    }
    Ok(points)
}

/// Draws `metrics_jsonl` (the trainer's `<stem>.metrics.jsonl`) to `png`, written atomically,
/// and returns its loss scale. Errors when the file holds no metric line.
pub fn write_loss_curve(metrics_jsonl: &Path, png: &Path) -> Result<LossScale> {
    write_metric_curve(metrics_jsonl, "loss", png)
}

/// [`write_loss_curve`] for another column of the metrics file (the RL stages' `reward`).
pub fn write_metric_curve(metrics_jsonl: &Path, column: &str, png: &Path) -> Result<LossScale> {
    let points = read_metric_column(metrics_jsonl, column)?;
    ensure!(!points.is_empty(), "{}: no {column} to plot", metrics_jsonl.display());
    let name = metrics_jsonl.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".metrics.jsonl").or_else(|| name.strip_suffix(".jsonl")).unwrap_or(&name);
    let canvas = render_column(&points, stem, column);
    write_file_atomically(png, mm_converters::output_guard::FileKind::Png, |w| {
        let mut enc = png::Encoder::new(w, canvas.width as u32, canvas.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&canvas.pixels)?;
        writer.finish()?;
        Ok(())
    })
    .with_context(|| format!("writing {}", png.display()))?;
    Ok(scale_of(&points))
}

/// An RGB8 image.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self { width, height, pixels: WHITE.repeat(width * height) }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// Bresenham, `thick` × `thick` pen.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thick: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect(x, y, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn dashed_vline(&mut self, x: i64, y0: i64, y1: i64, c: Rgb) {
        for y in y0..=y1 {
            if (y - y0) % 6 < 3 {
                self.set(x, y, c);
            }
        }
    }

    /// Text in the built-in font (upper case), top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as i64 * 6 * scale;
            for (r, row) in rows.iter().enumerate() {
                for (col, b) in row.bytes().enumerate() {
                    if b == b'#' {
                        self.rect(gx + col as i64 * scale, y + r as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * 6 - 1) * scale
    }
}

/// A linear axis over `lo..hi` with ticks every `step`.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    step: f64,
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Ticks for data in `lo..hi`; `snap` widens the range out to whole ticks, `min_step` bounds
/// the tick spacing from below (whole steps on the x axis).
fn axis(mut lo: f64, mut hi: f64, target: usize, snap: bool, min_step: f64) -> Axis {
    if hi - lo <= 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step((hi - lo) / target as f64).max(min_step);
    if snap {
        lo = (lo / step).floor() * step;
        hi = (hi / step).ceil() * step;
    }
    let mut ticks = Vec::new();
    let mut k = (lo / step - 1e-9).ceil();
    while k * step <= hi + step * 1e-9 {
        ticks.push(k * step);
        k += 1.0;
    }
    Axis { lo, hi, ticks, step }
}

/// A tick label with as many decimals as the spacing needs (scientific when tiny or huge).
fn tick_label(v: f64, step: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        for p in 0..6 {
            let s = format!("{v:.p$e}");
            if (s.parse::<f64>().unwrap_or(f64::NAN) - v).abs() <= step * 1e-3 {
                return s.to_uppercase();
            }
        }
        return format!("{v:.3e}").to_uppercase();
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
    format!("{v:.decimals$}")
}

fn compact(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = if v.abs() >= 1e-3 && v.abs() < 1e6 { format!("{v:.4}") } else { format!("{v:.3e}") };
    s.to_uppercase()
}

/// Draws the chart.
pub fn render(points: &[MetricPoint], stem: &str) -> Canvas {
    render_column(points, stem, "loss")
}

/// [`render`] with `label` naming the plotted column.
pub fn render_column(points: &[MetricPoint], stem: &str, label: &str) -> Canvas {
    let mut c = Canvas::new(WIDTH, HEIGHT);
    let (x0, x1) = (LEFT as i64, (WIDTH - RIGHT) as i64);
    let (y0, y1) = (TOP as i64, (HEIGHT - BOTTOM) as i64);

    let fold = |f: fn(f64, f64) -> f64, init: f64, get: &dyn Fn(&MetricPoint) -> Option<f64>| {
        points.iter().filter_map(get).fold(init, f)
    };
    let xa = axis(
        fold(f64::min, f64::INFINITY, &|p| Some(p.step)),
        fold(f64::max, f64::NEG_INFINITY, &|p| Some(p.step)),
        8,
        false,
        1.0,
    );
    let loss_scale = scale_of(points);
    let (lo, hi, _) = loss_range(points);
    let ya = axis(lo, hi, 6, true, 0.0);
    let has_lr = points.iter().any(|p| p.lr.is_some());
    let lra = has_lr.then(|| axis(0.0, fold(f64::max, f64::NEG_INFINITY, &|p| p.lr).max(0.0), 6, true, 0.0));

    let px = |v: f64| x0 + ((v - xa.lo) / (xa.hi - xa.lo) * (x1 - x0) as f64).round() as i64;
    let py = |v: f64, a: &Axis| y1 - ((v - a.lo) / (a.hi - a.lo) * (y1 - y0) as f64).round() as i64;

    // Grid, frame, ticks and labels.
    for &t in &ya.ticks {
        let y = py(t, &ya);
        c.line((x0, y), (x1, y), 1, GRID);
        c.line((x0 - 4, y), (x0, y), 1, INK);
        let label = tick_label(t, ya.step);
        c.text(x0 - 8 - text_width(&label, 1), y - 3, &label, 1, INK);
    }
    for &t in &xa.ticks {
        let x = px(t);
        c.line((x, y0), (x, y1), 1, GRID);
        c.line((x, y1), (x, y1 + 4), 1, INK);
        let label = tick_label(t, xa.step);
        c.text(x - text_width(&label, 1) / 2, y1 + 9, &label, 1, INK);
    }
    if let Some(lra) = &lra {
        for &t in &lra.ticks {
            let y = py(t, lra);
            c.line((x1, y), (x1 + 4, y), 1, LR_COLOR);
            c.text(x1 + 8, y - 3, &tick_label(t, lra.step), 1, LR_COLOR);
        }
    }
    for w in points.windows(2) {
        if let (Some(a), Some(b)) = (w[0].epoch, w[1].epoch) {
            if b > a {
                c.dashed_vline(px((w[0].step + w[1].step) / 2.0), y0, y1, EPOCH);
            }
        }
    }
    c.line((x0, y0), (x1, y0), 1, INK);
    c.line((x0, y1), (x1, y1), 1, INK);
    c.line((x0, y0), (x0, y1), 1, INK);
    c.line((x1, y0), (x1, y1), 1, INK);

    // Curves: the learning rate under the loss.
    if let Some(lra) = &lra {
        let lr_pts: Vec<(i64, i64)> = points.iter().filter_map(|p| p.lr.map(|lr| (px(p.step), py(lr, lra)))).collect();
        for w in lr_pts.windows(2) {
            c.line(w[0], w[1], 1, LR_COLOR);
        }
    }
    let loss_pts: Vec<(i64, i64)> = points.iter().map(|p| (px(p.step), py(p.loss, &ya))).collect();
    for w in loss_pts.windows(2) {
        c.line(w[0], w[1], 2, LOSS_COLOR);
    }
    if loss_pts.len() <= 30 {
        for &(x, y) in &loss_pts {
            c.rect(x - 2, y - 2, 5, 5, LOSS_COLOR);
        }
    }

    // Title, axis names (which double as the legend).
    let last = points.last().expect("at least one point");
    let title = format!("{stem}: {label} {} at step {}", compact(last.loss), last.step).to_uppercase();
    let scale = if text_width(&title, 2) <= WIDTH as i64 - 16 { 2 } else { 1 };
    c.text((WIDTH as i64 - text_width(&title, scale)) / 2, 14, &title, scale, INK);
    let label = label.to_uppercase();
    c.text(x0, y0 - 16, &label, 1, LOSS_COLOR);
    // The scale in words: axis range, and the data's own range on it.
    let range = format!(
        "AXIS {} TO {}, DATA {} TO {}{}",
        compact(loss_scale.axis_lo),
        compact(loss_scale.axis_hi),
        compact(loss_scale.data_lo),
        compact(loss_scale.data_hi),
        if loss_scale.widened { " (NEARLY FLAT)" } else { "" }
    );
    c.text(x0 + text_width(&label, 1) + text_width("  ", 1), y0 - 16, &range, 1, INK);
    if lra.is_some() {
        c.text(x1 - text_width("LR", 1), y0 - 16, "LR", 1, LR_COLOR);
    }
    c.text((x0 + x1) / 2 - text_width("STEP", 1) / 2, y1 + 26, "STEP", 1, INK);
    c
}

/// 5×7 glyphs of the characters the chart writes; anything else draws as a hollow box.
fn glyph(ch: char) -> [&'static str; 7] {
    match ch.to_ascii_uppercase() {
        ' ' => [".....", ".....", ".....", ".....", ".....", ".....", "....."],
        '0' => [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
        '1' => ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
        '2' => [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
        '3' => ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
        '4' => ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
        '5' => ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
        '6' => ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
        '7' => ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
        '8' => [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
        '9' => [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
        '.' => [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
        ',' => [".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."],
        ':' => [".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."],
        '-' => [".....", ".....", ".....", ".###.", ".....", ".....", "....."],
        '+' => [".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."],
        '_' => [".....", ".....", ".....", ".....", ".....", ".....", "#####"],
        '/' => [".....", "....#", "...#.", "..#..", ".#...", "#....", "....."],
        '(' => ["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."],
        ')' => [".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."],
        '=' => [".....", ".....", "#####", ".....", "#####", ".....", "....."],
        'A' => [".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'B' => ["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."],
        'C' => [".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."],
        'D' => ["###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."],
        'E' => ["#####", "#....", "#....", "####.", "#....", "#....", "#####"],
        'F' => ["#####", "#....", "#....", "####.", "#....", "#....", "#...."],
        'G' => [".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"],
        'H' => ["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'I' => [".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
        'J' => ["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."],
        'K' => ["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"],
        'L' => ["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
        'M' => ["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"],
        'N' => ["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"],
        'O' => [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'P' => ["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."],
        'Q' => [".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"],
        'R' => ["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"],
        'S' => [".####", "#....", "#....", ".###.", "....#", "....#", "####."],
        'T' => ["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
        'U' => ["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'V' => ["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
        'W' => ["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."],
        'X' => ["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"],
        'Y' => ["#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."],
        'Z' => ["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"],
        _ => ["#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn decode(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    #[test]
    fn synthetic_metrics_draw_a_curve() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("pretrain_512.metrics.jsonl");
        let mut f = std::fs::File::create(&metrics).unwrap();
        let total = 400u64;
        for step in (10..=total).step_by(10) {
            let t = step as f64 / total as f64;
            let loss = 2.0 + 6.8 * (-4.0 * t).exp() + 0.05 * ((step as f64) * 0.7).sin();
            let lr = 5e-4 * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * t).cos()));
            let epoch = if step <= total / 2 { 1 } else { 2 };
            writeln!(f, r#"{{"step":{step},"epoch":{epoch},"loss":{loss},"lr":{lr},"tokens_per_s":1000.0,"elapsed_s":1.0,"aux_loss":0.0}}"#).unwrap();
        }
        // A resumed run re-logs from step 300 on: the superseded tail is dropped.
        writeln!(f, r#"{{"step":300,"epoch":2,"loss":2.5,"lr":1e-4}}"#).unwrap();
        writeln!(f, "{{\"step\":31").unwrap(); // a line cut by a kill
        drop(f);
        let pts = read_metrics(&metrics).unwrap();
        assert_eq!(pts.len(), 30);
        assert_eq!(pts.last().unwrap().loss, 2.5);

        let out = dir.path().join("pretrain_512.loss.png");
        write_loss_curve(&metrics, &out).unwrap();
        let (info, buf) = decode(&out);
        assert_eq!((info.width as usize, info.height as usize), (WIDTH, HEIGHT));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let at = |x: usize, y: usize| -> Rgb { buf[(y * WIDTH + x) * 3..(y * WIDTH + x) * 3 + 3].try_into().unwrap() };
        // The loss line crosses every column of the plot area.
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let cols_with_curve = (x0 + 1..x1).filter(|&x| (TOP..HEIGHT - BOTTOM).any(|y| at(x, y) == LOSS_COLOR)).count();
        assert!(cols_with_curve >= (x1 - x0 - 1) * 9 / 10, "curve covers {cols_with_curve} columns");
        // It starts high on the left and ends low on the right.
        let curve_y = |x: usize| (TOP..HEIGHT - BOTTOM).find(|&y| at(x, y) == LOSS_COLOR).unwrap();
        assert!(curve_y(x0 + 2) < curve_y(x1 - 3));
        let dark = buf.chunks(3).filter(|p| p.iter().map(|&v| v as u32).sum::<u32>() < 300).count();
        let orange = buf.chunks(3).filter(|p| *p == LR_COLOR).count();
        assert!(dark > 2000 && orange > 300, "dark {dark}, lr {orange}");
        // Title text in the top band.
        assert!((0..TOP - 20).any(|y| (0..WIDTH).any(|x| at(x, y) == INK)));
    }

    #[test]
    fn one_point_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("m.metrics.jsonl");
        std::fs::write(&metrics, "").unwrap();
        assert!(write_loss_curve(&metrics, &dir.path().join("a.png")).is_err());
        std::fs::write(&metrics, "{\"step\":1,\"loss\":8.9}\n").unwrap();
        write_loss_curve(&metrics, &dir.path().join("b.png")).unwrap();
        let (info, buf) = decode(&dir.path().join("b.png"));
        assert_eq!(info.width as usize, WIDTH);
        assert!(buf.chunks(3).any(|p| p == LOSS_COLOR));
    }

    #[test]
    fn a_nearly_flat_loss_is_drawn_flat_on_a_floored_axis() {
        let flat: Vec<MetricPoint> = (1..=200)
            .map(|i| MetricPoint { step: i as f64, epoch: Some(1), loss: 2.1 + 0.01 * (i as f64 * 0.9).sin(), lr: Some(1e-4) })
            .collect();
        let s = scale_of(&flat);
        assert!(s.widened, "{s:?}");
        assert!(s.axis_hi - s.axis_lo >= MIN_SPAN_OF_MEAN * 2.1, "axis span {} below the floor", s.axis_hi - s.axis_lo);
        assert!(s.axis_lo <= s.data_lo && s.data_hi <= s.axis_hi, "{s:?}");
        assert!(s.to_string().contains("nearly flat"), "{s}");
        // On the image the curve keeps to a thin band, not the whole plot height.
        let c = render(&flat, "flat");
        let rows: Vec<usize> = (TOP..HEIGHT - BOTTOM)
            .filter(|&y| (LEFT + 1..WIDTH - RIGHT).any(|x| c.pixels[(y * WIDTH + x) * 3..][..3] == LOSS_COLOR))
            .collect();
        let band = rows.last().unwrap() - rows.first().unwrap();
        assert!(band < (HEIGHT - TOP - BOTTOM) / 8, "a flat loss spans {band} of {} rows", HEIGHT - TOP - BOTTOM);
        // Near zero the floor is absolute and the axis does not go below 0.
        let tiny: Vec<MetricPoint> = (1..=10).map(|i| MetricPoint { step: i as f64, epoch: None, loss: 1e-4 * i as f64, lr: None }).collect();
        let s = scale_of(&tiny);
        assert!(s.axis_lo == 0.0 && s.axis_hi >= MIN_SPAN, "{s:?}");
        // A real drop is drawn on its own range.
        let drop: Vec<MetricPoint> = (1..=10).map(|i| MetricPoint { step: i as f64, epoch: None, loss: 9.0 - 0.6 * i as f64, lr: None }).collect();
        let s = scale_of(&drop);
        assert!(!s.widened && s.axis_lo <= 3.0 && s.axis_hi >= 8.4 && s.axis_hi - s.axis_lo <= 8.0, "{s:?}");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(0.0005, 0.0001), "5E-4");
        assert_eq!(tick_label(0.00025, 0.00005), "2.5E-4");
        assert_eq!(tick_label(2.5, 0.5), "2.5");
        assert_eq!(tick_label(1200.0, 200.0), "1200");
        assert_eq!(tick_label(0.0, 0.5), "0");
        let a = axis(2.13, 8.87, 6, true, 0.0);
        assert_eq!((a.lo, a.hi, a.step), (2.0, 10.0, 2.0));
        assert_eq!(a.ticks, [2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
