//! PNG pictures: attention maps, temperature sweeps and training curves (plotters, bitmap
//! backend, with the shipped DejaVu Sans Mono font so no system font is needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");
const FONT: &str = "sans-serif";

/// Longest text (BOS included) [`attention_grid`] draws: beyond it the maps are unreadable and
/// the image huge.
pub const MAX_MAP_TOKENS: usize = 256;

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse, so this cannot fail at run time.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

fn draw_err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e}", path.display())
}

/// White (0) to dark blue (1), the "Blues" ramp.
fn blues(x: f64) -> RGBColor {
    let x = x.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * x).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// The largest image drawn (about 400 MB of bitmap).
const MAX_PIXELS: u64 = 128 << 20;

/// One titled attention map per (layer, head): `alpha[layer][head][query][key]`, `tokens` the
/// labels of the positions, `titles[layer][head]` each panel's title.
pub fn attention_grid(path: &Path, tokens: &[String], alpha: &[Vec<Vec<Vec<f64>>>], titles: &[Vec<String>]) -> Result<()> {
    ensure_font();
    let n = tokens.len();
    let (layers, heads) = (alpha.len(), alpha.first().map_or(0, Vec::len));
    if n == 0 || layers == 0 || heads == 0 {
        bail!("nothing to draw: {n} tokens, {layers} layers, {heads} heads");
    }
    if n > MAX_MAP_TOKENS {
        bail!("attention maps are drawn for at most {MAX_MAP_TOKENS} positions, the text has {n}; shorten it");
    }
    let cell = if n <= 16 { 24 } else if n <= 40 { 14 } else if n <= 80 { 10 } else { 6 };
    let label_px = 12 + 7 * tokens.iter().map(|t| t.chars().count()).max().unwrap_or(1).min(8) as u32;
    let (title_px, pad) = (34u32, 12u32);
    let panel_w = (label_px + n as u32 * cell + pad).max(260); // room for the title
    let panel_h = title_px + n as u32 * cell + label_px + pad;
    let (width, height) = (panel_w as u64 * heads as u64, panel_h as u64 * layers as u64);
    if width * height > MAX_PIXELS {
        bail!("{layers} layers x {heads} heads of {n}-token maps make a {width} x {height} image, over the {MAX_PIXELS}-pixel limit; shorten the text");
    }
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(path))?;
    let panels = root.split_evenly((layers, heads));
    for (k, panel) in panels.iter().enumerate() {
        let (l, h) = (k / heads, k % heads);
        draw_attention_panel(panel, tokens, &alpha[l][h], &titles[l][h], cell as i32, label_px as i32, title_px as i32)
            .map_err(draw_err(path))?;
    }
    root.present().map_err(draw_err(path))?;
    Ok(())
}

fn draw_attention_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    tokens: &[String],
    alpha: &[Vec<f64>],
    title: &str,
    cell: i32,
    label_px: i32,
    title_px: i32,
) -> std::result::Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>> {
    let n = tokens.len() as i32;
    let (x0, y0) = (label_px, title_px);
    let title_font = (FONT, 14).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Top));
    area.draw(&Text::new(title.to_string(), (4, 6), title_font))?;
    for (i, row) in alpha.iter().enumerate() {
        for (j, &a) in row.iter().enumerate() {
            let color = if j > i { RGBColor(225, 225, 225) } else { blues(a) };
            let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
            area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], color.filled()))?;
        }
    }
    let font_px = (cell - 2).clamp(9, 14);
    let row_font = (FONT, font_px).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
    let col_font =
        (FONT, font_px).into_font().transform(FontTransform::Rotate90).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, t) in tokens.iter().enumerate() {
        let label: String = t.chars().take(8).collect();
        let mid = i as i32 * cell + cell / 2;
        area.draw(&Text::new(label.clone(), (x0 - 4, y0 + mid), row_font.clone()))?; // queries, down the left
        area.draw(&Text::new(label, (x0 + mid, y0 + n * cell + 4), col_font.clone()))?; // keys, along the bottom
    }
    Ok(())
}

/// A named line of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A short label for an axis value: 0.125, 2, 1.5e-3.
fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draw panels side by side, each with its own y axis: `(title, y label, series)`. With `log_x`
/// the x axis is logarithmic (drawn as log2 x, labelled with x).
pub fn line_panels(path: &Path, x_label: &str, log_x: bool, panels: &[(&str, &str, Vec<Series>)]) -> Result<()> {
    ensure_font();
    let root = BitMapBackend::new(path, (640 * panels.len().max(1) as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(path))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    draw_line_panels(path, &areas, x_label, log_x, panels)?;
    root.present().map_err(draw_err(path))?;
    Ok(())
}

/// [`line_panels`] on the given areas, one panel each, sharing one x range.
fn draw_line_panels(path: &Path, areas: &[DrawingArea<BitMapBackend, Shift>], x_label: &str, log_x: bool, panels: &[(&str, &str, Vec<Series>)]) -> Result<()> {
    let fx = |x: f64| if log_x { x.log2() } else { x };
    let xs: Vec<f64> = panels.iter().flat_map(|p| p.2.iter().flat_map(|s| s.points.iter().map(|p| fx(p.0)))).collect();
    if xs.is_empty() || xs.iter().any(|x| !x.is_finite()) {
        bail!("nothing to draw in {} (no points, or x <= 0 on a log axis)", path.display());
    }
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let pad = if hi > lo { 0.04 * (hi - lo) } else { 1.0 };
    let (x_lo, x_hi) = (lo - pad, hi + pad);
    for (area, (title, y_label, series)) in areas.iter().zip(panels) {
        let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite()).collect();
        let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
        let (lo, hi) = if ys.is_empty() { (0.0, 1.0) } else { (lo, hi) };
        let margin = if hi > lo { 0.06 * (hi - lo) } else { 0.5 };
        let mut chart = ChartBuilder::on(area)
            .caption(*title, (FONT, 18))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_lo..x_hi, (lo - margin)..(hi + margin))
            .map_err(draw_err(path))?;
        let x_fmt = |x: &f64| tick(if log_x { x.exp2() } else { *x });
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(*y_label)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|y: &f64| tick(*y))
            .light_line_style(RGBColor(242, 242, 242))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(draw_err(path))?;
        for (k, s) in series.iter().enumerate() {
            let color = palette[k % palette.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (fx(x), y)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(draw_err(path))?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            if pts.len() <= 40 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw_err(path))?;
            }
        }
        if series.len() < 2 {
            continue; // the panel's title names its one line
        }
        // Put the legend in whichever upper corner the lines leave free.
        let crowded = |left: bool| {
            let pts = series.iter().flat_map(|s| s.points.iter().map(|&(x, y)| (fx(x), y)));
            pts.filter(|&(x, y)| {
                let fx = (x - x_lo) / (x_hi - x_lo);
                (if left { fx < 0.4 } else { fx > 0.6 }) && y > hi - 0.3 * (hi - lo)
            })
            .count()
        };
        let corner = if crowded(false) > crowded(true) { SeriesLabelPosition::UpperLeft } else { SeriesLabelPosition::UpperRight };
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(corner)
            .draw()
            .map_err(draw_err(path))?;
    }
    Ok(())
}


/// Blue (x = -1) through white (0) to red (1).
fn diverging(x: f64) -> RGBColor {
    let x = x.clamp(-1.0, 1.0);
    let (end, w) = if x < 0.0 { ((33.0, 102.0, 172.0), -x) } else { ((178.0, 24.0, 43.0), x) };
    let lerp = |a: f64, b: f64| (a + (b - a) * w).round() as u8;
    RGBColor(lerp(247.0, end.0), lerp(247.0, end.1), lerp(247.0, end.2))
}

/// The phase diagram: on top, a layers x heads grid coloured by ln T*_h (blue below T = 1,
/// red above, each cell labelled with T*); below, one panel per layer of C_h(T) against T (log
/// axis), one line per head.
pub fn phase_picture(path: &Path, t_star: &[Vec<f64>], curves: &[(&str, &str, Vec<Series>)]) -> Result<()> {
    ensure_font();
    let (layers, heads) = (t_star.len(), t_star.first().map_or(0, Vec::len));
    if layers == 0 || heads == 0 || curves.is_empty() {
        bail!("nothing to draw: {layers} layers, {heads} heads");
    }
    let cols = curves.len().min(3);
    let rows = curves.len().div_ceil(cols);
    let cell = (56u32).min(1800 / heads as u32).max(18);
    let map_h = 70 + cell * layers as u32 + 40;
    let width = (640 * cols as u32).max(120 + cell * heads as u32);
    let root = BitMapBackend::new(path, (width, map_h + 440 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(path))?;
    let (top, bottom) = root.split_vertically(map_h);
    let span = t_star.iter().flatten().filter(|t| t.is_finite() && **t > 0.0).map(|t| t.ln().abs()).fold(0.1f64, f64::max);
    let title = format!("peak temperature T* of each head's heat capacity (blue: T* < 1, red: T* > 1, full colour at |ln T*| = {span:.2})");
    let font = (FONT, 15).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Top));
    top.draw(&Text::new(title, (10, 8), font)).map_err(draw_err(path))?;
    let (x0, y0) = (70i32, 50i32);
    let c = cell as i32;
    let small = (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
    let label = (FONT, 13).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
    for (l, row) in t_star.iter().enumerate() {
        top.draw(&Text::new(format!("L{l}"), (x0 - 6, y0 + l as i32 * c + c / 2), label.clone())).map_err(draw_err(path))?;
        for (h, &t) in row.iter().enumerate() {
            let (x, y) = (x0 + h as i32 * c, y0 + l as i32 * c);
            let color = if t.is_finite() && t > 0.0 { diverging(t.ln() / span) } else { RGBColor(200, 200, 200) };
            top.draw(&Rectangle::new([(x, y), (x + c - 1, y + c - 1)], color.filled())).map_err(draw_err(path))?;
            if c >= 30 {
                top.draw(&Text::new(tick(t), (x + c / 2, y + c / 2), small.clone())).map_err(draw_err(path))?;
            }
        }
    }
    let below = (FONT, 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
    for h in 0..heads {
        top.draw(&Text::new(format!("H{h}"), (x0 + h as i32 * c + c / 2, y0 + layers as i32 * c + 4), below.clone())).map_err(draw_err(path))?;
    }
    let areas = bottom.split_evenly((rows, cols));
    draw_line_panels(path, &areas[..curves.len()], "head temperature T (log axis)", true, curves)?;
    root.present().map_err(draw_err(path))?;
    Ok(())
}
