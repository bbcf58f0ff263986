//! Fused causal attention with a per-head inverse temperature.
//!
//! Input: the fused projection `qkv` `(B, T, (H + 2K) D)` laid out `[q | k | v]` per position,
//! H query heads and K key/value heads of width D (K = H unless grouped: query head h reads key
//! head h / (H / K)), and the per-head factor `scale` `(H,)` = beta_h beta_0. Output: the heads
//! merged back, `(B, T, H D)`, ready for the output projection. Per batch row and head, with
//! q'_i = scale_h q_i:
//!
//!   alpha_ij = exp(q'_i . k_j) / Z_i over j <= i (and i - j < w in a local window),
//!   y_i = sum_j alpha_ij v_j
//!
//! which is [`crate::model`]'s composed attention. The (T, T) weights live only in per-thread
//! scratch: backward recomputes them from q and k and never keeps more than one head's worth.
//! Gradients: with dA = dY V^T and dS_ij = alpha_ij (dA_ij - sum_j' alpha_ij' dA_ij'),
//! dq'_i = sum_j dS_ij k_j, dk_j = sum_i dS_ij q'_i, dv_j = sum_i alpha_ij dy_i; then
//! dq_i = scale_h dq'_i and d scale_h = sum_i dq'_i . q_i. A key/value head's gradients sum over
//! the query heads of its group, which one work item handles in turn, so no two threads write
//! the same rows.
//!
//! With a bf16 kernel ([`causal_attention_in`]) the six products (q'.k and alpha.v forward, and
//! the four of backward) take bf16 operands and accumulate in f32; the softmax stays f32.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::bf16::gemm::{gemm_packed_prefix_amx, PackedB, Src};
use super::bf16::Kernel;
use super::head_mm::{self, Mat};
use super::{f32_slice, matmul, parallel_for, simd, written, SendPtr};

/// `dst (m, n) = lhs (m, k) . rhs (k, n)` on the calling thread, in f32 or, given a bf16 kernel,
/// with bf16 operands.
///
/// # Safety
/// As [`matmul`], with a column stride of 1 for `dst`.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    bf16: Option<Kernel>,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    match bf16 {
        None => matmul(m, n, k, dst, (dst_rs, dst_cs), lhs, (lhs_rs, lhs_cs), rhs, (rhs_rs, rhs_cs)),
        Some(kernel) => {
            debug_assert_eq!(dst_cs, 1);
            let a = Src::F32 { ptr: lhs, rs: lhs_rs, cs: lhs_cs };
            let b = Src::F32 { ptr: rhs, rs: rhs_rs, cs: rhs_cs };
            super::bf16::gemm::gemm(kernel, m, n, k, a, b, dst, dst_rs, false)
        }
    }
}

/// Queries per block of the causal AMX products: one row of tile pairs.
const AMX_ROWS: usize = 32;
/// Positions from which the forward's products run on AMX ([`Dims::amx_heads`]).
const AMX_MIN_T: usize = 128;

/// Which heads read which keys: H query heads on K key/value heads, and the local window of
/// keys a query sees (itself and the window - 1 before it), None for every earlier key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub window: Option<usize>,
}

impl Heads {
    /// Multi-head attention over every earlier key: one key/value head per query head.
    pub fn mha(n_head: usize) -> Self {
        Self { n_head, n_kv_head: n_head, window: None }
    }
}

/// Merged-head Boltzmann attention of `qkv` `(B, T, 3C)` with `scale` `(H,)` -> `(B, T, C)`.
pub fn causal_attention(qkv: &Tensor, scale: &Tensor, n_head: usize) -> Result<Tensor> {
    causal_attention_in(qkv, scale, Heads::mha(n_head), None)
}

/// [`causal_attention`] for any [`Heads`], with its products in f32 (`bf16` None) or with bf16
/// operands: `(B, T, (H + 2K) D)` -> `(B, T, H D)`.
pub fn causal_attention_in(qkv: &Tensor, scale: &Tensor, heads: Heads, bf16: Option<Kernel>) -> Result<Tensor> {
    check(qkv, scale, heads)?;
    let (b, t, _) = qkv.dims3()?;
    let training = qkv.track_op() || scale.track_op();
    let kept = (training && b * heads.n_head * t * t <= KEEP_MAX).then(Arc::default);
    qkv.contiguous()?.apply_op2(&scale.contiguous()?, CausalAttention { heads, keep_weights: false, bf16, kept })
}

/// The most weights (B H T T values) a training forward keeps for its backward, which otherwise
/// computes them again: 16 MiB per layer (the small bench shape's are 0.75 MiB; the large one's,
/// 96 MiB, are recomputed).
const KEEP_MAX: usize = 1 << 22;

/// Forward-only [`causal_attention`] that also hands back the weights it applied: the merged
/// output `(B, T, C)` and alpha `(B, H, T, T)` (zero for keys a query does not see). The same
/// pass as the training forward, with each head's weights copied out of its scratch after they
/// were used, so what a reader sees is what the kernel ran. Off the hot path: it materialises
/// every (T, T).
pub fn causal_attention_with_weights(qkv: &Tensor, scale: &Tensor, n_head: usize) -> Result<(Tensor, Tensor)> {
    causal_attention_with_weights_in(qkv, scale, Heads::mha(n_head), None)
}

/// [`causal_attention_with_weights`] for any [`Heads`], in f32 or bf16, as [`causal_attention_in`].
pub fn causal_attention_with_weights_in(qkv: &Tensor, scale: &Tensor, heads: Heads, bf16: Option<Kernel>) -> Result<(Tensor, Tensor)> {
    check(qkv, scale, heads)?;
    let (b, t, _) = qkv.dims3()?;
    let dims = Dims::of(qkv.shape(), heads)?;
    let (c, h) = (dims.c(), heads.n_head);
    let flat = qkv.contiguous()?.apply_op2_no_bwd(&scale.contiguous()?, &CausalAttention { heads, keep_weights: true, bf16, kept: None })?;
    let y = flat.narrow(0, 0, b * t * c)?.reshape((b, t, c))?;
    let alpha = flat.narrow(0, b * t * c, b * h * t * t)?.reshape((b, h, t, t))?;
    Ok((y, alpha))
}

fn check(qkv: &Tensor, scale: &Tensor, heads: Heads) -> Result<()> {
    let (_, _, w) = qkv.dims3()?;
    let Heads { n_head: h, n_kv_head: kv, window } = heads;
    let fits = h > 0 && kv > 0 && h % kv == 0 && w % (h + 2 * kv) == 0 && w > 0 && scale.dims1()? == h && window != Some(0);
    if !fits {
        candle_core::bail!("causal_attention: qkv width {w} and scale {:?} do not fit {h} query heads on {kv} key/value heads (window {window:?})", scale.shape())
    }
    Ok(())
}

thread_local! {
    /// Per-thread scratch: one head's scaled queries, weights and their gradients.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Shape of one call: batch, positions, query heads, key/value heads, head size, window.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    kv: usize,
    d: usize,
    window: Option<usize>,
}

impl Dims {
    fn of(shape: &Shape, heads: Heads) -> Result<Self> {
        let (b, t, w) = shape.dims3()?;
        let Heads { n_head: h, n_kv_head: kv, window } = heads;
        Ok(Dims { b, t, h, kv, d: w / (h + 2 * kv), window })
    }

    /// Width of the merged output.
    fn c(&self) -> usize {
        self.h * self.d
    }

    /// Row stride of qkv: H queries, K keys and K values.
    fn rs(&self) -> usize {
        (self.h + 2 * self.kv) * self.d
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.h / self.kv
    }

    /// Offset of head `h`'s query in batch row `b` of qkv.
    fn q_at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.rs() + h * self.d
    }

    /// Offset of the key that query head `h` reads (its values at + K D).
    fn k_at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.rs() + (self.h + h / self.group()) * self.d
    }

    /// Offset of head `h` in batch row `b` of the merged output.
    fn y_at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.c() + h * self.d
    }

    /// The first key query `i` sees.
    fn first_key(&self, i: usize) -> usize {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))
    }

    /// One past the last query that sees key `j`.
    fn query_end(&self, j: usize) -> usize {
        self.window.map_or(self.t, |w| (j + w).min(self.t))
    }

    /// Whether the f32 products of a call with this bf16 kernel (None: f32) run on
    /// [`head_mm`]: over the causal part only, with gemm's bits.
    fn by_tiles(&self, bf16: Option<Kernel>) -> bool {
        bf16.is_none() && head_mm::applies(self.t, self.d)
    }

    /// Whether the bf16 products of a call with this kernel run on [`head_mm`]'s bf16 tiles
    /// (the bf16 GEMM's bits, over the causal part only): for the AVX-512 kernels, whose
    /// emulation the tiles are (a forced AVX2 or scalar kernel keeps the GEMM), and for AMX's,
    /// whose per-head GEMMs would pack every head's operands and compute the masked half too
    /// (AMX's forward from [`AMX_MIN_T`] positions goes to [`Dims::amx_heads`] first).
    fn bf16_tiles(&self, bf16: Option<Kernel>) -> bool {
        matches!(bf16, Some(Kernel::Avx512 | Kernel::Avx512Bf16 | Kernel::Amx)) && head_mm::applies_bf16()
    }

    /// Whether the forward's bf16 products (q.k and alpha.v) run on AMX's tiles by blocks of
    /// [`AMX_ROWS`] queries, each against the keys up to its last: with the AMX kernel, from
    /// [`AMX_MIN_T`] positions (below, the per-head packing costs more than the tiles save;
    /// the backward's products stay on [`head_mm`]'s tiles).
    fn amx_heads(&self, bf16: Option<Kernel>) -> bool {
        bf16 == Some(Kernel::Amx) && self.t >= AMX_MIN_T
    }

    /// Positions and head width rounded up to even: the padded depths of the bf16 tiles.
    fn tp(&self) -> usize {
        self.t.next_multiple_of(2)
    }

    fn dp(&self) -> usize {
        self.d.next_multiple_of(2)
    }

    /// The scratch [`weights`] works in: the keys' transpose, and for the bf16 tiles the rounded
    /// queries and transposed keys.
    fn weights_work(&self) -> usize {
        self.t * self.d + 2 * self.tp() * self.dp()
    }
}

/// The scaled queries `qs (T, D)` of the head at `q0`: q'_i = scale q_i.
fn scaled_queries(qkv: &[f32], dims: Dims, q0: usize, scale: f32, qs: &mut [f32]) {
    let (rs, d) = (dims.rs(), dims.d);
    for i in 0..dims.t {
        let q = &qkv[q0 + i * rs..q0 + i * rs + d];
        for (dst, &v) in qs[i * d..(i + 1) * d].iter_mut().zip(q) {
            *dst = scale * v;
        }
    }
}

/// Scaled queries `qs (T, D)` of one head and its weights `a (T, T)`: alpha, zero for keys the
/// query does not see. `work`: [`Dims::weights_work`] values of scratch.
///
/// # Safety
/// `qkv` must be the whole buffer of `dims`, `q0` and `k0` offsets from it.
#[allow(clippy::too_many_arguments)]
unsafe fn weights(bf16: Option<Kernel>, qkv: &[f32], dims: Dims, q0: usize, k0: usize, scale: f32, qs: &mut [f32], a: &mut [f32], work: &mut [f32]) {
    let Dims { t, d, .. } = dims;
    let rs = dims.rs();
    scaled_queries(qkv, dims, q0, scale, qs);
    // beta_h s_ij = q'_i . k_j: (T, D) x (D, T)
    let (kt, rest) = work.split_at_mut(t * d);
    if dims.by_tiles(bf16) {
        // Keys up to the tile's last query only; the rest of each row is zeroed below.
        head_mm::transpose(qkv[k0..].as_ptr(), rs, t, d, kt);
        head_mm::product(t, t, a.as_mut_ptr(), t, Mat { ptr: qs.as_ptr(), rs: d, cs: 1 }, kt.as_ptr(), t, |_, _| 0..d, |i1| i1);
    } else if dims.amx_heads(bf16) {
        // k^T (D, T) packed once; each block of queries against the keys up to its last (the
        // softmax below zeroes the rest of each row).
        let kt = PackedB::new(Src::F32 { ptr: qkv.as_ptr().add(k0), rs: 1, cs: rs }, d, t);
        for r0 in (0..t).step_by(AMX_ROWS) {
            let r1 = (r0 + AMX_ROWS).min(t);
            gemm_packed_prefix_amx(r1 - r0, r1, d, Src::F32 { ptr: qs.as_ptr().add(r0 * d), rs: d, cs: 1 }, &kt, a.as_mut_ptr().add(r0 * t), t);
        }
    } else if dims.bf16_tiles(bf16) {
        let (tp, dp) = (dims.tp(), dims.dp());
        let (qr, ktr) = rest.split_at_mut(tp * dp);
        head_mm::transpose(qkv[k0..].as_ptr(), rs, t, d, kt);
        head_mm::round_rows(qs, d, t, d, tp, dp, qr);
        head_mm::round_rows(kt, t, d, t, dp, tp, ktr);
        head_mm::product_bf16(t, t, a.as_mut_ptr(), t, Mat { ptr: qr.as_ptr(), rs: dp, cs: 1 }, ktr.as_ptr(), tp, |_, _| 0..d, |i1| i1);
    } else {
        mm(bf16, t, t, d, a.as_mut_ptr(), (t, 1), qs.as_ptr(), (d, 1), qkv.as_ptr().add(k0), (1, rs));
    }
    for i in 0..t {
        let lo = dims.first_key(i);
        simd::softmax_row(&mut a[i * t + lo..(i + 1) * t], i + 1 - lo);
        a[i * t..i * t + lo].fill(0.0);
    }
}

struct CausalAttention {
    heads: Heads,
    /// Append every head's weights `(B, H, T, T)` to the output, which is then flat:
    /// `[y (B*T*C) | alpha (B*H*T*T)]`. Forward-only.
    keep_weights: bool,
    /// The bf16 kernel of the products, None for f32.
    bf16: Option<Kernel>,
    /// Where the forward leaves every head's weights `(B, H, T, T)` for the backward to read
    /// instead of computing them again (the same values), when a backward follows and they are
    /// few enough ([`KEEP_MAX`]).
    kept: Option<Arc<OnceLock<Vec<f32>>>>,
}

impl CustomOp2 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, self.name())?;
        let scale = f32_slice(s2, l2, self.name())?;
        let dims = Dims::of(l1.shape(), self.heads)?;
        let Dims { b, t, h, d, .. } = dims;
        let y_len = b * t * dims.c();
        let len = y_len + if self.keep_weights { b * h * t * t } else { 0 };
        // The weights for the backward, each (b, h)'s (T, T) block written in full by its item.
        let mut kept: Option<Vec<f32>> = self.kept.as_ref().map(|_| Vec::with_capacity(b * h * t * t));
        let kept_ptr = kept.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
        let fill = |p: *mut f32| {
            let out = SendPtr(p);
            parallel_for(b * h, |bh| {
                let (bi, hi) = (bh / h, bh % h);
                let (q0, k0) = (dims.q_at(bi, hi), dims.k_at(bi, hi));
                let (tp, dp) = (dims.tp(), dims.dp());
                with_scratch(t * d + t * t + dims.weights_work() + t * tp + tp * dp, |scratch| {
                    let (qs, rest) = scratch.split_at_mut(t * d);
                    let (a, rest) = rest.split_at_mut(t * t);
                    let (work, rest) = rest.split_at_mut(dims.weights_work());
                    let (ar, vr) = rest.split_at_mut(t * tp);
                    // SAFETY: this (b, h)'s own block of the kept weights, inside them.
                    let a = match &kept_ptr {
                        Some(k) => unsafe { k.slice(bh * t * t, t * t) },
                        None => a,
                    };
                    // SAFETY: offsets come from dims, which describe qkv and y; each (b, h)
                    // writes only its own D columns of y.
                    unsafe {
                        weights(self.bf16, qkv, dims, q0, k0, scale[hi], qs, a, work);
                        // y_i = sum_j alpha_ij v_j: (T, T) x (T, D), into the merged layout.
                        let v0 = k0 + dims.kv * d;
                        let y = out.get().add(dims.y_at(bi, hi));
                        let keys = |i0: usize, i1: usize| dims.first_key(i0)..i1;
                        if dims.by_tiles(self.bf16) {
                            // Over the keys each tile's queries see.
                            let lhs = Mat { ptr: a.as_ptr(), rs: t, cs: 1 };
                            head_mm::product(t, d, y, dims.c(), lhs, qkv.as_ptr().add(v0), dims.rs(), keys, |_| d);
                        } else if dims.amx_heads(self.bf16) {
                            // Each block of queries over the keys up to its last (alpha is zero
                            // beyond them).
                            let v = PackedB::new(Src::F32 { ptr: qkv.as_ptr().add(v0), rs: dims.rs(), cs: 1 }, t, d);
                            for r0 in (0..t).step_by(AMX_ROWS) {
                                let r1 = (r0 + AMX_ROWS).min(t);
                                gemm_packed_prefix_amx(r1 - r0, d, r1, Src::F32 { ptr: a.as_ptr().add(r0 * t), rs: t, cs: 1 }, &v, y.add(r0 * dims.c()), dims.c());
                            }
                        } else if dims.bf16_tiles(self.bf16) {
                            head_mm::round_rows(a, t, t, t, t, tp, ar);
                            head_mm::round_rows(&qkv[v0..], dims.rs(), t, d, tp, dp, vr);
                            head_mm::product_bf16(t, d, y, dims.c(), Mat { ptr: ar.as_ptr(), rs: tp, cs: 1 }, vr.as_ptr(), dp, keys, |_| d);
                        } else {
                            mm(self.bf16, t, d, t, y, (dims.c(), 1), a.as_ptr(), (t, 1), qkv.as_ptr().add(v0), (dims.rs(), 1));
                        }
                        if self.keep_weights {
                            // The weights just applied, into this (b, h)'s own (T, T) block.
                            out.slice(y_len + bh * t * t, t * t).copy_from_slice(a);
                        }
                    }
                })
            })
        };
        // SAFETY: the (b, h) items write every row of their head's D columns of y (the product
        // writes its whole output), and with the weights each its own (T, T) block in full.
        let y = unsafe { written(len, fill) };
        if let (Some(cell), Some(mut v)) = (&self.kept, kept) {
            // SAFETY: every (b, h) block was written in full by `weights` (the softmax zeroes the
            // keys a query does not see).
            unsafe { v.set_len(b * h * t * t) };
            let _ = cell.set(v);
        }
        let shape = if self.keep_weights { Shape::from(y.len()) } else { Shape::from((b, t, dims.c())) };
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, qkv: &Tensor, scale: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.keep_weights {
            candle_core::bail!("causal_attention_with_weights is forward-only")
        }
        let (b, t, w) = qkv.dims3()?;
        let h = self.heads.n_head;
        let backward = CausalAttentionBackward { heads: self.heads, bf16: self.bf16, kept: self.kept.clone() };
        let grads = qkv.apply_op3_no_bwd(scale, &grad.contiguous()?, &backward)?;
        let d_qkv = grads.narrow(0, 0, b * t * w)?.reshape((b, t, w))?;
        let d_scale = grads.narrow(0, b * t * w, h)?;
        Ok((Some(d_qkv), Some(d_scale)))
    }
}

/// Gradients of [`CausalAttention`]: (qkv, scale, dy) -> [d qkv (B*T*W) | d scale (H)], flat.
struct CausalAttentionBackward {
    heads: Heads,
    bf16: Option<Kernel>,
    /// The forward's weights, when it kept them.
    kept: Option<Arc<OnceLock<Vec<f32>>>>,
}

impl CustomOp3 for CausalAttentionBackward {
    fn name(&self) -> &'static str {
        "causal-attention-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, self.name())?;
        let scale = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let dims = Dims::of(l1.shape(), self.heads)?;
        let Dims { b, t, h, kv, d, .. } = dims;
        let (c, rs, group) = (dims.c(), dims.rs(), dims.group());
        let kept = self.kept.as_ref().and_then(|k| k.get());
        let mut partial = vec![0f32; b * h]; // d scale per (b, h)
        let partial_ptr = SendPtr::new(&mut partial);
        // d qkv, then d scale (zeroed here, summed into below). SAFETY: every row of d qkv is
        // written in full: each query head's D columns by its own loop, each key and value
        // head's by the first query head of its group, whose product writes its whole output.
        let fill = |p: *mut f32| {
            let ptr = SendPtr(p);
            // SAFETY: the h values past d qkv, in the buffer.
            unsafe { ptr.slice(qkv.len(), h).fill(0.0) };
            // One item per (batch row, key/value head): the query heads of its group in turn, so
            // that the key and value gradients they share are summed by one thread.
            parallel_for(b * kv, |bk| {
                let (bi, ki) = (bk / kv, bk % kv);
                let (tp, dp) = (dims.tp(), dims.dp());
                with_scratch(4 * t * d + 2 * t * t + dims.weights_work() + 4 * tp * dp + 2 * tp * tp, |scratch| {
                    let (qs, rest) = scratch.split_at_mut(t * d);
                    let (dq, rest) = rest.split_at_mut(t * d);
                    let (tmp, rest) = rest.split_at_mut(t * d);
                    let (vt, rest) = rest.split_at_mut(t * d);
                    let (a, rest) = rest.split_at_mut(t * t);
                    let (da, rest) = rest.split_at_mut(t * t);
                    let (work, rest) = rest.split_at_mut(dims.weights_work());
                    // The bf16 tiles' rounded operands, zero-padded to even depths.
                    let (qr, rest) = rest.split_at_mut(tp * dp);
                    let (kr, rest) = rest.split_at_mut(tp * dp);
                    let (dyr, rest) = rest.split_at_mut(tp * dp);
                    let (vtr, rest) = rest.split_at_mut(dp * tp);
                    let (ar, dsr) = rest.split_at_mut(tp * tp);
                    let (tiles, bf16_tiles) = (dims.by_tiles(self.bf16), dims.bf16_tiles(self.bf16));
                    // The causal depth of a tile of rows: the keys its queries see, or the queries
                    // that see its keys.
                    let keys = |i0: usize, i1: usize| dims.first_key(i0)..i1;
                    let queries = |j0: usize, j1: usize| j0..dims.query_end(j1 - 1);
                    // What the group's query heads share, made once: the values transposed (the
                    // rhs of dA on the tiles) and, for the bf16 tiles, rounded, with the keys.
                    let k0 = dims.k_at(bi, ki * group);
                    let v0 = k0 + kv * d;
                    // SAFETY: the key and value rows of this (b, kv head) lie in qkv.
                    if tiles || bf16_tiles {
                        unsafe { head_mm::transpose(qkv[v0..].as_ptr(), rs, t, d, vt) };
                    }
                    if bf16_tiles {
                        head_mm::round_rows(vt, t, d, t, dp, tp, vtr);
                        head_mm::round_rows(&qkv[k0..], rs, t, d, tp, dp, kr);
                    }
                    for (hi, &scale_h) in scale.iter().enumerate().skip(ki * group).take(group) {
                        let (q0, y0) = (dims.q_at(bi, hi), dims.y_at(bi, hi));
                        debug_assert_eq!(k0, dims.k_at(bi, hi));
                        let first = hi == ki * group;
                        // SAFETY: as in the forward pass; each (b, kv head) writes only the rows of
                        // its own key, value and query heads of d qkv and their d scale slots.
                        unsafe {
                            let a: &[f32] = match kept {
                                Some(k) => {
                                    scaled_queries(qkv, dims, q0, scale_h, qs);
                                    &k[(bi * h + hi) * t * t..(bi * h + hi + 1) * t * t]
                                }
                                None => {
                                    weights(self.bf16, qkv, dims, q0, k0, scale_h, qs, a, work);
                                    a
                                }
                            };
                            let d_qkv = ptr.get();
                            let dy0 = dy.as_ptr().add(y0);
                            if bf16_tiles {
                                head_mm::round_rows(a, t, t, t, tp, tp, ar);
                                head_mm::round_rows(&dy[y0..], c, t, d, tp, dp, dyr);
                            }
                            // (T, D) = (T, T) x (T, D) over `depth`: on the f32 tiles, on the bf16
                            // tiles from the rounded operands `(lhs, rhs, its row stride)`, else
                            // through mm.
                            let product = |dst: *mut f32, ldd: usize, lhs: Mat, rhs: *const f32, ldr: usize, rounded: (Mat, *const f32, usize), depth: &dyn Fn(usize, usize) -> std::ops::Range<usize>| {
                                if tiles {
                                    head_mm::product(t, d, dst, ldd, lhs, rhs, ldr, depth, |_| d);
                                } else if bf16_tiles {
                                    head_mm::product_bf16(t, d, dst, ldd, rounded.0, rounded.1, rounded.2, depth, |_| d);
                                } else {
                                    mm(self.bf16, t, d, t, dst, (ldd, 1), lhs.ptr, (lhs.rs, lhs.cs), rhs, (ldr, 1));
                                }
                            };
                            let a_t = Mat { ptr: a.as_ptr(), rs: 1, cs: t };
                            let a_t_r = (Mat { ptr: ar.as_ptr(), rs: 1, cs: tp }, dyr.as_ptr(), dp);
                            // dv = A^T dY: (T, T)^T x (T, D), summed over the group.
                            if first {
                                product(d_qkv.add(v0), rs, a_t, dy0, c, a_t_r, &queries);
                            } else {
                                product(tmp.as_mut_ptr(), d, a_t, dy0, c, a_t_r, &queries);
                                add_rows(&ptr, v0, rs, tmp, t, d);
                            }
                            // dA = dY V^T: (T, D) x (D, T); on the tiles, keys up to the tile's
                            // last query only: the softmax backward zeroes the rest.
                            if tiles {
                                head_mm::product(t, t, da.as_mut_ptr(), t, Mat { ptr: dy0, rs: c, cs: 1 }, vt.as_ptr(), t, |_, _| 0..d, |i1| i1);
                            } else if bf16_tiles {
                                head_mm::product_bf16(t, t, da.as_mut_ptr(), t, Mat { ptr: dyr.as_ptr(), rs: dp, cs: 1 }, vtr.as_ptr(), tp, |_, _| 0..d, |i1| i1);
                            } else {
                                mm(self.bf16, t, t, d, da.as_mut_ptr(), (t, 1), dy0, (c, 1), qkv.as_ptr().add(v0), (1, rs));
                            }
                            for i in 0..t {
                                let lo = dims.first_key(i);
                                softmax_backward_row(&a[i * t + lo..(i + 1) * t], &mut da[i * t + lo..(i + 1) * t], i + 1 - lo);
                                da[i * t..i * t + lo].fill(0.0);
                            }
                            if bf16_tiles {
                                head_mm::round_rows(da, t, t, t, tp, tp, dsr);
                                head_mm::round_rows(qs, d, t, d, tp, dp, qr);
                            }
                            let (ds_t, ds_rows) = (Mat { ptr: da.as_ptr(), rs: 1, cs: t }, Mat { ptr: da.as_ptr(), rs: t, cs: 1 });
                            let (dsr_t, dsr_rows) = (Mat { ptr: dsr.as_ptr(), rs: 1, cs: tp }, Mat { ptr: dsr.as_ptr(), rs: tp, cs: 1 });
                            // dq' = dS K: (T, T) x (T, D)
                            product(dq.as_mut_ptr(), d, ds_rows, qkv.as_ptr().add(k0), rs, (dsr_rows, kr.as_ptr(), dp), &keys);
                            // dk = dS^T q': (T, T)^T x (T, D), summed over the group.
                            if first {
                                product(d_qkv.add(k0), rs, ds_t, qs.as_ptr(), d, (dsr_t, qr.as_ptr(), dp), &queries);
                            } else {
                                product(tmp.as_mut_ptr(), d, ds_t, qs.as_ptr(), d, (dsr_t, qr.as_ptr(), dp), &queries);
                                add_rows(&ptr, k0, rs, tmp, t, d);
                            }
                            // dq = scale dq', d scale = sum dq' . q
                            let mut d_scale = 0f64;
                            for i in 0..t {
                                let g = &dq[i * d..(i + 1) * d];
                                let q = &qkv[q0 + i * rs..q0 + i * rs + d];
                                d_scale += simd::dot(g, q) as f64;
                                let dst = ptr.slice(q0 + i * rs, d);
                                for (o, &gv) in dst.iter_mut().zip(g) {
                                    *o = scale_h * gv;
                                }
                            }
                            partial_ptr.slice(bi * h + hi, 1)[0] = d_scale as f32;
                        }
                    }
                })
            });
        };
        let mut out = unsafe { written(qkv.len() + h, fill) };
        // Sum d scale over the batch: (B, H) -> (H,).
        for (i, v) in partial.iter().enumerate() {
            out[qkv.len() + i % h] += v;
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// Add `src` `(T, D)` into the T rows of stride `rs` starting at `at` of `dst`.
///
/// # Safety
/// The rows must be within `dst` and written by no other thread meanwhile.
unsafe fn add_rows(dst: &SendPtr, at: usize, rs: usize, src: &[f32], t: usize, d: usize) {
    for i in 0..t {
        for (o, &v) in dst.slice(at + i * rs, d).iter_mut().zip(&src[i * d..(i + 1) * d]) {
            *o += v;
        }
    }
}

simd::dispatch! {
    /// Softmax backward of one row over its first `n` entries: da_j <- a_j (da_j - a . da),
    /// zero beyond.
    fn softmax_backward_row(a: &[f32], da: &mut [f32], n: usize) {
        let r = simd::dot(&a[..n], &da[..n]);
        for (g, &p) in da[..n].iter_mut().zip(&a[..n]) {
            *g = p * (*g - r);
        }
        da[n..].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// The gradients of `sum(attention(qkv) * g)` through the op as given.
    fn grads(op: CausalAttention, qkv: &Var, scale: &Var, g: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let y = qkv.as_tensor().apply_op2(scale.as_tensor(), op)?;
        let grads = (y * g)?.sum_all()?.backward()?;
        let of = |v: &Var| grads.get(v).expect("a gradient").flatten_all()?.to_vec1::<f32>();
        Ok((of(qkv)?, of(scale)?))
    }

    #[test]
    fn the_backward_gives_the_same_bits_from_kept_weights_as_from_recomputed_ones() -> Result<()> {
        let dev = Device::Cpu;
        // Three batch rows, grouped heads (4 on 2), a local window, a short last tile (T = 37),
        // and heads wide enough for the tiled products where the CPU has them.
        let heads = Heads { n_head: 4, n_kv_head: 2, window: Some(20) };
        let (b, t, d) = (3, 37, 8);
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, (4 + 2 * 2) * d), &dev)?)?;
        let scale = Var::from_tensor(&Tensor::new(&[0.3f32, 0.5, 0.7, 1.1], &dev)?)?;
        let g = Tensor::randn(0f32, 1.0, (b, t, 4 * d), &dev)?;
        let op = |kept| CausalAttention { heads, keep_weights: false, bf16: None, kept };
        let kept = Arc::new(OnceLock::new());
        let (dq_kept, ds_kept) = grads(op(Some(kept.clone())), &qkv, &scale, &g)?;
        assert_eq!(kept.get().map(Vec::len), Some(b * 4 * t * t), "the forward kept every head's weights");
        let (dq, ds) = grads(op(None), &qkv, &scale, &g)?;
        for (i, (x, y)) in dq_kept.iter().zip(&dq).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "d qkv[{i}]: {x} from kept weights, {y} recomputed");
        }
        for (i, (x, y)) in ds_kept.iter().zip(&ds).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "d scale[{i}]: {x} from kept weights, {y} recomputed");
        }
        Ok(())
    }

    #[test]
    fn amx_heads_give_the_reproducible_products_values() -> Result<()> {
        // From AMX_MIN_T positions, the AMX kernel runs the forward's q.k and alpha.v on its
        // tiles by blocks of queries, each over the keys up to its last; the reproducible kernel
        // runs them on the emulated tiles. Both round the same operands, so outputs and
        // gradients (whose backward recomputes the weights through the same path) agree to
        // f32 round-off. Grouped heads, a local window, and T not a multiple of the blocks.
        if !Kernel::Amx.available() {
            println!("note: this CPU (or OS) has no AMX-BF16 tiles: the AMX heads are not tested here");
            return Ok(());
        }
        let dev = Device::Cpu;
        let heads = Heads { n_head: 4, n_kv_head: 2, window: Some(100) };
        let (b, t, d) = (2, AMX_MIN_T + 35, 16);
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, (4 + 2 * 2) * d), &dev)?)?;
        let scale = Var::from_tensor(&Tensor::new(&[0.3f32, 0.5, 0.7, 1.1], &dev)?)?;
        let g = Tensor::randn(0f32, 1.0, (b, t, 4 * d), &dev)?;
        let run = |kernel| -> Result<(Vec<f32>, Vec<f32>)> {
            let op = CausalAttention { heads, keep_weights: false, bf16: Some(kernel), kept: None };
            let y = qkv.as_tensor().apply_op2_no_bwd(scale.as_tensor(), &op)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((y, grads(CausalAttention { heads, keep_weights: false, bf16: Some(kernel), kept: None }, &qkv, &scale, &g)?.0))
        };
        let f32s = {
            let op = |kept| CausalAttention { heads, keep_weights: false, bf16: None, kept };
            let y = qkv.as_tensor().apply_op2_no_bwd(scale.as_tensor(), &op(None))?.flatten_all()?.to_vec1::<f32>()?;
            (y, grads(op(None), &qkv, &scale, &g)?.0)
        };
        let ((ya, ga), (yr, gr)) = (run(Kernel::Amx)?, run(Kernel::best())?);
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        for (what, a, r, f) in [("y", &ya, &yr, &f32s.0), ("d qkv", &ga, &gr, &f32s.1)] {
            // Both are bf16's distance from f32; the flips of a rounded weight that a different
            // last bit of a score causes keep AMX within a fraction of that from the other.
            let (amx, repro, between) = (dist(a, f), dist(r, f), dist(a, r));
            println!("{what}: from f32, AMX {amx:.2e}, reproducible {repro:.2e}; between them {between:.2e}");
            assert!(amx <= 1.5 * repro && between <= 0.5 * repro, "{what}: AMX heads {amx:.2e} from f32 (the reproducible kernel {repro:.2e}), {between:.2e} from the reproducible kernel");
        }
        Ok(())
    }
}
