//! The position-wise MLP: d -> d_ff -> GELU -> d (GPT-2, GPT-Neo, Pythia), or SwiGLU,
//! d -> (gate, up) -> silu(gate) * up -> d (Llama, Qwen), with gate and up stored as one matrix
//! so that both come from one product.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::dense::Dense;
use super::norm::Norm;
use super::residual_std;
use crate::config::{Activation, MlpKind, ModelConfig, Precision};
use crate::kernels::{self, Kernels};

#[derive(Debug, Clone)]
pub struct Mlp {
    /// `(d_ff, d)`, or for SwiGLU `(2 d_ff, d)`: the gate's rows, then the up projection's.
    fc: Dense,
    /// `(d, d_ff)`.
    proj: Dense,
    kind: MlpKind,
    activation: Activation,
    pub(crate) kernels: Kernels,
    pub(crate) precision: Precision,
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, init_std: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.ff_width());
        let fc_rows = match cfg.mlp {
            MlpKind::Gelu => f,
            MlpKind::SwiGlu => 2 * f,
        };
        let fc = Dense::new(d, fc_rows, init_std, cfg.bias, vb.pp("fc"))?;
        let proj = Dense::new(f, d, residual_std(cfg, init_std), cfg.bias, vb.pp("proj"))?;
        Ok(Self { fc, proj, kind: cfg.mlp, activation: cfg.activation, kernels, precision: Precision::F32 })
    }

    /// Pack both matrices in bf16 now (forward-only use).
    pub(crate) fn prepare_bf16(&self) -> Result<()> {
        self.fc.prepare_bf16()?;
        self.proj.prepare_bf16()
    }

    /// The nonlinearity between the two matrices: `(..., d_ff)` (or `(..., 2 d_ff)` for SwiGLU)
    /// -> `(..., d_ff)`.
    fn activate(&self, h: &Tensor) -> Result<Tensor> {
        let fused = self.kernels.fused_for(h);
        match (self.kind, self.activation, fused) {
            (MlpKind::SwiGlu, _, true) => kernels::swiglu::silu_mul(h),
            (MlpKind::SwiGlu, _, false) => {
                let f = h.dim(candle_core::D::Minus1)? / 2;
                let (gate, up) = (h.narrow(candle_core::D::Minus1, 0, f)?, h.narrow(candle_core::D::Minus1, f, f)?);
                candle_nn::ops::silu(&gate)?.mul(&up)
            }
            (MlpKind::Gelu, Activation::GeluErf, true) => kernels::gelu::gelu(h),
            (MlpKind::Gelu, Activation::GeluErf, false) => h.gelu_erf(), // exact (erf) GELU, as torch's default
            (MlpKind::Gelu, Activation::GeluTanh, true) => kernels::gelu::gelu_tanh(h),
            (MlpKind::Gelu, Activation::GeluTanh, false) => gelu_tanh(h),
        }
    }

    /// Forward-only, for the few rows of KV-cached generation.
    pub(crate) fn forward_cached(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.activate(&self.fc.forward_only(x, self.kernels, self.precision)?)?;
        self.proj.forward_only(&h, self.kernels, self.precision)
    }
}

impl Mlp {
    /// Forward only, for a pre-norm block: `x + mlp(norm(x))` in one pass by blocks of rows, the
    /// same values as composed; None where that pass does not apply (the caller composes).
    pub(crate) fn forward_residual(&self, norm: &Norm, x: &Tensor) -> Result<Option<Tensor>> {
        match (self.kind, norm.rows(x)) {
            (MlpKind::Gelu, Some(rows)) if self.kernels.fused_for(x) => self.fc.fused_gelu_mlp_residual(&self.proj, rows, x, self.activation == Activation::GeluTanh, self.precision),
            _ => Ok(None),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.kind == MlpKind::Gelu && self.kernels.fused_for(x) {
            if let Some(y) = self.fc.fused_gelu_mlp(&self.proj, x, self.activation == Activation::GeluTanh, self.precision)? {
                return Ok(y); // the same values as below, as one op
            }
        }
        let h = self.fc.forward(x, self.kernels, self.precision)?; // (..., d_ff) or (..., 2 d_ff)
        self.proj.forward(&self.activate(&h)?, self.kernels, self.precision)
    }
}

/// GPT-2's `gelu_new`, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), composed of primitives:
/// the reference for the fused kernel.
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    ((inner.tanh()? + 1.0)? * 0.5)?.mul(x)
}
