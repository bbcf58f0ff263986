//! Fused rotary phases on the queries and keys of the fused projection `(B, T, (H + 2K) D)`: one
//! pass that rotates the first (even, odd) pairs of every query and key head (all of them, or the
//! first r dimensions with partial rotary) by its position's angle and copies the rest and the
//! values. The rotation is orthogonal, so the backward pass is the same op with the angle negated.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, written, SendPtr};

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
    let (_, _, c3) = qkv.dims3()?;
    let d = 2 * tables.half;
    if d == 0 || c3 % (3 * d) != 0 {
        candle_core::bail!("rope-qk: width {c3} is not 3 x heads x {d}")
    }
    rotate_heads(qkv, tables, offset, d, 2 * c3 / 3 / d)
}

/// `qkv` `(B, T, W)` with the first `2 half` dimensions of each of its first `heads` heads of
/// width `head_dim` rotated to positions `offset..offset + T` (the queries and keys of a
/// `(B, T, (H + 2K) D)` projection: `heads` = H + K).
pub fn rotate_heads(qkv: &Tensor, tables: &Tables, offset: usize, head_dim: usize, heads: usize) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1(RotateQk { tables: tables.clone(), offset, inverse: false, head_dim, heads })
}

struct RotateQk {
    tables: Tables,
    /// Width of a head, and how many heads (from the first) rotate.
    head_dim: usize,
    heads: usize,
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
        let (half, d) = (self.tables.half, self.head_dim);
        let rotated = self.heads * d; // the query and key heads: the start of each row
        if half == 0 || 2 * half > d || rotated > c3 {
            candle_core::bail!("rope-qk: {} heads of {d} with {} rotated dimensions do not fit a width of {c3}", self.heads, 2 * half)
        }
        if (self.offset + t) * half > self.tables.cos.len() {
            candle_core::bail!("rope-qk: positions {}..{}, tables cover {}", self.offset, self.offset + t, self.tables.cos.len() / half)
        }
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let rows = b * t;
        let fill = |p: *mut f32| {
            let out = SendPtr(p);
            parallel_for(rows.div_ceil(ROWS), |chunk| {
                for row in chunk * ROWS..rows.min((chunk + 1) * ROWS) {
                    let p = self.offset + row % t;
                    let (cos, sin) = (&self.tables.cos[p * half..(p + 1) * half], &self.tables.sin[p * half..(p + 1) * half]);
                    let src = &x[row * c3..(row + 1) * c3];
                    // SAFETY: each row is written by exactly one work item.
                    let dst = unsafe { out.slice(row * c3, c3) };
                    for (head_in, head_out) in src[..rotated].chunks_exact(d).zip(dst[..rotated].chunks_exact_mut(d)) {
                        for m in 0..half {
                            let (x0, x1) = (head_in[2 * m], head_in[2 * m + 1]);
                            let (co, si) = (cos[m], sign * sin[m]);
                            head_out[2 * m] = x0 * co - x1 * si;
                            head_out[2 * m + 1] = x0 * si + x1 * co;
                        }
                        head_out[2 * half..].copy_from_slice(&head_in[2 * half..]); // past partial rotary
                    }
                    dst[rotated..].copy_from_slice(&src[rotated..]); // the values
                }
            });
        };
        // SAFETY: the chunks cover every row, and each row is written in full (rotated heads, their unrotated tails, the values).
        let y = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = RotateQk { tables: self.tables.clone(), offset: self.offset, inverse: !self.inverse, head_dim: self.head_dim, heads: self.heads };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}
