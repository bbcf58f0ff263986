//! `thermoformer inspect`: per-head thermodynamics of a text, attention maps, temperature sweeps.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;

use super::{positive, ModelArgs};
use crate::checkpoint::Loaded;
use crate::data::{self, Splits};
use crate::error::UsageError;
use crate::inspect::{self, SweepPoint, TextInspection};
use crate::plot::{self, Series};

/// Output format of `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectFormat {
    /// Aligned columns.
    Table,
    /// One JSON object.
    Json,
}

/// Options of `thermoformer inspect`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct InspectArgs {
    /// Text to read (as BOS + tokens; at most context-1 tokens). For every layer and head prints:
    /// T, mean entropy H (nats), H/ln(keys allowed), exp(H) (effective keys), mean ln Z, mean
    /// energy <E> under alpha (E_ij = -q_i.k_j/sqrt(d)), heat capacity C = beta^2 Var(E), averaged
    /// over query positions (the first, with one key, left out of H/ln n), and the largest
    /// |H - beta<E> - ln Z| over the rows.
    #[arg(long, required_unless_present = "sweep")]
    pub text: Option<String>,
    /// Sweep the global attention temperature (every head set to T) over these values, e.g.
    /// 0.25,0.5,1,2,4: energy per token and mean attention entropy on a fixed slice of the
    /// validation split.
    #[arg(long, value_name = "T1,T2,...", value_delimiter = ',', conflicts_with_all = ["text", "attn_temperature", "head_temperature"])]
    pub sweep: Option<Vec<f64>>,
    /// Corpus for --sweep [default: the checkpoint's training corpus]; split as in training.
    #[arg(long, value_name = "FILE", requires = "sweep")]
    pub corpus: Option<PathBuf>,
    /// Validation windows (BOS + context-1 tokens, evenly spaced over the split) for --sweep.
    #[arg(long, default_value_t = 32, requires = "sweep")]
    pub windows: usize,
    /// Write a PNG: with --text, a grid of attention maps (layers x heads, tokens on the axes, T
    /// and H in each title); with --sweep, energy per token and entropy against T (log axis).
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Table)]
    pub format: InspectFormat,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `thermoformer inspect`.
pub fn run_inspect(args: &InspectArgs) -> Result<()> {
    if let Some(temps) = &args.sweep {
        for &t in temps {
            positive("--sweep temperatures", t)?;
        }
        if args.windows == 0 {
            return Err(UsageError("--windows must be at least 1".into()).into());
        }
        let mut temps = temps.clone();
        temps.sort_by(f64::total_cmp);
        temps.dedup();
        let loaded = args.model.load()?;
        return run_sweep(args, &loaded, &temps);
    }
    let text = args.text.as_deref().unwrap_or_default();
    let loaded = args.model.load()?;
    let report = inspect::inspect_text(&loaded.model, &loaded.tokenizer, text)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        InspectFormat::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        InspectFormat::Table => write_heads(&mut out, &report)?,
    }
    if let Some(png) = &args.png {
        let titles: Vec<Vec<String>> = (0..report.alpha.len())
            .map(|l| {
                (0..report.alpha[l].len())
                    .map(|h| {
                        let s = &report.heads[l * report.alpha[l].len() + h];
                        format!("L{l} H{h}  T={:.3}  H={:.3}", s.temperature, s.entropy)
                    })
                    .collect()
            })
            .collect();
        plot::attention_grid(png, &report.tokens, &report.alpha, &titles)?;
        eprintln!("attention maps written to {}", png.display());
    }
    Ok(())
}

fn write_heads(out: &mut impl Write, r: &TextInspection) -> Result<()> {
    writeln!(out, "{} positions (BOS + {} tokens)", r.tokens.len(), r.tokens.len() - 1)?;
    writeln!(
        out,
        "{:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9}",
        "layer", "head", "T", "H", "H/ln n", "exp(H)", "ln Z", "<E>", "C", "|resid|"
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

fn run_sweep(args: &InspectArgs, loaded: &Loaded, temps: &[f64]) -> Result<()> {
    let corpus = args.corpus.clone().unwrap_or_else(|| loaded.config.train.corpus.clone());
    let text = data::read_corpus(&corpus).with_context(|| "the sweep reads the validation split (set it with --corpus)")?;
    let (context, bos) = (loaded.config.model.context, loaded.tokenizer.bos());
    let name = corpus.display().to_string();
    let splits = Splits::new(&text, &loaded.tokenizer, loaded.config.train.val_fraction, context, &name)?;
    let batches = data::tiled_batches(&splits.val, Some(args.windows), 16, context, bos, loaded.model.device())?;
    let windows: usize = batches.iter().map(|b| b.inputs.dims()[0]).sum();
    let points = inspect::sweep(&loaded.model, &batches, temps)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        InspectFormat::Json => {
            let v = serde_json::json!({ "corpus": name, "windows": windows, "context": context, "points": points });
            writeln!(out, "{v}")?;
        }
        InspectFormat::Table => {
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
        eprintln!("sweep plot written to {}", png.display());
    }
    Ok(())
}
