//! `thermoformer inspect`: per-head thermodynamics of a text, attention maps, temperature sweeps.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{check_temperature, validation_tokens, ModelArgs};
use crate::checkpoint::Loaded;
use crate::data;
use crate::error::UsageError;
use crate::physics::inspect::{self, Selection, SweepPoint, TextInspection};
use crate::plot::{self, Series};

/// Options of `thermoformer inspect`.
// The doc comments are --help text, in the physics notation <E> that rustdoc would read as HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["text", "sweep", "rope"])))]
pub struct InspectArgs {
    /// Text to read (as BOS + tokens; at most context-1 tokens). For every layer and head prints:
    /// T, mean entropy H (nats), H/ln(keys allowed), <exp H> (effective keys), mean ln Z, mean
    /// energy <E> under alpha (E_ij = -beta_0 q_i.k_j, beta_0 = 1/sqrt(d_head) for most families), heat capacity C = beta^2 Var(E), each
    /// averaged over query positions (the first, with one key, left out of H/ln n), and the largest
    /// |H - beta<E> - ln Z| over the rows.
    #[arg(long)]
    pub text: Option<String>,
    /// Sweep the global attention temperature (every head set to T) over these values, e.g.
    /// 0.25,0.5,1,2,4: energy per token and mean attention entropy on a fixed slice of the
    /// validation split.
    #[arg(long, value_name = "T1,T2,...", value_delimiter = ',', conflicts_with_all = ["text", "attn_temperature", "head_temperature"])]
    pub sweep: Option<Vec<f64>>,
    /// How far each head looks: per head, the mean score s_ij against the relative distance
    /// i - j (the JSON adds the mean attention weight at each distance), and the mean attended
    /// distance, on a fixed slice of the validation split. With rotary positions (`train --positions rope`) scores depend on position only
    /// through i - j, so this is each head's whole positional profile; learned-position models
    /// get the same table for comparison.
    #[arg(long, conflicts_with_all = ["text", "sweep"])]
    pub rope: bool,
    /// Corpus for --sweep and --rope [default: the checkpoint's training corpus]; split as in
    /// training.
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Validation windows (BOS + context-1 tokens, evenly spaced over the split) for --sweep and
    /// --rope [default: 32, or 8192 tokens' worth for long contexts, at least 4: 8 windows at
    /// GPT-2's context of 1024].
    #[arg(long)]
    pub windows: Option<usize>,
    /// Report only these layers (0-based, e.g. 0,5) in --text and --rope: the table, the JSON and
    /// the attention maps [default: every layer].
    #[arg(long, value_name = "L1,L2,...", value_delimiter = ',', conflicts_with = "sweep")]
    pub layers: Option<Vec<usize>>,
    /// Report only these heads (0-based, e.g. 3 or 0,1) of each reported layer, in --text and
    /// --rope [default: every head].
    #[arg(long, value_name = "H1,H2,...", value_delimiter = ',', conflicts_with = "sweep")]
    pub heads: Option<Vec<usize>>,
    /// Write a PNG: with --text, a grid of attention maps (layers x heads, tokens on the axes, T
    /// and H in each title); with --sweep, energy per token and entropy against T (log axis); with
    /// --rope, the mean score against distance, one panel per layer, one line per head.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// With --text: also write one self-contained HTML file (no network, no server) with every
    /// selected head's attention map and a temperature slider per head that recomputes the
    /// head's weights, H, ln Z, <E> and C in the browser from the stored energies.
    #[arg(long, value_name = "FILE", requires = "text")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub report: super::ReportArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `thermoformer inspect`.
pub fn run_inspect(args: &InspectArgs) -> Result<()> {
    if let Some(png) = &args.png {
        super::png_path("--png", png)?;
    }
    if (args.sweep.is_some() || args.rope) && args.windows == Some(0) {
        return Err(UsageError("--windows must be at least 1".into()).into());
    }
    if args.text.is_some() && args.corpus.is_some() {
        return Err(UsageError("--corpus is for --sweep and --rope; --text reads only the given text".into()).into());
    }
    let selection = Selection { layers: args.layers.clone(), heads: args.heads.clone() };
    if args.rope {
        let loaded = args.model.load()?;
        selection.check(loaded.config.model.n_layer, loaded.config.model.n_head).map_err(|e| UsageError(e.to_string()))?;
        return run_rope(args, &loaded, &selection);
    }
    if let Some(temps) = &args.sweep {
        for &t in temps {
            check_temperature("--sweep temperatures", t)?;
        }
        let mut temps = temps.clone();
        temps.sort_by(f64::total_cmp);
        temps.dedup();
        let loaded = args.model.load()?;
        return run_sweep(args, &loaded, &temps);
    }
    let text = args.text.as_deref().unwrap_or_default();
    let loaded = args.model.load()?;
    selection.check(loaded.config.model.n_layer, loaded.config.model.n_head).map_err(|e| UsageError(e.to_string()))?;
    let mut report = inspect::inspect_text(&loaded.model, &loaded.tokenizer, text)?;
    report.select(&selection);
    let mut out = std::io::stdout().lock();
    match args.report.format() {
        super::ReportFormat::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        super::ReportFormat::Table => write_heads(&mut out, &report)?,
    }
    if let Some(png) = &args.png {
        let titles: Vec<Vec<String>> = (0..report.alpha.len())
            .map(|l| {
                (0..report.alpha[l].len())
                    .map(|h| {
                        let s = &report.heads[l * report.alpha[l].len() + h];
                        format!("L{} H{}  T={:.3}  H={:.3}", s.layer, s.head, s.temperature, s.entropy)
                    })
                    .collect()
            })
            .collect();
        plot::attention_grid(png, &report.labels, &report.alpha, &titles)?;
        crate::progress::note(format!("attention maps written to {}", png.display()));
    }
    if let Some(html) = &args.html {
        let title = format!("{}: {:?}", args.model.checkpoint.display(), text);
        crate::serve::export::write_html(html, &report, &title)?;
        crate::progress::note(format!("head grid written to {}", html.display()));
    }
    Ok(())
}

fn write_heads(out: &mut impl Write, r: &TextInspection) -> Result<()> {
    writeln!(out, "{} positions (BOS + {} tokens)", r.tokens.len(), r.tokens.len() - 1)?;
    writeln!(
        out,
        "{:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9}",
        "layer", "head", "T", "H", "H/ln n", "<exp H>", "ln Z", "<E>", "C", "|resid|"
    )?;
    for h in &r.heads {
        writeln!(
            out,
            "{:>5} {:>4} {:>8.4} {:>8.4} {:>8} {:>8.3} {:>9.4} {:>9.4} {:>8.4} {:>9.1e}",
            h.layer,
            h.head,
            h.temperature,
            h.entropy,
            // undefined when no query has two keys (an empty text)
            if h.normalized_entropy.is_finite() { format!("{:.4}", h.normalized_entropy) } else { "-".into() },
            h.effective_keys,
            h.ln_z,
            h.mean_energy,
            h.heat_capacity,
            h.identity_residual
        )?;
    }
    Ok(())
}

/// Distances shown in the --rope table (those inside the context).
const TABLE_DISTANCES: [usize; 8] = [0, 1, 2, 4, 8, 16, 32, 64];

/// Validation windows per forward pass of --sweep and --rope, at most.
const WINDOW_BATCH: usize = 16;

/// The windows of --sweep and --rope: as asked, else 32, or 8192 tokens' worth (at least 4) for
/// long contexts; in passes whose statistics fit in memory.
fn stats_batches(args: &InspectArgs, loaded: &Loaded, val: data::Tokens) -> Result<Vec<data::Batch>> {
    let cfg = &loaded.config.model;
    let windows = args.windows.unwrap_or_else(|| (8192 / cfg.context).clamp(4, 32));
    let per_pass = inspect::stats_windows_per_pass(cfg, WINDOW_BATCH);
    data::tiled_batches(val, Some(windows), per_pass, cfg.context, loaded.tokenizer.bos(), loaded.model.device())
}

fn run_rope(args: &InspectArgs, loaded: &Loaded, selection: &Selection) -> Result<()> {
    let v = validation_tokens(loaded, args.corpus.as_ref(), "inspect --rope")?;
    let (name, val) = (v.corpus.clone(), v.tokens());
    let context = loaded.config.model.context;
    let batches = stats_batches(args, loaded, val)?;
    let windows: usize = batches.iter().map(|b| b.inputs.dims()[0]).sum();
    let mut profiles = inspect::distance_profiles(&loaded.model, &batches)?;
    profiles.retain(|p| selection.keeps(p.layer, p.head));
    let positions = format!("{:?}", loaded.config.model.positions).to_lowercase();
    let mut out = std::io::stdout().lock();
    match args.report.format() {
        super::ReportFormat::Json => {
            let v = serde_json::json!({ "corpus": name, "windows": windows, "context": context, "positions": positions, "heads": profiles });
            writeln!(out, "{v}")?;
        }
        super::ReportFormat::Table => {
            writeln!(out, "{windows} validation windows of {context} tokens from {name}; positions: {positions}")?;
            writeln!(out, "mean score s_ij = beta_0 q_i.k_j at distance d = i - j, and the mean attended distance <d>")?;
            let ds: Vec<usize> = TABLE_DISTANCES.iter().copied().filter(|&d| d < context).chain(std::iter::once(context - 1)).collect();
            let mut ds = ds;
            ds.dedup();
            write!(out, "{:>5} {:>4} {:>8} {:>7}", "layer", "head", "T", "<d>")?;
            for d in &ds {
                write!(out, " {:>8}", format!("s(d={d})"))?;
            }
            writeln!(out)?;
            for p in &profiles {
                write!(out, "{:>5} {:>4} {:>8.4} {:>7.2}", p.layer, p.head, p.temperature, p.mean_distance)?;
                for &d in &ds {
                    write!(out, " {:>8.3}", p.mean_score[d])?;
                }
                writeln!(out)?;
            }
        }
    }
    if let Some(png) = &args.png {
        let n_layer = loaded.config.model.n_layer;
        let names: Vec<String> = profiles.iter().map(|p| format!("head {} (T={:.2}, <d>={:.1})", p.head, p.temperature, p.mean_distance)).collect();
        let titles: Vec<String> = (0..n_layer).map(|l| format!("layer {l}: mean score vs distance ({positions})")).collect();
        let panels: Vec<(&str, &str, Vec<Series>)> = (0..n_layer)
            .filter(|&l| profiles.iter().any(|p| p.layer == l))
            .map(|l| {
                let series = profiles
                    .iter()
                    .zip(&names)
                    .filter(|(p, _)| p.layer == l)
                    .map(|(p, n)| Series { name: n, points: p.mean_score.iter().enumerate().map(|(d, &s)| (d as f64, s)).collect() })
                    .collect();
                (titles[l].as_str(), "mean score s_ij", series)
            })
            .collect();
        plot::line_panels(png, "distance i - j (tokens)", false, &panels)?;
        crate::progress::note(format!("distance profile written to {}", png.display()));
    }
    Ok(())
}

fn run_sweep(args: &InspectArgs, loaded: &Loaded, temps: &[f64]) -> Result<()> {
    let v = validation_tokens(loaded, args.corpus.as_ref(), "the sweep")?;
    let (name, val) = (v.corpus.clone(), v.tokens());
    let context = loaded.config.model.context;
    let batches = stats_batches(args, loaded, val)?;
    let windows: usize = batches.iter().map(|b| b.inputs.dims()[0]).sum();
    let points = inspect::sweep(&loaded.model, &batches, temps, true)?;
    let mut out = std::io::stdout().lock();
    match args.report.format() {
        super::ReportFormat::Json => {
            let v = serde_json::json!({ "corpus": name, "windows": windows, "context": context, "points": points });
            writeln!(out, "{v}")?;
        }
        super::ReportFormat::Table => {
            writeln!(out, "{windows} validation windows of {context} tokens from {name}")?;
            writeln!(out, "{:>9} {:>10} {:>9} {:>8} {:>9}", "T", "E/token", "H", "H/ln n", "C")?;
            for p in &points {
                writeln!(
                    out,
                    "{:>9.4} {:>10.4} {:>9.4} {:>8.4} {:>9.4}",
                    p.temperature, p.energy_per_token, p.entropy, p.normalized_entropy, p.heat_capacity
                )?;
            }
        }
    }
    if let Some(png) = &args.png {
        let series = |f: fn(&SweepPoint) -> f64| points.iter().map(|p| (p.temperature, f(p))).collect::<Vec<_>>();
        plot::line_panels(
            png,
            "attention temperature T (every head)",
            true,
            &[
                ("validation energy per token", "nats/token", vec![Series { name: "E/token", points: series(|p| p.energy_per_token) }]),
                (
                    "mean attention entropy",
                    "nats",
                    vec![
                        Series { name: "H", points: series(|p| p.entropy) },
                        Series { name: "H / ln n", points: series(|p| p.normalized_entropy) },
                    ],
                ),
            ],
        )?;
        crate::progress::note(format!("sweep plot written to {}", png.display()));
    }
    Ok(())
}
