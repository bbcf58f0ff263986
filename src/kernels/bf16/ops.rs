//! The bf16 Linear layer as a candle op: `y = x . w^T` with bf16 operands and f32 output, and
//! its backward (`dx = dy . w`, `dw = dy^T . x`) with bf16 operands too, as PyTorch's autocast
//! runs a Linear layer, but accumulating and writing f32.
//!
//! The weight's bf16 copy is made once per forward call and shared with that call's backward, so
//! a training step rounds each weight once. A forward-only model keeps its weights packed across
//! calls ([`WeightCache`]): generation then reads half the bytes per token.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::gemm::{self, PackedB, Src};
use super::Kernel;
use crate::kernels::f32_slice;
use crate::kernels::linear::with_last;

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
        let v = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.0.get_or_init(|| Arc::new(PackedB::of_weight(&v, n, k))).clone())
    }
}

/// `x (..., K) . w (N, K)^T -> (..., N)` in bf16 with f32 accumulation; differentiable in both.
/// `cache` keeps the packed weight when `w` is not a trainable variable.
pub fn linear(x: &Tensor, w: &Tensor, cache: Option<&WeightCache>) -> Result<Tensor> {
    let k = x.dims().last().copied().unwrap_or(0);
    let (_, kw) = w.dims2()?;
    if k != kw || x.rank() == 0 {
        candle_core::bail!("bf16 linear: x {:?} and w {:?} do not fit", x.shape(), w.shape())
    }
    let packed = match cache {
        Some(c) if !w.is_variable() => Some(c.get(w)?),
        _ => None,
    };
    let op = Linear { kernel: kernel()?, w_bf16: Arc::new(OnceLock::new()), packed };
    // The leading dimensions are the product's rows, kept as they are (no reshape node).
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

struct Linear {
    kernel: Kernel,
    /// The weight rounded to bf16, `(N, K)`: made by the forward, read by the backward.
    w_bf16: Arc<OnceLock<Vec<u16>>>,
    /// The weight packed beforehand (forward-only models).
    packed: Option<Arc<PackedB>>,
}

fn rounded<'a>(cell: &'a OnceLock<Vec<u16>>, w: &[f32]) -> &'a [u16] {
    cell.get_or_init(|| {
        let mut v = vec![0u16; w.len()];
        super::round::round_slice(w, &mut v);
        v
    })
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "bf16-linear")?, f32_slice(s2, l2, "bf16-linear")?);
        let (n, k) = l2.shape().dims2()?;
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * n];
        // SAFETY: x is (m, k), the weight (n, k), y (m, n), all contiguous.
        unsafe {
            match &self.packed {
                Some(p) => gemm::gemm_packed(self.kernel, m, Src::f32_rows(x, k), p, y.as_mut_ptr(), n, true),
                None => {
                    let wb = rounded(&self.w_bf16, w);
                    let b = PackedB::new(Src::Bf16 { ptr: wb.as_ptr(), rs: 1, cs: k }, k, n); // w^T
                    gemm::gemm_packed(self.kernel, m, Src::f32_rows(x, k), &b, y.as_mut_ptr(), n, true)
                }
            }
        }
        Ok((CpuStorage::F32(y), with_last(l1.dims(), n)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &Backward { kernel: self.kernel, w_bf16: self.w_bf16.clone(), part: Part::Input })?;
        let dw = grad.apply_op2_no_bwd(x, &Backward { kernel: self.kernel, w_bf16: self.w_bf16.clone(), part: Part::Weight })?;
        Ok((Some(dx), Some(dw)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `dx (M, K) = dy (M, N) . w (N, K)`: the second argument is the weight.
    Input,
    /// `dw (N, K) = dy^T (N, M) . x (M, K)`: the second argument is the input.
    Weight,
}

struct Backward {
    kernel: Kernel,
    w_bf16: Arc<OnceLock<Vec<u16>>>,
    part: Part,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "bf16-linear-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "bf16-linear-backward")?;
        let other = f32_slice(s2, l2, "bf16-linear-backward")?;
        let n = l1.dims().last().copied().unwrap_or(0);
        let m = dy.len() / n.max(1);
        let k = l2.dims().last().copied().unwrap_or(0);
        match self.part {
            Part::Input => {
                let mut dx = vec![0f32; m * k];
                let wb = rounded(&self.w_bf16, other); // made by the forward unless it ran packed
                // SAFETY: dy (m, n), w (n, k), dx (m, k), all contiguous.
                unsafe {
                    let w = Src::Bf16 { ptr: wb.as_ptr(), rs: k, cs: 1 };
                    gemm::gemm(self.kernel, m, k, n, Src::f32_rows(dy, n), w, dx.as_mut_ptr(), k, true);
                }
                Ok((CpuStorage::F32(dx), with_last(l1.dims(), k)))
            }
            Part::Weight => {
                let mut dw = vec![0f32; n * k];
                // SAFETY: dy (m, n) read transposed, x (m, k), dw (n, k), all contiguous.
                unsafe { gemm::gemm(self.kernel, n, k, m, Src::f32_cols(dy, n), Src::f32_rows(other, k), dw.as_mut_ptr(), k, true) };
                Ok((CpuStorage::F32(dw), Shape::from((n, k))))
            }
        }
    }
}
