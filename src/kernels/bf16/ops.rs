//! The bf16 Linear layer: `y = x . w^T` with bf16 operands and f32 output, and its backward
//! (`dx = dy . w`, `dw = dy^T . x`) with bf16 operands too, as PyTorch's autocast runs a Linear
//! layer, but accumulating and writing f32. The op is [`crate::kernels::linear`]'s, in bf16.
//!
//! The weight's bf16 copy is made once per forward call and shared with that call's backward, so
//! a training step rounds each weight once. A forward-only model keeps its weights packed across
//! calls ([`WeightCache`]): generation then reads half the bytes per token.

use std::sync::{Arc, OnceLock};

use candle_core::{Result, Tensor};

use super::gemm::PackedB;
use super::Kernel;
use crate::kernels::linear::Arith;

/// The process's bf16 kernel as a candle error where the environment names one the CPU lacks.
pub fn kernel() -> Result<Kernel> {
    Kernel::from_env().map_err(candle_core::Error::Msg)
}

/// A forward-only layer's packed bf16 weight, made on first use and shared by the model's clones.
#[derive(Debug, Clone, Default)]
pub struct WeightCache(Arc<OnceLock<Arc<PackedB>>>);

impl WeightCache {
    /// The packed copy of `w (n, k)`; only for weights that never change (not a training `Var`).
    fn get(&self, w: &Tensor) -> Result<Arc<PackedB>> {
        if let Some(p) = self.0.get() {
            return Ok(p.clone());
        }
        let (n, k) = w.dims2()?;
        let w = w.contiguous()?;
        // Packed straight from the weight's own storage: no f32 copy of a large head.
        let (storage, layout) = w.storage_and_layout();
        let values = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => &v[layout.start_offset()..layout.start_offset() + n * k],
            _ => candle_core::bail!("bf16 packing needs an f32 weight on the CPU, got {:?} on {:?}", w.dtype(), w.device()),
        };
        Ok(self.0.get_or_init(|| Arc::new(PackedB::of_weight(values, n, k))).clone())
    }

    /// Pack `w` now (a forward-only model about to generate), unless it is a trainable variable.
    pub fn prepare(&self, w: &Tensor) -> Result<()> {
        if !w.is_variable() {
            self.get(w)?;
        }
        Ok(())
    }
}

/// `x (..., K) . w (N, K)^T -> (..., N)` in bf16 with f32 accumulation; differentiable in both.
/// `cache` keeps the packed weight when `w` is not a trainable variable.
pub fn linear(x: &Tensor, w: &Tensor, cache: Option<&WeightCache>) -> Result<Tensor> {
    crate::kernels::linear::apply(x, w, arith(w, cache)?)
}

/// The bf16 arithmetic of a product with the weight `w`: its packed copy from `cache` when `w` is
/// not a trainable variable, else rounded on first use by the op.
pub(crate) fn arith(w: &Tensor, cache: Option<&WeightCache>) -> Result<Arith> {
    let packed = match cache {
        Some(c) if !w.is_variable() => Some(c.get(w)?),
        _ => None,
    };
    Ok(Arith::Bf16 { kernel: kernel()?, w_bf16: Arc::new(OnceLock::new()), packed })
}
