//! Fused label-smoothed cross-entropy straight from the logits. Per row n with logits z, target
//! t and ln Z = logsumexp(z), it returns two columns:
//!
//!   loss_n = (1 - eps) (ln Z - z_t) + eps (ln Z - mean_v z_v)     (the smoothed loss)
//!   nll_n  = ln Z - z_t                                           (the energy -ln p_t)
//!
//! and the gradient with respect to z for upstream gradients (g0, g1) of the two columns:
//!
//!   dz_v = (g0 + g1) p_v - g0 eps / V - [v = t] (g0 (1 - eps) + g1),   p_v = e^(z_v - ln Z)

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, simd, written, SendPtr};

/// Per-row `(N, 2)`: smoothed loss and -ln p(target), for `logits` `(N, V)` and u32 `targets`
/// `(N,)`.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor, eps: f64) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.dims1()? != n {
        candle_core::bail!("cross_entropy: {} targets for {n} rows", targets.dims1()?)
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy { eps: eps as f32 })
}

const ROWS_PER_ITEM: usize = 64;

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout, vocab: usize) -> Result<&'a [u32]> {
    let data = match s {
        CpuStorage::U32(v) => v.as_slice(),
        _ => candle_core::bail!("cross_entropy: targets must be u32, got {:?}", s.dtype()),
    };
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("cross_entropy: targets must be contiguous") };
    let t = &data[start..end];
    if let Some(bad) = t.iter().find(|&&v| v as usize >= vocab) {
        candle_core::bail!("cross_entropy: target {bad} is outside the vocabulary of {vocab}")
    }
    Ok(t)
}

struct CrossEntropy {
    eps: f32,
}

simd::dispatch! {
    /// (ln Z, mean z) of one row of logits.
    fn row_stats(z: &[f32]) -> (f32, f32) {
        let m = simd::max(z);
        (m + simd::sum_exp_shifted(z, m).ln(), simd::sum(z) / z.len() as f32)
    }
}

simd::dispatch! {
    fn backward_row(z: &[f32], dz: &mut [f32], ln_z: f32, uniform: f32, onehot: f32, target: usize, g: f32) {
        for (o, &v) in dz.iter_mut().zip(z) {
            *o = g * simd::exp(v - ln_z) - uniform;
        }
        dz[target] -= onehot;
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = f32_slice(s1, l1, self.name())?;
        let (n, v) = l1.shape().dims2()?;
        let targets = targets_of(s2, l2, v)?;
        let mut out = vec![0f32; 2 * n];
        let ptr = SendPtr::new(&mut out);
        let eps = self.eps;
        parallel_for(n.div_ceil(ROWS_PER_ITEM), |item| {
            for r in item * ROWS_PER_ITEM..n.min((item + 1) * ROWS_PER_ITEM) {
                let row = &z[r * v..(r + 1) * v];
                let (ln_z, mean) = row_stats(row);
                let nll = ln_z - row[targets[r] as usize];
                // SAFETY: each row is written by one item only.
                let o = unsafe { ptr.slice(2 * r, 2) };
                o[0] = (1.0 - eps) * nll + eps * (ln_z - mean);
                o[1] = nll;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = logits.apply_op3_no_bwd(&targets.contiguous()?, &grad.contiguous()?, &CrossEntropyBackward { eps: self.eps })?;
        Ok((Some(d), None))
    }
}

/// (logits, targets, upstream gradient `(N, 2)`) -> d logits.
struct CrossEntropyBackward {
    eps: f32,
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = f32_slice(s1, l1, self.name())?;
        let (n, v) = l1.shape().dims2()?;
        let targets = targets_of(s2, l2, v)?;
        let grad = f32_slice(s3, l3, self.name())?;
        let eps = self.eps;
        let fill = |p: *mut f32| {
            let ptr = SendPtr(p);
            parallel_for(n.div_ceil(ROWS_PER_ITEM), |item| {
                for r in item * ROWS_PER_ITEM..n.min((item + 1) * ROWS_PER_ITEM) {
                    let row = &z[r * v..(r + 1) * v];
                    let (ln_z, _) = row_stats(row);
                    let (g0, g1) = (grad[2 * r], grad[2 * r + 1]);
                    // SAFETY: each row is written by one item only.
                    let dz = unsafe { ptr.slice(r * v, v) };
                    backward_row(row, dz, ln_z, g0 * eps / v as f32, g0 * (1.0 - eps) + g1, targets[r] as usize, g0 + g1);
                }
            });
        };
        // SAFETY: the items cover every row, which backward_row writes in full.
        let out = unsafe { written(n * v, fill) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
