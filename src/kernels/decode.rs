//! Attention of new queries over a key/value cache, forward-only: what each step of KV-cached
//! generation runs once per layer. Every query sees every cached key (no mask: one new token
//! follows all the cached ones), so per batch row b and query head h, with q' = scale_h q and
//! the key/value head kv = h / (H / K) it reads,
//!
//!   alpha_j = exp(q' . k_j) / Z,   y = sum_j alpha_j v_j
//!
//! which is [`crate::model`]'s composed attention without its mask. The composition costs four
//! candle ops and two general matmuls per layer and token (each packs its operands and hands the
//! work to another pool) for a few microseconds of arithmetic; here one op runs every head on
//! candle's pool, reading the cache's keys and values where they lie (a view of a longer buffer).
//! The dot products, the softmax and the weighted sum keep a fixed order (lane-split sums, no
//! fused multiply-adds), so every CPU gives the same bits.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{matvec, parallel_for, simd, SendPtr};

/// `q` `(B, H, Tq, D)` over cached `k`, `v` `(B, K, Tk, D)` (any layout; a cache's view is read in place) with
/// per-head factors `scale` `(H,)` -> `(B, H, Tq, D)`; every query sees every key.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (b, h, _, d) = q.dims4()?;
    let (bk, kv, tk, dk) = k.dims4()?;
    let fits = b == bk && d == dk && v.dims4()? == (b, kv, tk, d) && kv > 0 && h % kv == 0 && tk > 0 && scale.dims1()? == h;
    if !fits {
        candle_core::bail!("cached_attention: q {:?}, k {:?}, v {:?} and scale {:?} do not fit", q.shape(), k.shape(), v.shape(), scale.shape())
    }
    let scale = scale.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    // The op reads each head's positions as one block of rows; a cache's view along T is one
    // already, anything else is copied into that layout first.
    let rows = |t: &Tensor| if t.stride()[2..] == [d, 1] { Ok(t.clone()) } else { t.contiguous() };
    q.contiguous()?.apply_op3_no_bwd(&rows(k)?, &rows(v)?, &CachedAttention { scale })
}

struct CachedAttention {
    scale: Vec<f32>,
}

/// The f32 buffer of keys or values `(B, K, T, D)` whose rows along T are consecutive, its start
/// offset, and its strides over B and K.
fn head_blocks<'a>(s: &'a CpuStorage, l: &Layout, d: usize) -> Result<(&'a [f32], usize, [usize; 2])> {
    let st = l.stride();
    if st.len() != 4 || st[2] != d || st[3] != 1 {
        candle_core::bail!("cached_attention: expects rows of {d} consecutive values along T, got strides {st:?}");
    }
    Ok((super::f32_data(s, "cached_attention")?, l.start_offset(), [st[0], st[1]]))
}

simd::dispatch! {
    /// `y = sum_j a[j] v_j` over the rows `v_j` of `v` (each `y.len()` long), j in order, each term
    /// a multiply then an add (the same bits on every CPU).
    fn weighted_rows(y: &mut [f32], a: &[f32], v: &[f32]) {
        for (&w, row) in a.iter().zip(v.chunks_exact(y.len())) {
            for (y, &x) in y.iter_mut().zip(row) {
                *y += w * x;
            }
        }
    }
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let q = super::f32_slice(s1, l1, self.name())?;
        let (b, h, tq, d) = l1.shape().dims4()?;
        let (k, k0, ks) = head_blocks(s2, l2, d)?;
        let (v, v0, vs) = head_blocks(s3, l3, d)?;
        let (_, kv, tk, _) = l2.shape().dims4()?;
        let group = h / kv;
        let mut y = vec![0f32; b * h * tq * d];
        let out = SendPtr::new(&mut y);
        parallel_for(b * h, |bh| {
            let (bi, hi) = (bh / h, bh % h);
            let (kb, vb) = (k0 + bi * ks[0] + (hi / group) * ks[1], v0 + bi * vs[0] + (hi / group) * vs[1]);
            let mut qs = vec![0f32; d];
            let mut a = vec![0f32; tk];
            for i in 0..tq {
                let row = (bh * tq + i) * d;
                for (dst, &x) in qs.iter_mut().zip(&q[row..row + d]) {
                    *dst = self.scale[hi] * x;
                }
                // beta_h s_j = q' . k_j: the head's keys are one block of rows, which the
                // four-rows-at-a-time product reads in one pass.
                matvec::rows_dot(&qs, &k[kb..kb + tk * d], &mut a);
                simd::softmax_row(&mut a, tk);
                // SAFETY: each (b, h) writes only its own rows of y.
                let dst = unsafe { out.slice(row, d) };
                weighted_rows(dst, &a, &v[vb..vb + tk * d]);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}
