//! The f32 Linear layer as one op: `y = x . w^T`, and its backward `dx = dy . w`,
//! `dw = dy^T . x`, each a gemm product split by blocks of output rows or columns over candle's
//! own thread pool.
//!
//! Candle's matmul runs gemm on rayon's pool while every other op (the fused kernels, candle's
//! elementwise ops) runs on candle's barrier pool, so each product handed the cores from one pool
//! to the other, with a futex wake-up each way; its backward also goes through transposed views.
//! Here every product runs on the barrier pool. Blocks are fixed by the shape, so the bits depend on
//! neither the thread count nor which thread runs a block.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{f32_slice, matmul, parallel_for_ranges, SendPtr};

/// Rows (or columns) per block of work out of `m`: about an eighth of them, a multiple of 32 from
/// 32 to 512. It depends on the shape only, never on the thread count.
fn block_rows(m: usize) -> usize {
    (m / 8).div_ceil(32).clamp(1, 16) * 32
}

/// `x (..., K) . w (N, K)^T -> (..., N)`, differentiable in both.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let (n, kw) = w.dims2()?;
    if k != kw {
        candle_core::bail!("linear: x {:?} and w {:?} do not fit", x.shape(), w.shape())
    }
    let m = x.elem_count() / k.max(1);
    let y = x.reshape((m, k))?.contiguous()?.apply_op2(&w.contiguous()?, Linear)?; // (M, N)
    let mut out = dims;
    *out.last_mut().expect("x has a last dimension") = n;
    y.reshape(out)
}

/// `dst (m, n) = a (m, k) . b (k, n)` with strides, by blocks on the pool: of rows, or of
/// columns when there are more columns than rows and b is large, so that b is packed once (each
/// block packs its own slice of it and the whole of a).
///
/// # Safety
/// As [`matmul`]: every index the strides reach lies in its buffer; `dst` is (m, n), row-major.
unsafe fn product(m: usize, n: usize, k: usize, dst: &mut [f32], a: (*const f32, usize, usize), b: (*const f32, usize, usize)) {
    let out = SendPtr::new(dst);
    let (a_ptr, b_ptr) = (a.0 as usize, b.0 as usize); // plain addresses, shared read-only by the workers
    // Columns only where the other operand is large (a GPT-2 LM head's 50257 x 768): at small
    // shapes rows balance better.
    let by_rows = m >= n || k * n < 1 << 20;
    let (len, per) = if by_rows { (m, block_rows(m)) } else { (n, block_rows(n)) };
    parallel_for_ranges(len.div_ceil(per), |blocks| {
        for blk in blocks {
            let (start, size) = (blk * per, per.min(len - blk * per));
            // SAFETY: each block writes its own rows (or columns) of dst; the reads stay inside a
            // and b.
            unsafe {
                let (a0, b0) = (a_ptr as *const f32, b_ptr as *const f32);
                if by_rows {
                    matmul(size, n, k, out.get().add(start * n), (n, 1), a0.add(start * a.1), (a.1, a.2), b0, (b.1, b.2));
                } else {
                    matmul(m, size, k, out.get().add(start), (n, 1), a0, (a.1, a.2), b0.add(start * b.2), (b.1, b.2));
                }
            }
        }
    });
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?);
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let mut y = vec![0f32; m * n];
        // SAFETY: x (m, k) and w (n, k) row-major; w read transposed.
        unsafe { product(m, n, k, &mut y, (x.as_ptr(), k, 1), (w.as_ptr(), 1, k)) };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &Backward::Input)?;
        let dw = grad.apply_op2_no_bwd(x, &Backward::Weight)?;
        Ok((Some(dx), Some(dw)))
    }
}

enum Backward {
    /// `dx (M, K) = dy (M, N) . w (N, K)`.
    Input,
    /// `dw (N, K) = dy^T (N, M) . x (M, K)`.
    Weight,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "linear-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "linear-backward")?;
        let other = f32_slice(s2, l2, "linear-backward")?;
        let (m, n) = l1.shape().dims2()?;
        let (_, k) = l2.shape().dims2()?;
        match self {
            Backward::Input => {
                let mut dx = vec![0f32; m * k];
                // SAFETY: dy (m, n), w (n, k), both row-major.
                unsafe { product(m, k, n, &mut dx, (dy.as_ptr(), n, 1), (other.as_ptr(), k, 1)) };
                Ok((CpuStorage::F32(dx), Shape::from((m, k))))
            }
            Backward::Weight => {
                let mut dw = vec![0f32; n * k];
                // SAFETY: dy (m, n) read transposed, x (m, k) row-major.
                unsafe { product(n, k, m, &mut dw, (dy.as_ptr(), 1, n), (other.as_ptr(), k, 1)) };
                Ok((CpuStorage::F32(dw), Shape::from((n, k))))
            }
        }
    }
}
