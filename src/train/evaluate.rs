//! Validation figures of a model on fixed windows, forward-only.

use anyhow::Result;
use candle_core::DType;

use crate::data::Batch;
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
}

/// Evaluate `model` on `batches`, forward-only.
pub fn evaluate(model: &Gpt, batches: &[Batch], label_smoothing: f64) -> Result<Eval> {
    let (mut with_context, mut all, mut smoothed, mut n_ctx, mut n_all) = (0f64, 0f64, 0f64, 0usize, 0usize);
    for batch in batches {
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
    Ok(Eval { ce: with_context / n_ctx as f64, ce_bos: all / n_all as f64, loss: smoothed / n_all as f64 })
}

