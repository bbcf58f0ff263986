//! The model's Linear layers, in f32 or bf16 ([`Precision`]).
//!
//! In f32 a layer is candle's `Linear` (gemm's f32 kernels), with the parallel matrix-vector
//! kernel for the few rows of KV-cached generation. In bf16 its product takes bf16 operands and
//! accumulates in f32 ([`crate::kernels::bf16::ops::linear`]), backward included; a forward-only
//! model keeps each weight packed in bf16 across calls, so generation reads half the bytes.
//! With the composed kernels ([`Kernels::Composed`]) bf16 is the readable reference instead: each
//! operand rounded to bf16 (`round_bf16`), then an ordinary f32 product, whose products of two
//! bf16 values are exact, so only the order of the f32 sums differs from the fused path.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use crate::config::Precision;
use crate::kernels::bf16::ops::{self as bf16, WeightCache};
use crate::kernels::linear::Arith;
use crate::kernels::{self, Kernels};

/// `t` rounded to bf16 and widened back (candle's conversion: nearest-even; it keeps subnormal
/// inputs that the fused path flushes). Differentiable.
pub(crate) fn round_bf16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)?.to_dtype(t.dtype())
}

/// `x (..., K) . w (N, K)^T` with both operands rounded to bf16 first: the composed reference.
fn rounded_product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let y = round_bf16(&x.reshape((x.elem_count() / k.max(1), k))?)?.matmul(&round_bf16(w)?.t()?)?;
    let mut out = dims;
    *out.last_mut().expect("x has a last dimension") = w.dim(0)?;
    y.reshape(out)
}

/// A linear layer: weight `(d_out, d_in)` and, where the model has biases, a bias `(d_out,)`.
#[derive(Debug, Clone)]
pub struct Dense {
    lin: Linear,
    /// The weight packed in bf16 for forward-only use, made on first use.
    packed: WeightCache,
}

impl Dense {
    /// Weight initialised N(0, std), bias (if any) zero.
    pub fn new(d_in: usize, d_out: usize, std: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", Init::Randn { mean: 0.0, stdev: std })?;
        let bias = if bias { Some(vb.get_with_hints(d_out, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { lin: Linear::new(weight, bias), packed: WeightCache::default() })
    }

    pub fn weight(&self) -> &Tensor {
        self.lin.weight()
    }

    /// Pack the weight in bf16 now rather than on first use.
    pub(crate) fn prepare_bf16(&self) -> Result<()> {
        self.packed.prepare(self.lin.weight())
    }

    /// `x (..., d_in) -> (..., d_out)`, differentiable.
    pub fn forward(&self, x: &Tensor, kernels: Kernels, precision: Precision) -> Result<Tensor> {
        let y = match precision {
            Precision::F32 if kernels.fused_for(x) => kernels::linear::linear(x, self.lin.weight())?,
            Precision::F32 => return self.lin.forward(x),
            Precision::Bf16 if kernels.fused_for(x) => bf16::linear(x, self.lin.weight(), Some(&self.packed))?,
            Precision::Bf16 => rounded_product(x, self.lin.weight())?,
        };
        match self.lin.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `GELU(x . self^T) . proj^T` as one fused op (the same values as the two layers and the
    /// GELU composed), or None where it does not apply: either layer has a bias.
    pub(crate) fn fused_gelu_mlp(&self, proj: &Dense, x: &Tensor, tanh: bool, precision: Precision) -> Result<Option<Tensor>> {
        if self.lin.bias().is_some() || proj.lin.bias().is_some() {
            return Ok(None);
        }
        kernels::mlp::apply(x, self.lin.weight(), proj.lin.weight(), tanh, self.arith(precision)?, proj.arith(precision)?).map(Some)
    }

    /// Forward only: `x + GELU(norm(x) . self^T) . proj^T`, the norm, both layers, the GELU and
    /// the residual add as one pass by blocks of rows (the same values as composed). None where
    /// it does not apply: a layer with a bias, a tensor that gradients would flow through, or a
    /// shape the fused MLP does not run by rows.
    pub(crate) fn fused_gelu_mlp_residual(&self, proj: &Dense, norm: kernels::layer_norm::RowNorm, x: &Tensor, tanh: bool, precision: Precision) -> Result<Option<Tensor>> {
        let (w_fc, w_proj) = (self.lin.weight(), proj.lin.weight());
        if self.lin.bias().is_some() || proj.lin.bias().is_some() || [x, w_fc, w_proj, norm.w].iter().any(|t| t.track_op()) {
            return Ok(None);
        }
        kernels::mlp::residual_forward(x, norm, w_fc, w_proj, tanh, self.arith(precision)?, proj.arith(precision)?)
    }

    /// Forward only: `norm(x) . self^T` (the norm's rows made block by block on the way into the
    /// product) and/or `residual + x . self^T` (the add in the same pass), the same values as
    /// composed. None where it does not apply: a bias, a tensor that gradients would flow
    /// through, or a shape the product does not split by rows.
    pub(crate) fn forward_rows(&self, x: &Tensor, norm: Option<kernels::layer_norm::RowNorm>, residual: Option<&Tensor>, kernels: Kernels, precision: Precision) -> Result<Option<Tensor>> {
        let w = self.lin.weight();
        let tracked = [Some(x), Some(w), residual, norm.as_ref().map(|n| n.w)].into_iter().flatten().any(|t| t.track_op());
        if !kernels.fused_for(x) || self.lin.bias().is_some() || tracked {
            return Ok(None);
        }
        kernels::linear::forward_rows(x, norm, w, residual, self.arith(precision)?)
    }

    /// The arithmetic of this layer's fused products in `precision` (bf16: the packed copy
    /// where the weight is not trained).
    fn arith(&self, precision: Precision) -> Result<Arith> {
        match precision {
            Precision::F32 => Ok(Arith::F32),
            Precision::Bf16 => bf16::arith(self.lin.weight(), Some(&self.packed)),
        }
    }

    /// [`Dense::forward`] for the few rows of KV-cached generation: in f32 the parallel
    /// matrix-vector kernel where it applies. Never on a training path (that kernel has no
    /// backward).
    pub fn forward_only(&self, x: &Tensor, kernels: Kernels, precision: Precision) -> Result<Tensor> {
        if precision == Precision::Bf16 {
            return self.forward(x, kernels, precision);
        }
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        if kernels.fused_for(x) && rows <= kernels::matvec::MAX_ROWS {
            let mut out_dims = dims;
            *out_dims.last_mut().expect("x has a last dimension") = self.lin.weight().dim(0)?;
            let y = kernels::matvec::matvec(&x.reshape((rows, k))?, self.lin.weight())?; // (rows, d_out)
            let y = match self.lin.bias() {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            return y.reshape(out_dims);
        }
        self.lin.forward(x)
    }
}

/// The LM head's product `x (N, C) . w (V, C)^T -> (N, V)` in `precision`; `packed` keeps the
/// bf16 copy of a forward-only head.
pub(crate) fn head_product(x: &Tensor, w: &Tensor, kernels: Kernels, precision: Precision, packed: &WeightCache) -> Result<Tensor> {
    match precision {
        Precision::F32 if kernels.fused_for(x) => kernels::linear::linear(x, w),
        Precision::F32 => x.matmul(&w.t()?),
        Precision::Bf16 if kernels.fused_for(x) => bf16::linear(x, w, Some(packed)),
        Precision::Bf16 => rounded_product(x, w),
    }
}
