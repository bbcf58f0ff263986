//! The normalisation layers: LayerNorm (GPT-2, GPT-Neo, Pythia) and RMSNorm (Llama, Qwen), each
//! written out of differentiable primitives (the readable reference; candle's fused norms have
//! no backward pass) beside the fused CPU kernel of [`crate::kernels::layer_norm`].

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::{ModelConfig, Norm as NormKind};
use crate::kernels::{self, Kernels};

/// A LayerNorm or RMSNorm over the last dimension, with a gain `weight` and, for a LayerNorm in
/// a model with biases, a `bias`.
#[derive(Debug, Clone)]
pub struct Norm {
    kind: NormKind,
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
    pub(crate) kernels: Kernels,
}

impl Norm {
    /// The model's norm over its residual stream (`d_model` wide).
    pub fn new(cfg: &ModelConfig, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let bias = cfg.bias && cfg.norm == NormKind::LayerNorm;
        Self::of_width(cfg.norm, cfg.d_model, bias, cfg.ln_eps, kernels, vb)
    }

    /// A norm of `kind` over rows `width` wide (Qwen3's per-head RMSNorm of queries and keys).
    pub fn of_width(kind: NormKind, width: usize, bias: bool, eps: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(width, "weight", Init::Const(1.0))?;
        let bias = if bias { Some(vb.get_with_hints(width, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { kind, weight, bias, eps, kernels })
    }
}

impl Norm {
    /// This norm as the fused kernels compute it row by row, where they serve `x` and the norm
    /// has no bias.
    pub(crate) fn rows(&self, x: &Tensor) -> Option<kernels::layer_norm::RowNorm<'_>> {
        (self.kernels.fused_for(x) && self.bias.is_none()).then_some(kernels::layer_norm::RowNorm {
            w: &self.weight,
            eps: self.eps as f32,
            centred: self.kind == NormKind::LayerNorm,
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fused = self.kernels.fused_for(x);
        let scaled = match (self.kind, fused) {
            (NormKind::LayerNorm, true) => kernels::layer_norm::layer_norm(x, &self.weight, self.eps)?,
            (NormKind::RmsNorm, true) => kernels::layer_norm::rms_norm(x, &self.weight, self.eps)?,
            (NormKind::LayerNorm, false) => {
                let mean = x.mean_keepdim(D::Minus1)?; // (..., 1)
                let centred = x.broadcast_sub(&mean)?;
                let var = centred.sqr()?.mean_keepdim(D::Minus1)?; // biased variance, as torch
                centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.broadcast_mul(&self.weight)?
            }
            (NormKind::RmsNorm, false) => {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?.broadcast_mul(&self.weight)?
            }
        };
        match &self.bias {
            Some(b) => scaled.broadcast_add(b),
            None => Ok(scaled),
        }
    }
}
