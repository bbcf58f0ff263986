//! Forward-only `x W^T` for a handful of rows (KV-cached generation feeds one token at a time):
//! a matrix-vector product spread over the output features on every core, four weight rows per
//! pass over x. General matmul kernels pack their operands first, which costs more than the
//! product itself at one row, and run it on one thread.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, simd, SendPtr};

/// At most this many rows take the matrix-vector path.
pub const MAX_ROWS: usize = 4;

/// `x` `(N, K)` times `w` `(M, K)` transposed -> `(N, M)`, N <= [`MAX_ROWS`]. Forward-only.
pub fn matvec(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let (_, kw) = w.dims2()?;
    if n > MAX_ROWS || k != kw {
        candle_core::bail!("matvec: x {:?} and w {:?} do not fit (at most {MAX_ROWS} rows)", x.shape(), w.shape())
    }
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &MatVec)
}

/// Output features per parallel work item.
const FEATURES_PER_ITEM: usize = 64;

simd::dispatch! {
    /// `y[o] = x . w[o]` for the rows of `w` (each `x.len()` long) and the entries of `y`.
    fn rows_dot(x: &[f32], w: &[f32], y: &mut [f32]) {
        let k = x.len();
        let mut rows = w.chunks_exact(k);
        let mut out = y.chunks_exact_mut(4);
        for o in &mut out {
            let (w0, w1, w2, w3) = (rows.next().unwrap(), rows.next().unwrap(), rows.next().unwrap(), rows.next().unwrap());
            let mut acc = [[0f32; simd::LANES]; 4];
            let xs = x.chunks_exact(simd::LANES);
            let tail = xs.remainder().len();
            for (((xc, a), b), (c, d)) in xs
                .zip(w0.chunks_exact(simd::LANES))
                .zip(w1.chunks_exact(simd::LANES))
                .zip(w2.chunks_exact(simd::LANES).zip(w3.chunks_exact(simd::LANES)))
            {
                for l in 0..simd::LANES {
                    acc[0][l] += xc[l] * a[l];
                    acc[1][l] += xc[l] * b[l];
                    acc[2][l] += xc[l] * c[l];
                    acc[3][l] += xc[l] * d[l];
                }
            }
            for (j, (wr, a)) in [w0, w1, w2, w3].iter().zip(&acc).enumerate() {
                let rest: f32 = x[k - tail..].iter().zip(&wr[k - tail..]).map(|(p, q)| p * q).sum();
                o[j] = a.iter().sum::<f32>() + rest;
            }
        }
        for (o, wr) in out.into_remainder().iter_mut().zip(rows) {
            *o = simd::dot(x, wr);
        }
    }
}

struct MatVec;

impl CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "matvec"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let (n, k) = l1.shape().dims2()?;
        let (m, _) = l2.shape().dims2()?;
        let mut y = vec![0f32; n * m];
        let out = SendPtr::new(&mut y);
        let items = m.div_ceil(FEATURES_PER_ITEM);
        parallel_for(n * items, |i| {
            let (row, item) = (i / items, i % items);
            let feats = item * FEATURES_PER_ITEM..m.min((item + 1) * FEATURES_PER_ITEM);
            // SAFETY: each (row, item) writes its own features of its own row.
            let dst = unsafe { out.slice(row * m + feats.start, feats.len()) };
            rows_dot(&x[row * k..(row + 1) * k], &w[feats.start * k..feats.end * k], dst);
        });
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }
}
