//! The backward of the fused attention: the gradients of q, k, v and the per-head scale from the
//! Boltzmann weights, recomputed from q and k or read from what the forward kept.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};

use super::head::{mm, scaled_queries, weights, with_scratch, Dims};
use super::Heads;
use crate::kernels::bf16::Kernel;
use crate::kernels::head_mm::{self, Mat};
use crate::kernels::{f32_slice, parallel_for, simd, written, SendPtr};

/// Gradients of [`CausalAttention`]: (qkv, scale, dy) -> [d qkv (B*T*W) | d scale (H)], flat.
pub(super) struct CausalAttentionBackward {
    pub(super) heads: Heads,
    pub(super) bf16: Option<Kernel>,
    /// The forward's weights, when it kept them.
    pub(super) kept: Option<Arc<OnceLock<Vec<f32>>>>,
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
                    let (tiles, bf16_tiles, hardware) = (dims.by_tiles(self.bf16), dims.bf16_tiles(self.bf16), dims.bf16_hardware(self.bf16));
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
                                    head_mm::product_bf16(t, d, dst, ldd, rounded.0, rounded.1, rounded.2, depth, |_| d, hardware);
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
                                head_mm::product_bf16(t, t, da.as_mut_ptr(), t, Mat { ptr: dyr.as_ptr(), rs: dp, cs: 1 }, vtr.as_ptr(), tp, |_, _| 0..d, |i1| i1, hardware);
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
