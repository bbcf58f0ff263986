//! `thermoformer calibrate`: fit the output temperature T* on the validation split and report the
//! energy and the calibration error before and after.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{validation_tokens, ModelArgs};
use crate::physics::calibrate::{self, Calibration, Predictions};
use crate::data;
use crate::error::UsageError;
use crate::plot::{self, Series};

/// Validation windows per forward pass.
const WINDOW_BATCH: usize = 32;

/// Options of `thermoformer calibrate`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Corpus whose validation split (the tail, split as in training) is calibrated on
    /// [default: the checkpoint's training corpus].
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Use at most this many validation windows (BOS + context-1 tokens, evenly spaced over the
    /// split) [default: the whole split, or as many windows as keep the held logits within
    /// 1 GiB: 5 windows for GPT-2's shape].
    #[arg(long, value_name = "N")]
    pub windows: Option<usize>,
    /// Equal-width confidence bins of the expected calibration error and the reliability diagram.
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
    #[command(flatten)]
    pub report: super::ReportArgs,
    /// Write the reliability diagram (accuracy against confidence per bin, at T = 1 and at T*) to
    /// this PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
}

/// `thermoformer calibrate`.
pub fn run_calibrate(args: &CalibrateArgs) -> Result<()> {
    if !(1..=calibrate::MAX_BINS).contains(&args.bins) {
        return Err(UsageError(format!("--bins must lie in 1..={}, got {}", calibrate::MAX_BINS, args.bins)).into());
    }
    if let Some(png) = &args.png {
        super::png_path("--png", png)?;
    }
    if args.windows == Some(0) {
        return Err(UsageError("--windows must be at least 1".into()).into());
    }
    let loaded = args.model.load()?;
    let v = validation_tokens(&loaded, args.corpus.as_ref(), "calibrate")?;
    let (name, val) = (v.corpus.clone(), v.tokens());
    let (context, bos) = (loaded.config.model.context, loaded.tokenizer.bos());
    // Every prediction is held (context x vocab f32 per window) while T* is fitted.
    let budget = ((1usize << 28) / (context * loaded.config.model.vocab_size).max(1)).max(1);
    let windows = args.windows.unwrap_or(budget);
    let batches = data::tiled_batches(val, Some(windows), WINDOW_BATCH.min(budget), context, bos, loaded.model.device())?;
    let preds = Predictions::collect(&loaded.model, &batches)?;
    let c = calibrate::calibrate(&preds, args.bins)?;
    let mut out = std::io::stdout().lock();
    if args.report.json() {
        let v = serde_json::json!({ "corpus": name, "bins": args.bins, "calibration": c });
        writeln!(out, "{v}")?;
    } else {
        write_table(&mut out, &c, &name, args.bins)?;
    }
    if let Some(png) = &args.png {
        draw(png, &c)?;
        crate::progress::note(format!("reliability diagram written to {}", png.display()));
    }
    Ok(())
}

fn write_table(out: &mut impl Write, c: &Calibration, corpus: &str, bins: usize) -> Result<()> {
    writeln!(out, "{} validation tokens of {corpus}; ECE over {bins} confidence bins", c.tokens)?;
    writeln!(out, "{:>8} {:>9} {:>10} {:>8} {:>9}", "", "T", "E/token", "ECE", "accuracy")?;
    for (label, t, e, r) in [("before", 1.0, c.energy_before, &c.before), ("after", c.t_star, c.energy_after, &c.after)] {
        writeln!(out, "{label:>8} {t:>9.4} {e:>10.4} {:>8.4} {:>9.4}", r.ece, r.accuracy)?;
    }
    writeln!(out, "T* = {:.4}, {}", c.t_star, calibrate::reading(c.t_star))?;
    Ok(())
}

fn draw(png: &std::path::Path, c: &Calibration) -> Result<()> {
    let points = |r: &calibrate::Reliability| r.bins.iter().filter(|b| b.count > 0).map(|b| (b.confidence, b.accuracy)).collect();
    let before = format!("T = 1 (ECE {:.4})", c.before.ece);
    let after = format!("T* = {:.3} (ECE {:.4})", c.t_star, c.after.ece);
    plot::line_panels(
        png,
        "confidence (probability of the top token)",
        false,
        &[(
            "reliability diagram",
            "accuracy of the top token",
            vec![
                Series { name: "perfect calibration", points: vec![(0.0, 0.0), (1.0, 1.0)] },
                Series { name: &before, points: points(&c.before) },
                Series { name: &after, points: points(&c.after) },
            ],
        )],
    )
}
