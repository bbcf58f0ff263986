//! `inspect --text ... --html FILE`: one self-contained HTML file with the head grid of a text,
//! whose sliders recompute each head's attention in the browser from the stored energies
//! (alpha_ij = exp(-beta E_ij) / Z_i with E_ij = -s_ij), so it needs no server and no network.
//!
//! Only attention quantities are recomputed: a head's weights, H, H/ln n, ln Z, `<E>` and C at the
//! slider's temperature, which depend on that head's own scores alone. What a temperature does
//! downstream (later layers, the token energies) needs the model: that is `thermoformer serve`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::physics::inspect::TextInspection;

const TEMPLATE: &str = include_str!("page/export.html");

#[derive(Serialize)]
struct Data<'a> {
    title: &'a str,
    tokens: &'a [String],
    slider_range: (f64, f64),
    heads: Vec<Head>,
}

#[derive(Serialize)]
struct Head {
    layer: usize,
    head: usize,
    temperature: f64,
    /// E_ij for j <= i, rounded to 1e-6 (the file's size; the readouts move by about 1e-6).
    energies: Vec<Vec<f64>>,
}

/// Write `report`'s heads (those it kept) into the HTML file `path`.
pub fn write_html(path: &Path, report: &TextInspection, title: &str) -> Result<()> {
    let mut heads = Vec::new();
    let mut summaries = report.heads.iter();
    for layer in &report.energies {
        for energies in layer {
            let s = summaries.next().context("a head without its summary")?;
            let energies = energies.iter().map(|row| row.iter().map(|e| (e * 1e6).round() / 1e6).collect()).collect();
            heads.push(Head { layer: s.layer, head: s.head, temperature: s.temperature, energies });
        }
    }
    let data = Data { title, tokens: &report.labels, slider_range: super::api::SLIDER_RANGE, heads };
    // Inside a <script> element, "</" would end it early.
    let json = serde_json::to_string(&data)?.replace("</", "<\\/");
    let html = TEMPLATE.replace("\"__THERMOFORMER_DATA__\"", &json).replace("__THERMOFORMER_TITLE__", &html_escape(title));
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
