//! Fused SiLU-and-multiply, the gate of a SwiGLU MLP (Llama, Qwen): a row `(..., 2F)` holding
//! the gate a and the up projection b side by side gives y = silu(a) * b, `(..., F)`, with
//! silu(a) = a sigmoid(a). Backward, with s = sigmoid(a):
//!
//!   da = dy * b * (s + a s (1 - s)),   db = dy * silu(a)
//!
//! One pass each way instead of the composed path's narrow, silu, mul (and their backward
//! nodes' zeroed buffers and adds).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, simd, written, SendPtr};

/// silu(gate) * up of `h` `(..., 2F)`, gate first: `(..., F)`.
pub fn silu_mul(h: &Tensor) -> Result<Tensor> {
    let w = h.dim(candle_core::D::Minus1)?;
    if w % 2 != 0 {
        candle_core::bail!("silu_mul: the last dimension {w} is not gate and up side by side")
    }
    h.contiguous()?.apply_op1(SiluMul)
}

/// Rows per parallel work item.
const ROWS: usize = 16;

#[inline(always)]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + simd::exp(-a)) // exp overflows to inf for very negative a: 0
}

simd::dispatch! {
    fn forward_row(a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((o, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *o = a * sigmoid(a) * b;
        }
    }
}

simd::dispatch! {
    fn backward_row(a: &[f32], b: &[f32], dy: &[f32], da: &mut [f32], db: &mut [f32]) {
        for i in 0..dy.len() {
            let s = sigmoid(a[i]);
            da[i] = dy[i] * b[i] * (s + a[i] * s * (1.0 - s));
            db[i] = dy[i] * a[i] * s;
        }
    }
}

struct SiluMul;

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = f32_slice(s, l, self.name())?;
        let dims = l.shape().dims();
        let f = dims[dims.len() - 1] / 2;
        let rows = if f == 0 { 0 } else { h.len() / (2 * f) };
        let fill = |p: *mut f32| {
            let out = SendPtr(p);
            parallel_for(rows.div_ceil(ROWS), |item| {
                for r in item * ROWS..rows.min((item + 1) * ROWS) {
                    let row = &h[r * 2 * f..(r + 1) * 2 * f];
                    // SAFETY: each row is written by one item only.
                    forward_row(&row[..f], &row[f..], unsafe { out.slice(r * f, f) });
                }
            });
        };
        // SAFETY: the items cover every row, which forward_row writes in full.
        let y = unsafe { written(rows * f, fill) };
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = f;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(&grad.contiguous()?, &SiluMulBackward)?))
    }
}

/// (h, dy) -> dh = [da | db] per row.
struct SiluMulBackward;

impl CustomOp2 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "silu-mul-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let dims = l1.shape().dims();
        let f = dims[dims.len() - 1] / 2;
        let rows = if f == 0 { 0 } else { h.len() / (2 * f) };
        let fill = |p: *mut f32| {
            let out = SendPtr(p);
            parallel_for(rows.div_ceil(ROWS), |item| {
                for r in item * ROWS..rows.min((item + 1) * ROWS) {
                    let row = &h[r * 2 * f..(r + 1) * 2 * f];
                    // SAFETY: each row is written by one item only.
                    let d = unsafe { out.slice(r * 2 * f, 2 * f) };
                    let (da, db) = d.split_at_mut(f);
                    backward_row(&row[..f], &row[f..], &dy[r * f..(r + 1) * f], da, db);
                }
            });
        };
        // SAFETY: the items cover every row, whose two halves backward_row writes in full.
        let dh = unsafe { written(h.len(), fill) };
        Ok((CpuStorage::F32(dh), l1.shape().clone()))
    }
}
