//! `thermoformer inspect`: per-head thermodynamics of a text, attention maps, temperature sweeps.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{check_temperature, validation_tokens, ModelArgs};
use crate::checkpoint::Loaded;
use crate::data;
use crate::error::UsageError;
use crate::physics::inspect::{self, Selection, SweepPoint, TextInspection};
use crate::physics::phase::{self, PhaseDiagram};
use crate::physics::response::{self, EnergySample, HeadResponse, Response};
use crate::plot::{self, Series};

/// Options of `thermoformer inspect`.
// The doc comments are --help text, in the physics notation <E> that rustdoc would read as HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["text", "sweep", "rope", "response", "phase"])))]
pub struct InspectArgs {
    /// Text to read (as BOS + tokens; at most context-1 tokens). For every layer and head prints:
    /// T, mean entropy H (nats), H/ln(keys allowed), <exp H> (effective keys), mean ln Z, mean
    /// energy <E> under alpha (E_ij = -beta_0 q_i.k_j, beta_0 = 1/sqrt(d_head) for most families), heat capacity C = beta^2 Var(E), each
    /// averaged over query positions (the first, with one key, left out of H/ln n), and the largest
    /// |H - beta<E> - ln Z| over the rows.
    #[arg(long)]
    pub text: Option<String>,
    /// Response functions of every head: the susceptibility chi = dE/d ln T_h (all heads from one
    /// backward pass), and E with the head at T = infinity (uniform weights over its keys) and at
    /// T -> 0 (all weight on its top-scoring key), each minus E, in nats. With --text, E is
    /// -ln p(text) as `score` prints it; without, the mean energy of the validation windows of
    /// --corpus. A table ranked by |chi| (JSON: susceptibility, ablated_hot and ablated_cold in
    /// each head's entry). The ablations cost two forward passes per head: bound them with
    /// --layers and --heads.
    #[arg(long, conflicts_with_all = ["sweep", "rope"])]
    pub response: bool,
    /// Phase diagram: each head's heat capacity C(T) over --grid, its levels E_ij held as read
    /// at the trained temperatures, with the peak T* and its height, and the start-token sink
    /// along T. On --text, else on validation windows. With --png, a picture: layers x heads
    /// coloured by ln T*, and C(T) per layer.
    #[arg(long, conflicts_with_all = ["sweep", "rope"])]
    pub phase: bool,
    /// The temperature grid of --phase: LOW,HIGH,POINTS, evenly spaced in ln T.
    #[arg(long, value_name = "LO,HI,N", value_delimiter = ',', default_value = "0.01,100,81", requires = "phase")]
    pub grid: Vec<f64>,
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
    /// Corpus for --sweep, --rope, and --response or --phase without --text [default: the checkpoint's training corpus]; split as in
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
    /// Write a PNG: with --phase, the phase diagram; with --text, a grid of attention maps (layers x heads, tokens on the axes, T
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
    #[command(flatten)]
    pub length: super::LengthScalingArgs,
}

/// `thermoformer inspect`.
pub fn run_inspect(args: &InspectArgs) -> Result<()> {
    if let Some(png) = &args.png {
        super::png_path("--png", png)?;
    }
    if args.windows == Some(0) {
        return Err(UsageError("--windows must be at least 1".into()).into());
    }
    if args.text.is_some() && args.corpus.is_some() {
        return Err(UsageError("--corpus is for --sweep, --rope, --response and --phase; --text reads only the given text".into()).into());
    }
    if args.html.is_some() && args.length.log_n_scaling != 0.0 {
        return Err(UsageError("--html recomputes heads at one temperature per head; it does not take --log-n-scaling".into()).into());
    }
    let grid = if args.phase { Some(phase_grid(&args.grid)?) } else { None };
    let selection = Selection { layers: args.layers.clone(), heads: args.heads.clone() };
    if args.rope {
        let loaded = load(args)?;
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
        let loaded = load(args)?;
        return run_sweep(args, &loaded, &temps);
    }
    let loaded = load(args)?;
    selection.check(loaded.config.model.n_layer, loaded.config.model.n_head).map_err(|e| UsageError(e.to_string()))?;
    let Some(text) = args.text.as_deref() else {
        return run_windows(args, &loaded, &selection, grid.as_deref());
    };
    let ids = loaded.tokenizer.encode(text)?;
    let (mut report, _, stats) = inspect::inspect_pass(&loaded.model, &loaded.tokenizer, &ids)?;
    report.select(&selection);
    let response = if args.response {
        let sample = EnergySample::text(&loaded.model, loaded.tokenizer.bos(), &ids)?;
        Some(response::response(&loaded.model, &sample, &selection, true)?)
    } else {
        None
    };
    let phase = grid.as_deref().map(|g| phase::phase_diagram(&stats, g)).transpose()?;
    let lab = Lab::new(response, phase, &selection);
    let mut out = std::io::stdout().lock();
    match args.report.format() {
        super::ReportFormat::Json => {
            let mut v = serde_json::to_value(&report)?;
            lab.merge_json(&mut v)?;
            writeln!(out, "{v}")?
        }
        super::ReportFormat::Table => {
            write_heads(&mut out, &report)?;
            lab.write_tables(&mut out, &format!("-ln p of the text, {} tokens", ids.len()))?;
        }
    }
    if let (Some(png), Some(phase)) = (&args.png, &lab.phase) {
        write_phase_png(png, phase)?;
    } else if let Some(png) = &args.png {
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

/// The checkpoint with the temperature overrides and the length scaling applied.
fn load(args: &InspectArgs) -> Result<Loaded> {
    let mut loaded = args.model.load()?;
    args.length.apply(&mut loaded.model)?;
    Ok(loaded)
}

/// `--grid LO,HI,N` as temperatures.
fn phase_grid(g: &[f64]) -> Result<Vec<f64>> {
    let bad = || UsageError(format!("--grid takes LOW,HIGH,POINTS with 0 < LOW < HIGH and 3 to {} points, got {g:?}", phase::MAX_GRID_POINTS));
    let [lo, hi, n] = g else { return Err(bad().into()) };
    if n.fract() != 0.0 {
        return Err(bad().into()); // NaN and infinities too; log_grid checks the range
    }
    phase::log_grid(*lo, *hi, *n as usize).map_err(|_| bad().into())
}

/// What --response and --phase measured, for the selected heads.
struct Lab {
    response: Option<Response>,
    phase: Option<PhaseDiagram>,
}

impl Lab {
    /// The measurements, the phase diagram cut to the selected heads.
    fn new(response: Option<Response>, mut phase: Option<PhaseDiagram>, selection: &Selection) -> Self {
        if let Some(p) = phase.as_mut() {
            p.heads.retain(|h| selection.keeps(h.layer, h.head));
        }
        Self { response, phase }
    }

    /// Add each head's responses and phase peak to its entry of `v["heads"]`, and the sample's E
    /// and the phase curves at the top.
    fn merge_json(&self, v: &mut serde_json::Value) -> Result<()> {
        let heads = v["heads"].as_array_mut().ok_or_else(|| anyhow::anyhow!("a report without heads"))?;
        for entry in heads.iter_mut() {
            let (l, h) = (entry["layer"].as_u64().unwrap_or(0) as usize, entry["head"].as_u64().unwrap_or(0) as usize);
            if let Some(r) = self.response.as_ref().and_then(|r| r.heads.iter().find(|x| x.layer == l && x.head == h)) {
                entry["susceptibility"] = r.susceptibility.into();
                entry["ablated_hot"] = r.ablated_hot.into();
                entry["ablated_cold"] = r.ablated_cold.into();
            }
            if let Some(p) = self.phase.as_ref().and_then(|p| p.heads.iter().find(|x| x.layer == l && x.head == h)) {
                entry["t_star"] = p.t_star.into();
                entry["c_star"] = p.c_star.into();
                entry["peak_in_grid"] = p.peak_in_grid.into();
            }
        }
        if let Some(r) = &self.response {
            v["energy"] = r.energy.into();
            v["response"] = serde_json::json!({
                "sequences": r.sequences,
                "tokens": r.tokens,
                "seconds_susceptibility": r.seconds_susceptibility,
                "seconds_ablation": r.seconds_ablation,
            });
        }
        if let Some(p) = &self.phase {
            v["phase"] = serde_json::to_value(p)?;
        }
        Ok(())
    }

    fn write_tables(&self, out: &mut impl Write, what_e: &str) -> Result<()> {
        if let Some(r) = &self.response {
            writeln!(out)?;
            writeln!(
                out,
                "E = {:.4} nats ({what_e}); chi in {:.2} s, {} ablations in {:.2} s",
                r.energy,
                r.seconds_susceptibility,
                2 * r.heads.len(),
                r.seconds_ablation
            )?;
            writeln!(out, "heads ranked by |chi|; chi = dE/d ln T_h, hot = E(T_h = inf) - E, cold = E(T_h -> 0) - E, nats")?;
            writeln!(out, "{:>4} {:>5} {:>4} {:>8} {:>10} {:>10} {:>10}", "rank", "layer", "head", "T", "chi", "hot", "cold")?;
            let mut ranked: Vec<&HeadResponse> = r.heads.iter().collect();
            ranked.sort_by(|a, b| b.susceptibility.abs().total_cmp(&a.susceptibility.abs()));
            for (k, h) in ranked.iter().enumerate() {
                writeln!(
                    out,
                    "{:>4} {:>5} {:>4} {:>8.4} {:>10.4} {:>10.4} {:>10.4}",
                    k + 1,
                    h.layer,
                    h.head,
                    h.temperature,
                    h.susceptibility,
                    h.ablated_hot,
                    h.ablated_cold
                )?;
            }
        }
        if let Some(p) = &self.phase {
            let (lo, hi) = (p.temperatures[0], p.temperatures[p.temperatures.len() - 1]);
            writeln!(out)?;
            writeln!(out, "phase diagram: C(T) of each head on {} temperatures from {lo} to {hi}, over {} query rows per head", p.temperatures.len(), p.rows)?;
            writeln!(out, "{:>5} {:>4} {:>8} {:>9} {:>9} {:>12}", "layer", "head", "T", "T*", "C(T*)", "ln(T*/T)")?;
            for h in &p.heads {
                let edge = if h.peak_in_grid { "" } else { " (at the grid's end)" };
                writeln!(out, "{:>5} {:>4} {:>8.4} {:>9.4} {:>9.4} {:>12.3}{edge}", h.layer, h.head, h.temperature, h.t_star, h.c_star, (h.t_star / h.temperature).ln())?;
            }
        }
        Ok(())
    }
}

/// The phase diagram as a picture.
fn write_phase_png(png: &std::path::Path, p: &PhaseDiagram) -> Result<()> {
    let layers: Vec<usize> = {
        let mut l: Vec<usize> = p.heads.iter().map(|h| h.layer).collect();
        l.dedup();
        l
    };
    let t_star: Vec<Vec<f64>> = layers.iter().map(|&l| p.heads.iter().filter(|h| h.layer == l).map(|h| h.t_star).collect()).collect();
    let names: Vec<String> = p.heads.iter().map(|h| format!("head {} (T*={:.2})", h.head, h.t_star)).collect();
    let titles: Vec<String> = layers.iter().map(|l| format!("layer {l}: heat capacity C(T)")).collect();
    let curves: Vec<(&str, &str, Vec<Series>)> = layers
        .iter()
        .zip(&titles)
        .map(|(&l, title)| {
            let series = p
                .heads
                .iter()
                .zip(&names)
                .filter(|(h, _)| h.layer == l)
                .map(|(h, n)| Series { name: n, points: p.temperatures.iter().copied().zip(h.heat_capacity.iter().copied()).collect() })
                .collect();
            (title.as_str(), "C = beta^2 Var(E)", series)
        })
        .collect();
    plot::phase_picture(png, &t_star, &curves)?;
    crate::progress::note(format!("phase diagram written to {}", png.display()));
    Ok(())
}

/// --response and --phase without --text: on validation windows.
fn run_windows(args: &InspectArgs, loaded: &Loaded, selection: &Selection, grid: Option<&[f64]>) -> Result<()> {
    let v = validation_tokens(loaded, args.corpus.as_ref(), "inspect --response/--phase")?;
    let (name, val) = (v.corpus.clone(), v.tokens());
    let context = loaded.config.model.context;
    let batches = stats_batches(args, loaded, val)?;
    let windows: usize = batches.iter().map(|b| b.inputs.dims()[0]).sum();
    let (mut heads, phase) = inspect::read_windows(&loaded.model, &batches, grid)?;
    heads.retain(|h| selection.keeps(h.layer, h.head));
    let response = if args.response { Some(response::response(&loaded.model, &EnergySample::windows(&batches)?, selection, true)?) } else { None };
    let lab = Lab::new(response, phase, selection);
    let mut out = std::io::stdout().lock();
    match args.report.format() {
        super::ReportFormat::Json => {
            let mut v = serde_json::json!({ "corpus": name, "windows": windows, "context": context, "heads": heads });
            lab.merge_json(&mut v)?;
            writeln!(out, "{v}")?;
        }
        super::ReportFormat::Table => {
            writeln!(out, "{windows} validation windows of {context} tokens from {name}")?;
            write_summary_table(&mut out, &heads)?;
            lab.write_tables(&mut out, &format!("mean over {windows} windows of -ln p of their tokens after the first"))?;
        }
    }
    if let (Some(png), Some(phase)) = (&args.png, &lab.phase) {
        write_phase_png(png, phase)?;
    }
    Ok(())
}

fn write_heads(out: &mut impl Write, r: &TextInspection) -> Result<()> {
    writeln!(out, "{} positions (BOS + {} tokens)", r.tokens.len(), r.tokens.len() - 1)?;
    write_summary_table(out, &r.heads)
}

/// The per-head table of `inspect --text`; sink is the mean weight on the start, b the slope of
/// H = a + b ln n.
fn write_summary_table(out: &mut impl Write, heads: &[crate::physics::thermo::HeadSummary]) -> Result<()> {
    let opt = |x: f64, p: usize| if x.is_finite() { format!("{x:.p$}") } else { "-".into() };
    writeln!(
        out,
        "{:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>6} {:>7}",
        "layer", "head", "T", "H", "H/ln n", "<exp H>", "ln Z", "<E>", "C", "|resid|", "sink", "b"
    )?;
    for h in heads {
        writeln!(
            out,
            "{:>5} {:>4} {:>8.4} {:>8.4} {:>8} {:>8.3} {:>9.4} {:>9.4} {:>8.4} {:>9.1e} {:>6} {:>7}",
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
            h.identity_residual,
            opt(h.sink, 3),
            opt(h.entropy_slope, 3)
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
