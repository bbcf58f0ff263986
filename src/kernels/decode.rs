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
//! candle's pool, reading the cache's keys and values where they lie, strided along positions.
//! The dot products, the softmax and the weighted sum keep a fixed order (lane-split sums, no
//! fused multiply-adds), so every CPU gives the same bits.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{matvec, parallel_for, simd, SendPtr};

/// `q` `(B, H, Tq, D)` over cached `k`, `v` `(B, K, Tk, D)` (any strides, unit along D) with
/// per-head factors `scale` `(H,)` -> `(B, H, Tq, D)`; every query sees every key.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (b, h, _, d) = q.dims4()?;
    let (bk, kv, tk, dk) = k.dims4()?;
    let fits = b == bk && d == dk && v.dims4()? == (b, kv, tk, d) && kv > 0 && h % kv == 0 && tk > 0 && scale.dims1()? == h;
    if !fits {
        candle_core::bail!("cached_attention: q {:?}, k {:?}, v {:?} and scale {:?} do not fit", q.shape(), k.shape(), v.shape(), scale.shape())
    }
    let scale = scale.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    q.contiguous()?.apply_op3_no_bwd(k, v, &CachedAttention { scale })
}

struct CachedAttention {
    scale: Vec<f32>,
}

/// The f32 buffer and start offset of a strided CPU tensor whose last dimension has unit stride,
/// with its strides over the first three dimensions.
fn strided<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize, [usize; 3])> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("cached_attention: expects f32 keys and values"),
    };
    let st = l.stride();
    if st.len() != 4 || st[3] != 1 {
        candle_core::bail!("cached_attention: expects unit stride along D, got strides {st:?}");
    }
    Ok((data, l.start_offset(), [st[0], st[1], st[2]]))
}

simd::dispatch! {
    /// `y = sum_j a[j] v[j * stride..][..y.len()]`, j in order, each term a multiply then an add
    /// (the same bits on every CPU).
    fn weighted_rows(y: &mut [f32], a: &[f32], v: &[f32], stride: usize) {
        let d = y.len();
        for (j, &w) in a.iter().enumerate() {
            for (y, &x) in y.iter_mut().zip(&v[j * stride..j * stride + d]) {
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
        let (k, k0, ks) = strided(s2, l2)?;
        let (v, v0, vs) = strided(s3, l3)?;
        let (b, h, tq, d) = l1.shape().dims4()?;
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
                // beta_h s_j = q' . k_j: the head's keys are one block of rows when they are
                // consecutive in the cache, which the four-rows-at-a-time product reads in one pass.
                if ks[2] == d {
                    matvec::rows_dot(&qs, &k[kb..kb + tk * d], &mut a);
                } else {
                    for (j, s) in a.iter_mut().enumerate() {
                        *s = simd::dot(&qs, &k[kb + j * ks[2]..kb + j * ks[2] + d]);
                    }
                }
                simd::softmax_row(&mut a, tk);
                // SAFETY: each (b, h) writes only its own rows of y.
                let dst = unsafe { out.slice(row, d) };
                weighted_rows(dst, &a, &v[vb..vb + (tk - 1) * vs[2] + d], vs[2]);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}
