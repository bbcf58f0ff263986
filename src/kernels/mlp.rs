//! The bias-free GELU MLP as one op: `y = GELU(x . W_fc^T) . W_proj^T`, forward and backward.
//!
//! Composed of [`super::linear`] and [`super::gelu`] ops, candle's backward would give each of
//! the two hidden `(rows, d_ff)` tensors (the product and its GELU) a zeroed gradient buffer and
//! an add into it: at the small training shape four of every ten floats that the backward zeroes
//! and adds, with an op dispatch and a pool hand-off each (docs/performance.md). Here the hidden
//! tensors stay inside the op: the forward keeps them for its backward, which computes
//!
//!   dg = dy . W_proj,  dW_proj = dy^T . g,  dh = dg GELU'(h),  dW_fc = dh^T . x,  dx = dh . W_fc
//!
//! with the same products (`Arith`, f32 or bf16 operands) and the same elementwise kernels as
//! the composed ops, so the values are the same bits as theirs.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::layer_norm::RowNorm;
use super::linear::{block_rows, by_rows, with_last, Arith, RowsB};
use super::{cpu_f32, f32_slice, gelu, layer_norm, parallel_for_ranges, scratch, written, SendPtr};

/// `x (..., C) -> GELU(x . w_fc^T) . w_proj^T (..., C_out)` with `w_fc (F, C)`, `w_proj (C_out,
/// F)`, in f32; `tanh` picks GPT-2's approximation of GELU. Differentiable in all three.
pub fn gelu_mlp(x: &Tensor, w_fc: &Tensor, w_proj: &Tensor, tanh: bool) -> Result<Tensor> {
    apply(x, w_fc, w_proj, tanh, Arith::F32, Arith::F32)
}

/// [`gelu_mlp`] with each product in the given arithmetic.
pub(crate) fn apply(x: &Tensor, w_fc: &Tensor, w_proj: &Tensor, tanh: bool, fc: Arith, proj: Arith) -> Result<Tensor> {
    let c = x.dims().last().copied().unwrap_or(0);
    let (f, c_fc) = w_fc.dims2()?;
    let (_, f_proj) = w_proj.dims2()?;
    if x.rank() == 0 || c != c_fc || f != f_proj {
        candle_core::bail!("gelu_mlp: x {:?}, w_fc {:?} and w_proj {:?} do not fit", x.shape(), w_fc.shape(), w_proj.shape())
    }
    let op = GeluMlp { tanh, fc, proj, hidden: OnceLock::new() };
    x.contiguous()?.apply_op3(&w_fc.contiguous()?, &w_proj.contiguous()?, op)
}

/// What the forward keeps for the backward: the product `h = x . W_fc^T` and `g = GELU(h)`,
/// both `(rows, F)`.
struct Hidden {
    h: Vec<f32>,
    g: Vec<f32>,
}

struct GeluMlp {
    tanh: bool,
    fc: Arith,
    proj: Arith,
    /// Set once, by the forward.
    hidden: OnceLock<Hidden>,
}

impl CustomOp3 for GeluMlp {
    fn name(&self) -> &'static str {
        "gelu-mlp"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w_fc, w_proj) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let (f, c) = l2.shape().dims2()?;
        let (c_out, _) = l3.shape().dims2()?;
        let m = x.len() / c.max(1);
        let (h, g, y) = if by_rows(m, f, c) && by_rows(m, c_out, f) && f > 0 && c > 0 {
            let (b_fc, b_proj) = (self.fc.forward_weight(f, c, w_fc), self.proj.forward_weight(c_out, f, w_proj));
            // SAFETY: x (m, c); the weights' B operands are (c, f) and (f, c_out).
            unsafe { forward_by_rows(m, f, c, c_out, x, &b_fc, &b_proj, self.tanh) }
        } else {
            let h = self.fc.forward(m, f, c, x, w_fc);
            let g = gelu::forward_all(&h, self.tanh);
            let y = self.proj.forward(m, c_out, f, &g, w_proj);
            (h, g, y)
        };
        // A second forward of the same op instance never happens (candle runs it once).
        let _ = self.hidden.set(Hidden { h, g });
        Ok((CpuStorage::F32(y), with_last(l1.dims(), c_out)))
    }

    fn bwd(&self, x: &Tensor, w_fc: &Tensor, w_proj: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(Hidden { h, g }) = self.hidden.get() else {
            candle_core::bail!("gelu-mlp: backward without a forward")
        };
        let dy = grad.contiguous()?;
        let (f, c) = w_fc.dims2()?;
        let (c_out, _) = w_proj.dims2()?;
        let m = h.len() / f.max(1);
        let (dx, dw_fc, dw_proj) = {
            let (sx, lx) = x.storage_and_layout();
            let (sfc, lfc) = w_fc.storage_and_layout();
            let (sproj, lproj) = w_proj.storage_and_layout();
            let (sdy, ldy) = dy.storage_and_layout();
            let name = self.name();
            let (x, w_fc, w_proj, dy) = (cpu_f32(&sx, lx, name)?, cpu_f32(&sfc, lfc, name)?, cpu_f32(&sproj, lproj, name)?, cpu_f32(&sdy, ldy, name)?);
            let (dh, dx) = if by_rows(m, f, c_out) && by_rows(m, c, f) && f > 0 && c > 0 && c_out > 0 {
                let (b_proj, b_fc) = (self.proj.input_grad_weight(c_out, f, w_proj), self.fc.input_grad_weight(f, c, w_fc));
                // SAFETY: dy (m, c_out), h (m, f), and the two weights' B operands, as above.
                unsafe { backward_by_rows(m, f, c, c_out, dy, h, &b_proj, &b_fc, self.tanh) }
            } else {
                let dg = self.proj.input_grad(m, c_out, f, dy, w_proj);
                let dh = gelu::backward_all(h, &dg, self.tanh);
                drop(dg);
                let dx = self.fc.input_grad(m, f, c, &dh, w_fc);
                (dh, dx)
            };
            let dw_proj = self.proj.weight_grad(m, c_out, f, dy, g);
            let dw_fc = self.fc.weight_grad(m, f, c, &dh, x);
            (dx, dw_fc, dw_proj)
        };
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw_fc, (f, c), dev)?),
            Some(Tensor::from_vec(dw_proj, (c_out, f), dev)?),
        ))
    }
}

/// The backward's row-wise chain `(dh, dx)` by blocks of rows, as the forward runs: each block's
/// `dg = dy . W_proj`, `dh = dg GELU'(h)` and `dx = dh . W_fc` in turn on one thread, `dg` only
/// in a per-thread scratch (one hand-off instead of three, and no `(rows, F)` buffer for `dg`).
/// The blocks are those of the whole products (both split by rows here), so the values are their
/// bits. The weight gradients, sums over every row, stay whole products.
///
/// # Safety
/// `dy` holds (m, c_out) values, `h` (m, f); `b_proj` is (c_out, f), `b_fc` (f, c).
#[allow(clippy::too_many_arguments)]
unsafe fn backward_by_rows(m: usize, f: usize, c: usize, c_out: usize, dy: &[f32], h: &[f32], b_proj: &RowsB, b_fc: &RowsB, tanh: bool) -> (Vec<f32>, Vec<f32>) {
    let per = block_rows(m);
    let mut dx = Vec::new();
    let dh = written(m * f, |dhp| {
        dx = written(m * c, |dxp| {
            let (dh, dx) = (SendPtr(dhp), SendPtr(dxp));
            parallel_for_ranges(m.div_ceil(per), |blocks| {
                let mut dg = vec![0f32; per * f];
                for blk in blocks {
                    let (start, size) = (blk * per, per.min(m - blk * per));
                    // SAFETY: each block writes its own rows of dh and dx, in full; dg is this
                    // thread's; the reads stay inside dy, h and the weights.
                    unsafe {
                        let dg = &mut dg[..size * f];
                        b_proj.block(size, f, c_out, &dy[start * c_out..(start + size) * c_out], dg.as_mut_ptr());
                        let dh_blk = dh.slice(start * f, size * f);
                        gelu::backward_slice(&h[start * f..(start + size) * f], dg, dh_blk, tanh);
                        b_fc.block(size, c, f, dh_blk, dx.get().add(start * c));
                    }
                }
            });
        })
    });
    (dh, dx)
}

/// The forward `(h, g, y)` by blocks of rows, each block's first product, GELU and second
/// product in turn on one thread, while its hidden rows are still in cache: one hand-off to the
/// pool instead of three. In f32 the blocks and gemm calls are those of [`super::linear`]'s
/// products (both split by rows here), and the bf16 product's bits do not depend on how its rows
/// are split, so the values are the whole products' bits.
///
/// # Safety
/// `x` holds (m, c) values, row-major; `b_fc` is (c, f) and `b_proj` (f, c_out); f and c are
/// not 0.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_by_rows(m: usize, f: usize, c: usize, c_out: usize, x: &[f32], b_fc: &RowsB, b_proj: &RowsB, tanh: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let per = block_rows(m);
    let (mut g, mut y) = (Vec::new(), Vec::new());
    let h = written(m * f, |hp| {
        g = written(m * f, |gp| {
            y = written(m * c_out, |yp| {
                let (h, g, y) = (SendPtr(hp), SendPtr(gp), SendPtr(yp));
                parallel_for_ranges(m.div_ceil(per), |blocks| {
                    for blk in blocks {
                        let (start, size) = (blk * per, per.min(m - blk * per));
                        // SAFETY: each block writes its own rows of h, g and y, all of which it
                        // writes in full; the reads stay inside x and the weights.
                        unsafe {
                            b_fc.block(size, f, c, &x[start * c..(start + size) * c], h.get().add(start * f));
                            let g_blk = g.slice(start * f, size * f);
                            gelu::forward_slice(h.slice(start * f, size * f), g_blk, tanh);
                            b_proj.block(size, c_out, f, g_blk, y.get().add(start * c_out));
                        }
                    }
                });
            })
        })
    });
    (h, g, y)
}

/// Forward only: `x + GELU(norm(x) . W_fc^T) . W_proj^T`, the pre-norm block's MLP with its
/// residual, by blocks of rows, each block's normed rows, hidden rows and GELU in per-thread
/// scratch. Nothing `(rows, d_ff)` is written to memory (the op for training keeps both hidden
/// tensors for its backward), and the norm, the MLP and the add are one hand-off to the pool
/// instead of three. Each value is computed as the norm op, [`apply`] by rows and candle's add
/// compute it (in f32 over [`apply`]'s own blocks), so the result is their bits.
///
/// None where [`apply`] would not run by rows, or the shapes do not fit (the caller composes).
pub(crate) fn residual_forward(x: &Tensor, norm: RowNorm, w_fc: &Tensor, w_proj: &Tensor, tanh: bool, fc: Arith, proj: Arith) -> Result<Option<Tensor>> {
    let c = x.dims().last().copied().unwrap_or(0);
    let (f, c_fc) = w_fc.dims2()?;
    let (c_out, f_proj) = w_proj.dims2()?;
    let m = x.elem_count() / c.max(1);
    if x.rank() == 0 || c == 0 || f == 0 || c_fc != c || f_proj != f || c_out != c || norm.w.dims1()? != c || !by_rows(m, f, c) || !by_rows(m, c, f) || !fc.by_row_blocks(m) {
        return Ok(None);
    }
    let per = fc.forward_block_rows(m);
    let name = "mlp-residual";
    let (x, w_fc, w_proj, nw) = (x.contiguous()?, w_fc.contiguous()?, w_proj.contiguous()?, norm.w.contiguous()?);
    let y = {
        let (sx, lx) = x.storage_and_layout();
        let (sfc, lfc) = w_fc.storage_and_layout();
        let (sproj, lproj) = w_proj.storage_and_layout();
        let (sn, ln) = nw.storage_and_layout();
        let (xs, wf, wp, nws) = (cpu_f32(&sx, lx, name)?, cpu_f32(&sfc, lfc, name)?, cpu_f32(&sproj, lproj, name)?, cpu_f32(&sn, ln, name)?);
        let (b_fc, b_proj) = (fc.forward_weight(f, c, wf), proj.forward_weight(c, f, wp));
        let fill = |yp: *mut f32| {
            let out = SendPtr(yp);
            parallel_for_ranges(m.div_ceil(per), |blocks| {
                // SAFETY: each block writes its part of the scratch before reading it (the norm its
                // rows, the first product every value of h, the GELU every value of g).
                let (mut normed, mut h, mut g) = unsafe { (scratch(per * c), scratch(per * f), scratch(per * f)) };
                for blk in blocks {
                    let (start, size) = (blk * per, per.min(m - blk * per));
                    let rows = &xs[start * c..(start + size) * c];
                    let (normed, h, g) = (&mut normed[..size * c], &mut h[..size * f], &mut g[..size * f]);
                    layer_norm::forward_rows(rows, nws, normed, norm.eps, norm.centred);
                    // SAFETY: each block writes its own rows of y, in full (the second product
                    // writes every value, then the add reads and rewrites it); the scratch is
                    // this thread's; B operands are (c, f) and (f, c).
                    unsafe {
                        b_fc.block(size, f, c, normed, h.as_mut_ptr());
                        gelu::forward_slice(h, g, tanh);
                        let dst = out.slice(start * c, size * c);
                        b_proj.block(size, c, f, g, dst.as_mut_ptr());
                        for (o, &r) in dst.iter_mut().zip(rows) {
                            *o += r; // candle's x + y: an IEEE sum, the same bits either way round
                        }
                    }
                }
            });
        };
        // SAFETY: the blocks cover every row of y and write each in full.
        unsafe { written(m * c, fill) }
    };
    Tensor::from_vec(y, x.shape(), x.device()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        // A cheap deterministic spread of signs and sizes.
        let v: Vec<f32> = (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2001) as f32 / 1000.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_residual_pass_gives_the_bits_of_norm_mlp_and_add() {
        // Against the ops a training forward runs (the norm op, the MLP op, candle's add): rows
        // enough for several blocks in both precisions with a short last one, an odd width, both
        // norms and both GELUs.
        let kernel = crate::kernels::bf16::ops::kernel().unwrap();
        for (rows, c, f, centred, tanh) in [(203, 37, 150, true, false), (203, 37, 150, false, true), (700, 64, 256, true, false)] {
            let x = values(&[1, rows, c], 1);
            let (w_fc, w_proj, nw) = ((values(&[f, c], 2) * 0.3).unwrap(), (values(&[c, f], 3) * 0.3).unwrap(), (values(&[c], 4) + 1.0).unwrap());
            let normed = if centred { layer_norm::layer_norm(&x, &nw, 1e-5) } else { layer_norm::rms_norm(&x, &nw, 1e-5) }.unwrap();
            let bf16 = || Arith::Bf16 { kernel, w_bf16: Default::default(), packed: None };
            for (arith, name) in [(Arith::F32, "f32"), (bf16(), "bf16")] {
                let composed = (&x + apply(&normed, &w_fc, &w_proj, tanh, arith.clone(), arith.clone()).unwrap()).unwrap();
                let norm = RowNorm { w: &nw, eps: 1e-5, centred };
                let fused = residual_forward(&x, norm, &w_fc, &w_proj, tanh, arith.clone(), arith).unwrap().expect("runs by rows");
                let (a, b) = (fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(), composed.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{rows} x {c} -> {f}, centred {centred}, tanh {tanh}, {name}");
            }
        }
    }
}
