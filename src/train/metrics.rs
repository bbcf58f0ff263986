//! A run's `metrics.jsonl` (one record per evaluation) and the `curves.png` drawn from it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::plot;

/// One record of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Optimizer steps completed.
    pub step: usize,
    /// Mean training loss (smoothed, what is minimised) over the steps since the last record.
    pub train_loss: Option<f64>,
    /// Validation cross-entropy, nats/token, unsmoothed, of the tokens predicted with at least one
    /// token of context (comparable with trainers that have no BOS, such as nanoGPT).
    pub val_ce: f64,
    /// Validation cross-entropy of every position, the first (predicted from BOS alone) included.
    pub val_ce_bos: f64,
    /// Validation loss with the run's label smoothing (every position).
    pub val_loss: f64,
    /// Validation targets evaluated: a fixed subset at intermediate steps, at most --eval-tokens
    /// (evenly spaced windows) at the last step of a session.
    pub val_tokens: usize,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training throughput since the last record (target tokens per second).
    pub tokens_per_sec: Option<f64>,
    /// Wall-clock seconds of training so far.
    pub elapsed_secs: f64,
}

/// Keep only the records of `metrics.jsonl` up to `step` (after a resume, later ones were never
/// checkpointed and will be redone).
pub(crate) fn truncate_metrics(dir: &Path, step: usize) -> Result<()> {
    let path = dir.join(checkpoint::METRICS);
    let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<Metrics>(l).is_ok_and(|m| m.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&path, kept).with_context(|| format!("rewriting {}", path.display()))
}

/// Draw `curves.png` (train loss and val CE against step) from the run's `metrics.jsonl`.
pub fn write_curves(dir: &Path) -> Result<()> {
    let path = dir.join(checkpoint::METRICS);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let records: Vec<Metrics> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let train: Vec<(f64, f64)> = records.iter().filter_map(|m| Some((m.step as f64, m.train_loss?))).collect();
    let val: Vec<(f64, f64)> = records.iter().map(|m| (m.step as f64, m.val_ce)).collect();
    plot::line_panels(
        &dir.join(CURVES),
        "step",
        false,
        &[(
            "training curves",
            "nats/token",
            vec![
                plot::Series { name: "train loss (mean since last eval)", points: train },
                plot::Series { name: "val CE", points: val },
            ],
        )],
    )
}

/// File name of the training curves picture in a run directory.
pub const CURVES: &str = "curves.png";

pub(crate) fn append_metrics(dir: &Path, m: &Metrics) -> Result<()> {
    let path = dir.join(checkpoint::METRICS);
    let mut f = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("writing {}", path.display()))
}

