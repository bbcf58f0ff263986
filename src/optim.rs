//! AdamW with decoupled weight decay on matrices only, a warmup + cosine learning-rate schedule,
//! and global gradient-norm clipping.
//!
//! candle-nn's AdamW decays every parameter and keeps its moments private; this one follows
//! PyTorch's `torch.optim.AdamW` step for step and exposes its moments so that a checkpoint can
//! restore them exactly.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::params::Param;

/// Hyper-parameters of AdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// Matrices (embeddings, linear weights) are decayed; gains and temperatures are not.
    decay: bool,
}

/// The optimizer state.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    /// Number of updates taken (PyTorch's `step`, for bias correction).
    t: u64,
}

impl AdamW {
    /// Fresh moments (zeros) for every trainable parameter.
    pub fn new(params: &[Param], cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .iter()
            .map(|p| {
                let zeros = p.var.zeros_like()?;
                Ok(Slot { name: p.name.clone(), var: p.var.clone(), m: zeros.clone(), v: zeros, decay: p.var.rank() >= 2 })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { slots, cfg, t: 0 })
    }

    /// Restore moments saved by [`AdamW::state_tensors`] after `t` updates.
    pub fn restore(params: &[Param], cfg: AdamWConfig, t: u64, state: &HashMap<String, Tensor>) -> Result<Self> {
        let mut opt = Self::new(params, cfg)?;
        opt.t = t;
        for slot in &mut opt.slots {
            for (prefix, moment) in [("m", &mut slot.m), ("v", &mut slot.v)] {
                let key = format!("{prefix}.{}", slot.name);
                let Some(saved) = state.get(&key) else { bail!("optimizer state has no tensor {key}") };
                if saved.shape() != moment.shape() {
                    bail!("optimizer tensor {key} has shape {:?}, the parameter has {:?}", saved.dims(), moment.dims());
                }
                *moment = saved.to_device(moment.device())?;
            }
        }
        if state.len() != 2 * opt.slots.len() {
            bail!("optimizer state has {} tensors, the model has {} trainable parameters (expected 2 each)", state.len(), opt.slots.len());
        }
        Ok(opt)
    }

    /// The moments by name (`m.<param>`, `v.<param>`), for `optimizer.safetensors`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .flat_map(|s| [(format!("m.{}", s.name), s.m.clone()), (format!("v.{}", s.name), s.v.clone())])
            .collect()
    }

    /// Updates taken so far.
    pub fn t(&self) -> u64 {
        self.t
    }

    /// One AdamW update with learning rate `lr`, every gradient first multiplied by `grad_scale`
    /// (the clipping factor). Parameters without a gradient are left alone, as in PyTorch.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let g = if grad_scale != 1.0 { g.affine(grad_scale, 0.0)? } else { g.clone() };
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?;
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom.
            let denom = slot.v.sqrt()?.affine(1.0 / bc2.sqrt(), eps)?;
            let p = slot.var.as_tensor();
            let p = if slot.decay && weight_decay > 0.0 { p.affine(1.0 - lr * weight_decay, 0.0)? } else { p.clone() };
            let update = (&slot.m / denom)?.affine(lr / bc1, 0.0)?;
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }
}

/// The learning rate at `step` (0-based): linear warmup to `lr` over `warmup` steps, then a cosine
/// decay to `min_lr` at `total` steps (nanoGPT's schedule).
pub fn lr_at(step: usize, lr: f64, min_lr: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / (warmup + 1) as f64;
    }
    let ratio = ((step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64).min(1.0);
    min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
}

/// Global L2 norm of the gradients of `params` (those that have one).
pub fn grad_norm(params: &[Param], grads: &GradStore) -> Result<f64> {
    let mut total = 0f64;
    for p in params {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

/// PyTorch's `clip_grad_norm_` factor: `min(1, max_norm / (norm + 1e-6))`; 1 when clipping is off.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0)
    }
}
