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

mod backward;
mod head;

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use backward::CausalAttentionBackward;
use head::{mm, weights, with_scratch, Dims, AMX_ROWS};
use super::bf16::gemm::{gemm_packed_prefix_amx, PackedB, Src};
use super::bf16::Kernel;
use super::head_mm::{self, Mat};
use super::{f32_slice, parallel_for, written, SendPtr};

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
                            head_mm::product_bf16(t, d, y, dims.c(), Mat { ptr: ar.as_ptr(), rs: tp, cs: 1 }, vr.as_ptr(), dp, keys, |_| d, dims.bf16_hardware(self.bf16));
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::head::AMX_MIN_T;
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
