//! Cross-entropy with label smoothing: the maximum-entropy objective with a finite-temperature
//! correction of the targets.
//!
//! With eps in [0, 1) the target distribution is (1 - eps) * onehot(y) + eps * uniform, so
//!
//!   loss = (1 - eps) * (-ln p_y) + eps * mean_v(-ln p_v)
//!
//! averaged over positions (PyTorch's `cross_entropy(..., label_smoothing=eps)`).

use candle_core::{Result, Tensor, D};

use crate::kernels::{self, Kernels};

/// The training loss and the plain (unsmoothed) cross-entropy, both scalars in nats per token.
#[derive(Debug, Clone)]
pub struct Loss {
    /// What is minimised: the smoothed loss (equal to `ce` when eps = 0).
    pub loss: Tensor,
    /// Plain cross-entropy -ln p(target), averaged: comparable with any other trainer.
    pub ce: Tensor,
    /// Per-token energies -ln p(target), `(N,)`.
    pub energies: Tensor,
}

/// Loss of `logits` `(N, V)` against `targets` `(N,)` (u32) with label smoothing `eps`, with
/// the process's default [`Kernels`].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, eps: f64) -> Result<Loss> {
    cross_entropy_with(logits, targets, eps, Kernels::from_env())
}

/// [`cross_entropy`] with a chosen implementation: the fused kernel (one pass over the logits
/// each way) or the composition below, the reference.
pub fn cross_entropy_with(logits: &Tensor, targets: &Tensor, eps: f64, kernels: Kernels) -> Result<Loss> {
    if kernels.fused_for(logits) {
        let rows = kernels::cross_entropy::cross_entropy_rows(logits, targets, eps)?; // (N, 2)
        let energies = rows.narrow(1, 1, 1)?.squeeze(1)?; // (N,)
        let ce = energies.mean_all()?;
        let loss = if eps > 0.0 { rows.narrow(1, 0, 1)?.mean_all()? } else { ce.clone() };
        return Ok(Loss { loss, ce, energies });
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?; // (N, V)
    let nll = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?; // (N,)
    let ce = nll.mean_all()?;
    let loss = if eps > 0.0 {
        let uniform = log_p.mean(D::Minus1)?.neg()?.mean_all()?; // mean over tokens and vocabulary of -ln p
        ((&ce * (1.0 - eps))? + (uniform * eps)?)?
    } else {
        ce.clone()
    };
    Ok(Loss { loss, ce, energies: nll })
}

/// Per-token energies -ln p(target) `(N,)` of `logits` `(N, V)`: forward-only scoring (through
/// the fused kernel where it applies, like the training loss).
pub fn token_energies(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(cross_entropy(logits, targets, 0.0)?.energies)
}
