//! One pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(.)); or, with a
//! parallel residual (Pythia), x + attn(norm1(x)) + mlp(norm2(x)).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{AttnStats, Attention};
use super::mlp::Mlp;
use super::norm::Norm;
use super::rope::Rope;
use crate::config::ModelConfig;
use crate::kernels::Kernels;

#[derive(Debug, Clone)]
pub struct Block {
    pub(crate) ln1: Norm,
    pub(crate) attn: Attention,
    pub(crate) ln2: Norm,
    pub(crate) mlp: Mlp,
    parallel: bool,
}

impl Block {
    /// Layer `layer` of the model `cfg` describes; `rope`: the model's rotary tables, if any.
    pub fn new(cfg: &ModelConfig, layer: usize, rope: Option<&Rope>, init_std: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: Norm::new(cfg, kernels, vb.pp("ln1"))?,
            attn: Attention::new(cfg, layer, rope, init_std, kernels, vb.pp("attn"))?,
            ln2: Norm::new(cfg, kernels, vb.pp("ln2"))?,
            mlp: Mlp::new(cfg, init_std, kernels, vb.pp("mlp"))?,
            parallel: cfg.parallel_residual,
        })
    }

    /// The residual update around the attention output `a` of `x`, with `mlp` the MLP's
    /// forward (cached or not); `whole`: a whole-sequence pass, where a forward-only MLP runs
    /// with its norm and residual in one pass ([`Mlp::forward_residual`], the same values).
    fn residual(&self, x: &Tensor, a: Tensor, whole: bool, mlp: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        if self.parallel {
            // Both branches read the block's input.
            return x + (a + mlp(&self.ln2.forward(x)?)?)?;
        }
        // Attention is the only layer that mixes information across positions.
        self.mlp_half((x + a)?, whole, mlp)
    }

    /// `x + mlp(norm2(x))` for the stream `x` after attention, as [`Block::residual`] says.
    fn mlp_half(&self, x: Tensor, whole: bool, mlp: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        if whole {
            if let Some(y) = self.mlp.forward_residual(&self.ln2, &x)? {
                return Ok(y);
            }
        }
        &x + mlp(&self.ln2.forward(&x)?)?
    }

    pub(crate) fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        if !self.parallel {
            // A forward-only pass runs each norm inside the pass after it (same values).
            if let Some(x) = self.attn.forward_residual(&self.ln1, x)? {
                return self.mlp_half(x, true, |h| self.mlp.forward(h));
            }
        }
        let a = self.attn.forward(&self.ln1.forward(x)?, mask)?;
        self.residual(x, a, true, |h| self.mlp.forward(h))
    }

    pub(crate) fn forward_cached(&self, x: &Tensor, mask: Option<&Tensor>, cache: &mut candle_nn::kv_cache::KvCache) -> Result<Tensor> {
        let a = self.attn.forward_cached(&self.ln1.forward(x)?, mask, cache)?;
        self.residual(x, a, false, |h| self.mlp.forward_cached(h))
    }

    pub(crate) fn forward_with_stats(&self, x: &Tensor, mask: &Tensor) -> Result<(Tensor, AttnStats)> {
        let (a, stats) = self.attn.forward_with_stats(&self.ln1.forward(x)?, mask)?;
        Ok((self.residual(x, a, true, |h| self.mlp.forward(h))?, stats))
    }
}
