//! Fused rotary phases on the q and k thirds of the fused projection `(B, T, 3C)`: one pass that
//! rotates every (even, odd) pair of every query and key by its position's angle and copies the
//! values. The rotation is orthogonal, so the backward pass is the same op with the angle negated.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, SendPtr};

/// cos and sin of p omega_m, row-major `(positions, D/2)`.
#[derive(Debug, Clone)]
pub struct Tables {
    pub cos: Arc<[f32]>,
    pub sin: Arc<[f32]>,
    /// D/2: pairs per head.
    pub half: usize,
}

/// `qkv` `(B, T, 3C)` with its q and k thirds rotated to positions `offset..offset + T` (heads
/// of width 2 half).
pub fn rotate_qk(qkv: &Tensor, tables: &Tables, offset: usize) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1(RotateQk { tables: tables.clone(), offset, inverse: false })
}

struct RotateQk {
    tables: Tables,
    /// Position of the first row.
    offset: usize,
    /// Rotate by -angle (the transpose): the backward pass.
    inverse: bool,
}

/// Rows (positions) per parallel work item.
const ROWS: usize = 16;

impl CustomOp1 for RotateQk {
    fn name(&self) -> &'static str {
        "rope-qk"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, t, c3) = l.shape().dims3()?;
        let (c, half) = (c3 / 3, self.tables.half);
        if c3 % 3 != 0 || half == 0 || c % (2 * half) != 0 {
            candle_core::bail!("rope-qk: width {c3} is not 3 x heads x {}", 2 * half)
        }
        if (self.offset + t) * half > self.tables.cos.len() {
            candle_core::bail!("rope-qk: positions {}..{}, tables cover {}", self.offset, self.offset + t, self.tables.cos.len() / half)
        }
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        let out = SendPtr::new(&mut y);
        let rows = b * t;
        parallel_for(rows.div_ceil(ROWS), |chunk| {
            for row in chunk * ROWS..rows.min((chunk + 1) * ROWS) {
                let p = self.offset + row % t;
                let (cos, sin) = (&self.tables.cos[p * half..(p + 1) * half], &self.tables.sin[p * half..(p + 1) * half]);
                let src = &x[row * c3..(row + 1) * c3];
                // SAFETY: each row is written by exactly one work item.
                let dst = unsafe { out.slice(row * c3, c3) };
                for (head_in, head_out) in src[..2 * c].chunks_exact(2 * half).zip(dst[..2 * c].chunks_exact_mut(2 * half)) {
                    for m in 0..half {
                        let (x0, x1) = (head_in[2 * m], head_in[2 * m + 1]);
                        let (co, si) = (cos[m], sign * sin[m]);
                        head_out[2 * m] = x0 * co - x1 * si;
                        head_out[2 * m + 1] = x0 * si + x1 * co;
                    }
                }
                dst[2 * c..].copy_from_slice(&src[2 * c..]);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = RotateQk { tables: self.tables.clone(), offset: self.offset, inverse: !self.inverse };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}
