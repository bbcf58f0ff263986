//! Validation figures of a model on fixed windows, forward-only.

use anyhow::Result;
use candle_core::DType;

use crate::data::{Batch, Windows};
use crate::model::loss;
use crate::model::Gpt;

/// Validation figures of one evaluation, nats per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Cross-entropy of the tokens predicted with at least one real token of context (every
    /// position but the first): the protocol of trainers without BOS (nanoGPT), so comparable.
    pub ce: f64,
    /// Cross-entropy of every position, the first (predicted from BOS alone) included: the mean
    /// energy per token that scoring a window as BOS + tokens gives.
    pub ce_bos: f64,
    /// The training objective (label-smoothed) over every position.
    pub loss: f64,
    /// Targets it covered (every position of every window).
    pub targets: usize,
}

/// Evaluate `model` on `batches`, forward-only.
pub fn evaluate(model: &Gpt, batches: &[Batch], label_smoothing: f64) -> Result<Eval> {
    evaluate_each(model, batches.iter().cloned().map(Ok), label_smoothing)
}

/// Evaluate `model` on `windows`, each batch built when it is reached: memory stays one batch
/// however many windows there are.
pub fn evaluate_windows(model: &Gpt, windows: &Windows, label_smoothing: f64) -> Result<Eval> {
    evaluate_each(model, windows.batches(), label_smoothing)
}

fn evaluate_each(model: &Gpt, batches: impl Iterator<Item = Result<Batch>>, label_smoothing: f64) -> Result<Eval> {
    let (mut with_context, mut all, mut smoothed, mut n_ctx, mut n_all) = (0f64, 0f64, 0f64, 0usize, 0usize);
    for batch in batches {
        let batch = batch?;
        let (b, t) = batch.targets.dims2()?;
        let logits = model.forward(&batch.inputs)?.flatten_to(1)?; // (B*T, V)
        let targets = batch.targets.flatten_all()?;
        let l = loss::cross_entropy_with(&logits, &targets, label_smoothing, model.kernels())?;
        let energies = l.energies.reshape((b, t))?; // (B, T)
        all += energies.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        with_context += energies.narrow(1, 1, t - 1)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        (n_all, n_ctx) = (n_all + b * t, n_ctx + b * (t - 1));
        smoothed += l.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * (b * t) as f64;
    }
    Ok(Eval { ce: with_context / n_ctx as f64, ce_bos: all / n_all as f64, loss: smoothed / n_all as f64, targets: n_all })
}

