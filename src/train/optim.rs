//! The optimizers: AdamW with decoupled weight decay on matrices only, and stochastic gradient
//! Langevin dynamics ([`Sgld`]); a warmup + cosine learning-rate schedule, and global
//! gradient-norm clipping.
//!
//! candle-nn's AdamW decays every parameter and keeps its moments private; this one follows
//! PyTorch's `torch.optim.AdamW` step for step and exposes its moments so that a checkpoint can
//! restore them exactly.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::kernels::{self, Kernels};
use crate::model::params::Param;

/// Hyper-parameters of AdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug)]
enum Moments {
    /// Tensors on the parameter's device, updated by whole-tensor operations: the reference.
    Tensors { m: Tensor, v: Tensor },
    /// Host vectors updated in place with the parameter, one pass per step (f32 on the CPU).
    Host { m: Vec<f32>, v: Vec<f32> },
}

/// One parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    moments: Moments,
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
    /// Fresh moments (zeros) for every trainable parameter, updated by `kernels` (pass the
    /// model's, [`crate::Gpt::kernels`]): the fused one-pass update where it applies, or the
    /// composition of tensor operations, the reference.
    pub fn new(params: &[Param], cfg: AdamWConfig, kernels: Kernels) -> Result<Self> {
        let slots = params
            .iter()
            .map(|p| {
                let moments = if kernels.fused_for(p.var.as_tensor()) && p.var.is_contiguous() {
                    let n = p.var.elem_count();
                    Moments::Host { m: vec![0.0; n], v: vec![0.0; n] }
                } else {
                    let zeros = p.var.zeros_like()?;
                    Moments::Tensors { m: zeros.clone(), v: zeros }
                };
                Ok(Slot { name: p.name.clone(), var: p.var.clone(), moments, decay: p.var.rank() >= 2 })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { slots, cfg, t: 0 })
    }

    /// Restore moments saved by [`AdamW::state_tensors`] after `t` updates.
    pub fn restore(params: &[Param], cfg: AdamWConfig, kernels: Kernels, t: u64, state: &HashMap<String, Tensor>) -> Result<Self> {
        let mut opt = Self::new(params, cfg, kernels)?;
        opt.t = t;
        for slot in &mut opt.slots {
            let saved = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{}", slot.name);
                let Some(saved) = state.get(&key) else { bail!("optimizer state has no tensor {key}") };
                if saved.shape() != slot.var.shape() {
                    bail!("optimizer tensor {key} has shape {:?}, the parameter has {:?}", saved.dims(), slot.var.dims());
                }
                Ok(saved.to_device(slot.var.device())?.to_dtype(slot.var.dtype())?)
            };
            let (m, v) = (saved("m")?, saved("v")?);
            slot.moments = match slot.moments {
                Moments::Host { .. } => Moments::Host { m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? },
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
        }
        if state.len() != 2 * opt.slots.len() {
            bail!("optimizer state has {} tensors, the model has {} trainable parameters (expected 2 each)", state.len(), opt.slots.len());
        }
        Ok(opt)
    }

    /// The moments by name (`m.<param>`, `v.<param>`), for `optimizer.safetensors`.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let (m, v) = match &s.moments {
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
                Moments::Host { m, v } => {
                    let host = |x: &[f32]| Tensor::from_slice(x, s.var.shape(), s.var.device());
                    (host(m)?, host(v)?)
                }
            };
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
        }
        Ok(out)
    }

    /// Updates taken so far.
    pub fn t(&self) -> u64 {
        self.t
    }

    /// The implementation the moments are updated by: [`Kernels::Fused`] when every parameter
    /// takes the fused update, else [`Kernels::Composed`].
    pub fn kernels(&self) -> Kernels {
        if self.slots.iter().all(|s| matches!(s.moments, Moments::Host { .. })) {
            Kernels::Fused
        } else {
            Kernels::Composed
        }
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
            let decay = if slot.decay && weight_decay > 0.0 { 1.0 - lr * weight_decay } else { 1.0 };
            let (m, v) = match &mut slot.moments {
                Moments::Host { m, v } => {
                    let u = kernels::adamw::Update {
                        beta1: beta1 as f32,
                        beta2: beta2 as f32,
                        eps: eps as f32,
                        decay: decay as f32,
                        step_size: (lr / bc1) as f32,
                        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                        grad_scale: grad_scale as f32,
                    };
                    kernels::adamw::update(slot.var.as_tensor(), g, m, v, u)?;
                    continue;
                }
                Moments::Tensors { m, v } => (m, v),
            };
            let g = if grad_scale != 1.0 { g.affine(grad_scale, 0.0)? } else { g.clone() };
            *m = ((&*m * beta1)? + (&g * (1.0 - beta1))?)?;
            *v = ((&*v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            // PyTorch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom.
            let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), eps)?;
            let p = slot.var.as_tensor();
            let p = if decay != 1.0 { p.affine(decay, 0.0)? } else { p.clone() };
            let update = (&*m / denom)?.affine(lr / bc1, 0.0)?;
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }
}

/// Hyper-parameters of SGLD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgldConfig {
    /// T in the stationary law exp(-L(theta) / T), L the training loss (mean nats per token);
    /// 0 is plain SGD.
    pub temperature: f64,
    /// Decoupled weight decay on matrices, as AdamW's (a Gaussian prior on the weights).
    pub weight_decay: f64,
    /// Seed of the noise; step t draws from its own stream, so a resumed run draws the same noise.
    pub seed: u64,
}

/// Stochastic gradient Langevin dynamics (Welling & Teh, 2011): gradient descent on the loss plus
/// Gaussian noise whose variance is tied to the step,
///
///   theta <- theta (1 - eta wd) - eta g + sqrt(2 eta T) xi,   xi ~ N(0, I)
///
/// the Euler-Maruyama step of dtheta = -grad L dt + sqrt(2T) dW, whose stationary law (small
/// eta, full-batch gradient) is exp(-L(theta) / T) / Z: training as sampling at temperature T.
/// L here is the mean loss per token, so T = 1 / N (N the training tokens) is the Bayesian
/// posterior at unit temperature and T = 0 is plain SGD (momentum-free).
#[derive(Debug)]
pub struct Sgld {
    params: Vec<(Var, bool)>,
    cfg: SgldConfig,
    /// Updates taken so far.
    t: u64,
}

impl Sgld {
    pub fn new(params: &[Param], cfg: SgldConfig) -> Self {
        Self::resume(params, cfg, 0)
    }

    /// Continue after `t` updates: the noise of update t + 1 onward is what an uninterrupted run draws.
    pub fn resume(params: &[Param], cfg: SgldConfig, t: u64) -> Self {
        Self { params: params.iter().map(|p| (p.var.clone(), p.var.rank() >= 2)).collect(), cfg, t }
    }

    /// The standard deviation of the noise added to every parameter at learning rate `lr`:
    /// sqrt(2 eta T).
    pub fn noise_std(lr: f64, temperature: f64) -> f64 {
        (2.0 * lr * temperature).sqrt()
    }

    /// One update at learning rate `lr`, every gradient first multiplied by `grad_scale`.
    /// Parameters without a gradient still diffuse (their loss gradient is zero).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let std = Self::noise_std(lr, self.cfg.temperature);
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(self.t);
        for (var, decay) in &self.params {
            let p = var.as_tensor();
            let decay = if *decay && self.cfg.weight_decay > 0.0 { 1.0 - lr * self.cfg.weight_decay } else { 1.0 };
            let mut next = p.affine(decay, 0.0)?;
            if let Some(g) = grads.get(p) {
                next = (next - g.affine(lr * grad_scale, 0.0)?)?;
            }
            if std > 0.0 {
                let xi: Vec<f32> = (0..p.elem_count()).map(|_| StandardNormal.sample(&mut rng)).collect();
                let noise = Tensor::from_vec(xi, p.shape(), p.device())?.to_dtype(p.dtype())?;
                next = (next + noise.affine(std, 0.0)?)?;
            }
            var.set(&next)?;
        }
        Ok(())
    }

    /// Updates taken so far.
    pub fn t(&self) -> u64 {
        self.t
    }
}

/// The optimizer a run trains with.
#[derive(Debug)]
pub enum Optimizer {
    AdamW(AdamW),
    Sgld(Sgld),
}

impl Optimizer {
    /// One update at learning rate `lr` with gradients scaled by `grad_scale`.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        match self {
            Self::AdamW(o) => o.step(grads, lr, grad_scale),
            Self::Sgld(o) => o.step(grads, lr, grad_scale),
        }
    }

    /// The state to checkpoint: AdamW's moments; SGLD has none (its noise is a function of the
    /// seed and the step).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        match self {
            Self::AdamW(o) => o.state_tensors(),
            Self::Sgld(_) => Ok(HashMap::new()),
        }
    }
}

/// The learning rate at `step` (0-based): linear warmup to `lr` over `warmup` steps, then a cosine
/// decay to `min_lr` at `total` steps (nanoGPT's schedule).
pub fn lr_at(step: usize, lr: f64, min_lr: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * (step as f64 + 1.0) / (warmup as f64 + 1.0);
    }
    let ratio = ((step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64).min(1.0);
    min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
}

/// Global L2 norm of the gradients of `params` (those that have one), summed by `kernels`: the
/// fused one-pass sum where it applies, else tensor operations.
pub fn grad_norm(params: &[Param], grads: &GradStore, kernels: Kernels) -> Result<f64> {
    let mut total = 0f64;
    for p in params {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            let fused = if kernels == Kernels::Fused { kernels::adamw::sum_of_squares(g) } else { None };
            total += match fused {
                Some(s) => s,
                None => g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
            };
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
