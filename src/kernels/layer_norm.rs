//! Fused bias-free LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * w, with
//! the biased variance (as torch). Backward recomputes the row statistics, with
//! x^ = (x - mean) / sigma and g = dy * w:
//!
//!   dx = (g - mean(g) - x^ mean(g x^)) / sigma,   dw = sum over rows of dy * x^
//!
//! RMSNorm is the same op without the centring: y = x / sqrt(mean(x^2) + eps) * w, whose
//! backward drops the mean(g) term.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, simd, written, SendPtr};

/// LayerNorm of `x` `(..., C)` with weight `w` `(C,)`.
pub fn layer_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if w.dims1()? != c {
        candle_core::bail!("layer_norm: weight {:?} does not fit rows of {c}", w.shape())
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, LayerNorm { eps: eps as f32, centred: true })
}

/// RMSNorm of `x` `(..., C)` with weight `w` `(C,)` (Llama's, with its epsilon inside the root).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if w.dims1()? != c {
        candle_core::bail!("rms_norm: weight {:?} does not fit rows of {c}", w.shape())
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, LayerNorm { eps: eps as f32, centred: false })
}

/// Rows per parallel work item.
const ROWS_PER_ITEM: usize = 64;

struct LayerNorm {
    eps: f32,
    /// Subtract the row mean (LayerNorm) or not (RMSNorm).
    centred: bool,
}

#[inline(always)]
fn stats(x: &[f32], eps: f32, centred: bool) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = if centred { simd::sum(x) / n } else { 0.0 };
    let mut acc = [0f32; simd::LANES];
    let chunks = x.chunks_exact(simd::LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..simd::LANES {
            let v = c[l] - mean;
            acc[l] += v * v;
        }
    }
    let var = (acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd::dispatch! {
    fn forward_row(x: &[f32], w: &[f32], y: &mut [f32], eps: f32, centred: bool) {
        let (mean, rstd) = stats(x, eps, centred);
        for ((o, &v), &wv) in y.iter_mut().zip(x).zip(w) {
            *o = (v - mean) * rstd * wv;
        }
    }
}

simd::dispatch! {
    /// dx of one row; adds the row's dy * x^ to `dw`.
    fn backward_row(x: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32], eps: f32, centred: bool) {
        let len = x.len();
        let (w, dy, dx, dw) = (&w[..len], &dy[..len], &mut dx[..len], &mut dw[..len]);
        let n = len as f32;
        let (mean, rstd) = stats(x, eps, centred);
        let (mut sg, mut sgx) = ([0f32; simd::LANES], [0f32; simd::LANES]);
        let mut i = 0;
        while i + simd::LANES <= x.len() {
            for l in 0..simd::LANES {
                let xh = (x[i + l] - mean) * rstd;
                let g = dy[i + l] * w[i + l];
                sg[l] += g;
                sgx[l] += g * xh;
                dw[i + l] += dy[i + l] * xh;
            }
            i += simd::LANES;
        }
        let (mut mg, mut mgx) = (sg.iter().sum::<f32>(), sgx.iter().sum::<f32>());
        for j in i..x.len() {
            let xh = (x[j] - mean) * rstd;
            let g = dy[j] * w[j];
            mg += g;
            mgx += g * xh;
            dw[j] += dy[j] * xh;
        }
        let (mg, mgx) = (if centred { mg / n } else { 0.0 }, mgx / n);
        for j in 0..x.len() {
            let xh = (x[j] - mean) * rstd;
            dx[j] = rstd * (dy[j] * w[j] - mg - xh * mgx);
        }
    }
}

/// A norm as this op computes it, for passes that norm rows on the way into a product: bias-free,
/// with gain `w`, `eps`, centred (LayerNorm) or not (RMSNorm).
pub(crate) struct RowNorm<'a> {
    pub w: &'a Tensor,
    pub eps: f32,
    pub centred: bool,
}

/// The norm of each row of `x` into `y` (rows of `w.len()` values) on the calling thread: the
/// op's own row function, so its bits.
pub(crate) fn forward_rows(x: &[f32], w: &[f32], y: &mut [f32], eps: f32, centred: bool) {
    for (xr, yr) in x.chunks_exact(w.len()).zip(y.chunks_exact_mut(w.len())) {
        forward_row(xr, w, yr, eps, centred);
    }
}

impl CustomOp2 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let c = w.len();
        let rows = x.len() / c;
        let fill = |p: *mut f32| {
            let out = SendPtr(p);
            parallel_for(rows.div_ceil(ROWS_PER_ITEM), |item| {
                for r in item * ROWS_PER_ITEM..rows.min((item + 1) * ROWS_PER_ITEM) {
                    // SAFETY: each row is written by one item only.
                    let dst = unsafe { out.slice(r * c, c) };
                    forward_row(&x[r * c..(r + 1) * c], w, dst, self.eps, self.centred);
                }
            })
        };
        // SAFETY: the items cover every row, and forward_row writes its row in full.
        let y = unsafe { written(x.len(), fill) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let grads = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBackward { eps: self.eps, centred: self.centred })?;
        let dx = grads.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = grads.narrow(0, n, w.elem_count())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, w, dy) -> [dx | dw], flat.
struct LayerNormBackward {
    eps: f32,
    centred: bool,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let c = w.len();
        let rows = x.len() / c;
        let items = rows.div_ceil(ROWS_PER_ITEM);
        let mut partial = vec![0f32; items * c]; // dw per item, summed into
        let partial_ptr = SendPtr::new(&mut partial);
        let fill = |p: *mut f32| {
            let out_ptr = SendPtr(p);
            // SAFETY: the c values past dx, in the buffer.
            unsafe { out_ptr.slice(x.len(), c).fill(0.0) };
            parallel_for(items, |item| {
                // SAFETY: each item writes its own rows of dx and its own row of partial dw.
                let dw = unsafe { partial_ptr.slice(item * c, c) };
                for r in item * ROWS_PER_ITEM..rows.min((item + 1) * ROWS_PER_ITEM) {
                    let dx = unsafe { out_ptr.slice(r * c, c) };
                    let row = r * c..(r + 1) * c;
                    backward_row(&x[row.clone()], w, &dy[row], dx, dw, self.eps, self.centred);
                }
            })
        };
        // SAFETY: the items write every row of dx (backward_row writes its row in full); the dw
        // tail is zeroed first.
        let mut out = unsafe { written(x.len() + c, fill) };
        let dw = &mut out[x.len()..];
        for p in partial.chunks_exact(c) {
            for (o, v) in dw.iter_mut().zip(p) {
                *o += v;
            }
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
