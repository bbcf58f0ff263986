//! The Linear layer as one op: `y = x . w^T`, and its backward `dx = dy . w`, `dw = dy^T . x`, in
//! f32 (each a gemm product split by blocks of output rows or columns over candle's own thread
//! pool) or with bf16 operands ([`crate::kernels::bf16::ops::linear`], the bf16 GEMM).
//!
//! Candle's matmul runs gemm on rayon's pool while every other op (the fused kernels, candle's
//! elementwise ops) runs on candle's barrier pool, so each product handed the cores from one pool
//! to the other, with a futex wake-up each way; its backward also goes through transposed views.
//! Here every product runs on the barrier pool. Blocks are fixed by the shape, so the bits depend on
//! neither the thread count nor which thread runs a block.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::bf16::gemm::{self as bf16_gemm, PackedB, Src};
use super::bf16::Kernel;

use super::layer_norm::{self, RowNorm};
use super::{cpu_f32, f32_slice, matmul, parallel_for_ranges, scratch, written, SendPtr};

/// Rows (or columns) per block of work out of `m`: about a quarter of them, a multiple of 32 from
/// 32 to 512. It depends on the shape only, never on the thread count.
pub(crate) fn block_rows(m: usize) -> usize {
    (m / 4).div_ceil(32).clamp(1, 16) * 32
}

/// `x (..., K) . w (N, K)^T -> (..., N)`, differentiable in both. The leading dimensions are the
/// rows of one product, kept as they are: no reshape enters the graph (each node of the graph
/// costs a zeroed gradient and an add in candle's backward).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    apply(x, w, Arith::F32)
}

/// How the op's three products are computed.
#[derive(Clone)]
pub(crate) enum Arith {
    /// f32 throughout.
    F32,
    /// bf16 operands, f32 accumulation, through `kernel`.
    Bf16 {
        kernel: Kernel,
        /// The weight rounded to bf16, `(N, K)`: made by the forward, read by the backward, so a
        /// training step rounds each weight once.
        w_bf16: Arc<OnceLock<Vec<u16>>>,
        /// The weight packed beforehand (forward-only models).
        packed: Option<Arc<PackedB>>,
    },
}

/// [`linear`] in the given arithmetic.
pub(crate) fn apply(x: &Tensor, w: &Tensor, arith: Arith) -> Result<Tensor> {
    let k = x.dims().last().copied().unwrap_or(0);
    let (_, kw) = w.dims2()?;
    if k != kw || x.rank() == 0 {
        candle_core::bail!("linear: x {:?} and w {:?} do not fit", x.shape(), w.shape())
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear(arith))
}

/// `w` rounded to bf16, made once per cell.
fn rounded<'a>(cell: &'a OnceLock<Vec<u16>>, w: &[f32]) -> &'a [u16] {
    cell.get_or_init(|| {
        let mut v = vec![0u16; w.len()];
        super::bf16::round::round_slice(w, &mut v);
        v
    })
}

impl Arith {
    /// For bf16, the kernel and `w (n, k)` packed as the B of `x . w^T`: the packed copy kept
    /// beforehand, or packed now from the weight rounded once per cell. None for f32.
    pub(crate) fn packed_weight(&self, n: usize, k: usize, w: &[f32]) -> Option<(Kernel, std::borrow::Cow<'_, PackedB>)> {
        match self {
            Arith::F32 => None,
            Arith::Bf16 { kernel, packed: Some(p), .. } => Some((*kernel, std::borrow::Cow::Borrowed(p.as_ref()))),
            Arith::Bf16 { kernel, w_bf16, packed: None } => {
                let wb = rounded(w_bf16, w);
                // SAFETY: wb is (n, k), read transposed as (k, n).
                Some((*kernel, std::borrow::Cow::Owned(unsafe { PackedB::new(Src::Bf16 { ptr: wb.as_ptr(), rs: 1, cs: k }, k, n) })))
            }
        }
    }

    /// `y (m, n) = x (m, k) . w (n, k)^T`.
    pub(crate) fn forward(&self, m: usize, n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
        if k > 0 && by_rows(m, n, k) && self.by_row_blocks(m) {
            return by_blocks(m, n, k, x, &self.forward_weight(n, k, w), self.forward_block_rows(m));
        }
        match self.packed_weight(n, k, w) {
            // SAFETY: x (m, k) and w (n, k) row-major; w read transposed.
            None => unsafe { product(m, n, k, (x.as_ptr(), k, 1), (w.as_ptr(), 1, k)) },
            // SAFETY: x (m, k); the output (m, n) is written in full by the product.
            Some((kernel, b)) => unsafe { bf16_out(m, n, k, |c| bf16_gemm::gemm_packed(kernel, m, Src::f32_rows(x, k), &b, c, n, true)) },
        }
    }

    /// Rows per block of a forward-only pass by rows over `m` rows ([`forward_rows`],
    /// [`super::mlp::residual_forward`]): in f32 [`product`]'s own blocks, whose gemm calls then
    /// give its bits; in bf16, whose product's bits do not depend on the blocks, 64, so that a
    /// block's hidden rows stay in L2.
    pub(crate) fn forward_block_rows(&self, m: usize) -> usize {
        match self {
            Arith::F32 => block_rows(m),
            Arith::Bf16 { .. } => 64,
        }
    }

    /// Whether a product over `m` rows that splits by rows runs by blocks of
    /// [`Arith::forward_block_rows`]: always in f32 (its own blocks), and in bf16 only where
    /// there are two blocks or more, since one block runs on one thread, while the whole bf16
    /// product splits a few rows (a generated token's) by columns over the pool.
    pub(crate) fn by_row_blocks(&self, m: usize) -> bool {
        matches!(self, Arith::F32) || m > self.forward_block_rows(m)
    }

    /// The B of `y = x . w^T` for products by blocks of rows ([`RowsB`]): `w (n, k)` read
    /// transposed for f32, or [`Arith::packed_weight`] for bf16.
    pub(crate) fn forward_weight<'a>(&'a self, n: usize, k: usize, w: &'a [f32]) -> RowsB<'a> {
        match self.packed_weight(n, k, w) {
            None => RowsB::F32 { b: w, rs: 1, cs: k },
            Some((kernel, b)) => RowsB::Bf16(kernel, b),
        }
    }

    /// The B of `dx = dy . w` for products by blocks of rows: `w (n, k)` itself for f32, or
    /// packed once from the weight rounded once per cell for bf16.
    pub(crate) fn input_grad_weight<'a>(&self, n: usize, k: usize, w: &'a [f32]) -> RowsB<'a> {
        match self {
            Arith::F32 => RowsB::F32 { b: w, rs: k, cs: 1 },
            Arith::Bf16 { kernel, w_bf16, .. } => {
                let wb = rounded(w_bf16, w);
                // SAFETY: wb is (n, k), row-major.
                RowsB::Bf16(*kernel, std::borrow::Cow::Owned(unsafe { PackedB::new(Src::Bf16 { ptr: wb.as_ptr(), rs: k, cs: 1 }, n, k) }))
            }
        }
    }

    /// `dx (m, k) = dy (m, n) . w (n, k)`.
    pub(crate) fn input_grad(&self, m: usize, n: usize, k: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
        if n > 0 && by_rows(m, k, n) && self.by_row_blocks(m) {
            return by_blocks(m, k, n, dy, &self.input_grad_weight(n, k, w), self.forward_block_rows(m));
        }
        match self {
            // SAFETY: dy (m, n), w (n, k), both row-major.
            Arith::F32 => unsafe { product(m, k, n, (dy.as_ptr(), n, 1), (w.as_ptr(), k, 1)) },
            Arith::Bf16 { kernel, w_bf16, .. } => {
                let wb = rounded(w_bf16, w); // made by the forward unless it ran packed
                let b = Src::Bf16 { ptr: wb.as_ptr(), rs: k, cs: 1 };
                // SAFETY: as above; the output is written in full.
                unsafe { bf16_out(m, k, n, |c| bf16_gemm::gemm(*kernel, m, k, n, Src::f32_rows(dy, n), b, c, k, true)) }
            }
        }
    }

    /// `dw (n, k) = dy (m, n)^T . x (m, k)`.
    pub(crate) fn weight_grad(&self, m: usize, n: usize, k: usize, dy: &[f32], x: &[f32]) -> Vec<f32> {
        match self {
            // SAFETY: dy (m, n) read transposed, x (m, k) row-major.
            Arith::F32 => unsafe { product(n, k, m, (dy.as_ptr(), 1, n), (x.as_ptr(), k, 1)) },
            Arith::Bf16 { kernel, .. } => {
                // SAFETY: as above; the output is written in full.
                unsafe { bf16_out(n, k, m, |c| bf16_gemm::gemm(*kernel, n, k, m, Src::f32_cols(dy, n), Src::f32_rows(x, k), c, k, true)) }
            }
        }
    }
}

/// The B operand `(k, n)` of products run block of rows by block of rows on one thread each:
/// f32 with element (kk, j) at `b[kk * rs + j * cs]`, or bf16 packed once.
pub(crate) enum RowsB<'a> {
    F32 { b: &'a [f32], rs: usize, cs: usize },
    Bf16(Kernel, std::borrow::Cow<'a, PackedB>),
}

impl RowsB<'_> {
    /// `dst (rows, n) = a (rows, k) . B` on the calling thread, `a` and `dst` row-major. In f32
    /// the call is the one [`product`] makes for a block of rows, so the values are its bits; in
    /// bf16 the product's bits do not depend on the blocks.
    ///
    /// # Safety
    /// `a` holds rows x k values, `dst` rows x n writable ones, not aliasing; B's strides stay
    /// inside `b`.
    pub(crate) unsafe fn block(&self, rows: usize, n: usize, k: usize, a: &[f32], dst: *mut f32) {
        match self {
            RowsB::F32 { b, rs, cs } => matmul(rows, n, k, dst, (n, 1), a.as_ptr(), (k, 1), b.as_ptr(), (*rs, *cs)),
            RowsB::Bf16(kernel, b) => bf16_gemm::gemm_packed(*kernel, rows, Src::f32_rows(a, k), b, dst, n, false),
        }
    }
}

/// Forward only, by blocks of rows on one thread each: `y = norm(x) . w^T` with each block's
/// rows normed in per-thread scratch (no normed tensor written), or `y = r + x . w^T` with the
/// residual `r` added while the block is in cache (no separate pass over the output). Each value
/// is computed as the norm op, [`apply`] and candle's add compute it (in f32 over [`product`]'s
/// own blocks), so the result is their bits. None where [`product`] would not split by rows,
/// or the shapes do not fit (the caller composes).
pub(crate) fn forward_rows(x: &Tensor, norm: Option<RowNorm>, w: &Tensor, residual: Option<&Tensor>, arith: Arith) -> Result<Option<Tensor>> {
    let k = x.dims().last().copied().unwrap_or(0);
    let (n, kw) = w.dims2()?;
    let m = x.elem_count() / k.max(1);
    let out_shape = with_last(x.dims(), n);
    let fits = x.rank() > 0 && k > 0 && kw == k && by_rows(m, n, k) && arith.by_row_blocks(m);
    let norm_fits = norm.as_ref().is_none_or(|nm| nm.w.dims1().is_ok_and(|c| c == k));
    if !fits || !norm_fits || residual.is_some_and(|r| r.shape() != &out_shape) {
        return Ok(None);
    }
    let per = arith.forward_block_rows(m);
    let name = "linear-rows";
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let gain = norm.as_ref().map(|nm| nm.w.contiguous()).transpose()?;
    let y = {
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (xs, ws) = (cpu_f32(&sx, lx, name)?, cpu_f32(&sw, lw, name)?);
        let r_guard = residual.as_ref().map(|r| r.storage_and_layout());
        let rs = match &r_guard {
            Some((s, l)) => Some(cpu_f32(s, l, name)?),
            None => None,
        };
        let g_guard = gain.as_ref().map(|g| g.storage_and_layout());
        let gs = match &g_guard {
            Some((s, l)) => Some(cpu_f32(s, l, name)?),
            None => None,
        };
        let b = arith.forward_weight(n, k, ws);
        let fill = |yp: *mut f32| {
            let out = SendPtr(yp);
            parallel_for_ranges(m.div_ceil(per), |blocks| {
                // SAFETY: each block norms its rows into the scratch before the product reads them.
                let mut normed = unsafe { scratch(if gs.is_some() { per * k } else { 0 }) };
                for blk in blocks {
                    let (start, size) = (blk * per, per.min(m - blk * per));
                    let rows = &xs[start * k..(start + size) * k];
                    let a = match (gs, &norm) {
                        (Some(g), Some(nm)) => {
                            layer_norm::forward_rows(rows, g, &mut normed[..size * k], nm.eps, nm.centred);
                            &normed[..size * k]
                        }
                        _ => rows,
                    };
                    // SAFETY: each block writes its own rows of y, in full (the product writes
                    // every value, then the add reads and rewrites it); b is (k, n).
                    unsafe {
                        let dst = out.slice(start * n, size * n);
                        b.block(size, n, k, a, dst.as_mut_ptr());
                        if let Some(r) = rs {
                            for (o, &v) in dst.iter_mut().zip(&r[start * n..(start + size) * n]) {
                                *o += v; // candle's r + y: an IEEE sum, the same bits either way round
                            }
                        }
                    }
                }
            });
        };
        // SAFETY: the blocks cover every row of y and write each in full.
        unsafe { written(m * n, fill) }
    };
    Tensor::from_vec(y, out_shape, x.device()).map(Some)
}

/// `a (m, k) . B -> (m, n)` by blocks of `per` rows on the pool, each block on one thread
/// ([`RowsB::block`]): in f32 with [`product`]'s blocks these are its gemm calls, so its bits; in
/// bf16 the rows of A are packed a block at a time, in cache, rather than all at once.
fn by_blocks(m: usize, n: usize, k: usize, a: &[f32], b: &RowsB, per: usize) -> Vec<f32> {
    let fill = |dst: *mut f32| {
        let out = SendPtr(dst);
        parallel_for_ranges(m.div_ceil(per), |blocks| {
            for blk in blocks {
                let (start, size) = (blk * per, per.min(m - blk * per));
                // SAFETY: each block writes its own rows of the output, in full; a holds m x k
                // values and B is (k, n).
                unsafe { b.block(size, n, k, &a[start * k..(start + size) * k], out.get().add(start * n)) };
            }
        });
    };
    // SAFETY: the blocks cover every row.
    unsafe { written(m * n, fill) }
}

/// An (rows, cols) output of a bf16 product over `depth` that `run` writes in full (zeros when
/// `depth` is 0, where the product writes nothing).
///
/// # Safety
/// `run` must write all rows x cols values at the pointer it gets, row stride cols.
unsafe fn bf16_out(rows: usize, cols: usize, depth: usize, run: impl FnOnce(*mut f32)) -> Vec<f32> {
    if depth == 0 {
        return vec![0f32; rows * cols];
    }
    written(rows * cols, run)
}

/// `dims` with the last one replaced by `last`.
pub(crate) fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut d = dims.to_vec();
    if let Some(l) = d.last_mut() {
        *l = last;
    }
    Shape::from(d)
}

/// `dst (m, n) = a (m, k) . b (k, n)` with strides, by blocks on the pool: of rows, or of
/// columns when there are more columns than rows and b is large, so that b is packed once (each
/// block packs its own slice of it and the whole of a).
///
/// # Safety
/// As [`matmul`]: every index the strides reach lies in its buffer; `dst` is (m, n), row-major.
unsafe fn product(m: usize, n: usize, k: usize, a: (*const f32, usize, usize), b: (*const f32, usize, usize)) -> Vec<f32> {
    if k == 0 {
        return vec![0f32; m * n];
    }
    // SAFETY: the blocks below cover every row (or column) of the m x n output, and gemm writes
    // each element of its block (it does not read the destination).
    written(m * n, |dst| unsafe { fill(m, n, k, dst, a, b) })
}

/// Whether [`product`] splits an (m, n) output over k by blocks of [`block_rows`] rows, rather than
/// of columns. Columns only where the other operand is large (a GPT-2 LM head's 50257 x 768): at
/// small shapes rows balance better.
pub(crate) fn by_rows(m: usize, n: usize, k: usize) -> bool {
    m >= n || k * n < 1 << 20
}

/// [`product`] into `dst`.
unsafe fn fill(m: usize, n: usize, k: usize, dst: *mut f32, a: (*const f32, usize, usize), b: (*const f32, usize, usize)) {
    let out = SendPtr(dst);
    let (a_ptr, b_ptr) = (a.0 as usize, b.0 as usize); // plain addresses, shared read-only by the workers
    let by_rows = by_rows(m, n, k);
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

struct Linear(Arith);

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?);
        let (n, k) = l2.shape().dims2()?;
        let m = x.len() / k.max(1);
        Ok((CpuStorage::F32(self.0.forward(m, n, k, x, w)), with_last(l1.dims(), n)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &Backward { arith: self.0.clone(), part: Part::Input })?;
        let dw = grad.apply_op2_no_bwd(x, &Backward { arith: self.0.clone(), part: Part::Weight })?;
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
    arith: Arith,
    part: Part,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "linear-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s1, l1, "linear-backward")?;
        let other = f32_slice(s2, l2, "linear-backward")?;
        let n = l1.dims().last().copied().unwrap_or(0);
        let m = dy.len() / n.max(1);
        let k = l2.dims().last().copied().unwrap_or(0);
        Ok(match self.part {
            Part::Input => (CpuStorage::F32(self.arith.input_grad(m, n, k, dy, other)), with_last(l1.dims(), k)),
            Part::Weight => (CpuStorage::F32(self.arith.weight_grad(m, n, k, dy, other)), Shape::from((n, k))),
        })
    }
}
