//! AdamW in one pass per parameter: the moments and the weights are updated in place, element by
//! element, instead of through a dozen whole-tensor operations (and their temporaries) each.
//! Also the squared norm of a gradient, read straight from its storage.
//!
//! Per element, with g scaled by the clipping factor (PyTorch's `torch.optim.AdamW`):
//!
//!   m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
//!   p <- p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use super::{cpu_f32, f32_slice, parallel_for, simd, SendPtr};

/// The scalars of one update.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1 - lr * weight_decay for decayed parameters, 1 otherwise.
    pub decay: f32,
    /// lr / (1 - beta1^t).
    pub step_size: f32,
    /// 1 / sqrt(1 - beta2^t).
    pub inv_sqrt_bc2: f32,
    /// The clipping factor every gradient is multiplied by first.
    pub grad_scale: f32,
}

/// Elements per parallel work item.
const CHUNK: usize = 16 * 1024;

/// Apply one update to `param` (in place) and its moments `m`, `v`, given its gradient `grad`.
pub fn update(param: &Tensor, grad: &Tensor, m: &mut [f32], v: &mut [f32], u: Update) -> Result<()> {
    let n = param.elem_count();
    if grad.elem_count() != n || m.len() != n || v.len() != n {
        candle_core::bail!("adamw: parameter {:?}, gradient {:?} and moments of {} do not match", param.shape(), grad.shape(), m.len())
    }
    param.inplace_op2(&grad.contiguous()?, &AdamW { u, m: SendPtr::new(m), v: SendPtr::new(v), n })
}

simd::dispatch! {
    fn update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], u: Update) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i] * u.grad_scale;
            let mi = m[i] * u.beta1 + gi * (1.0 - u.beta1);
            let vi = v[i] * u.beta2 + gi * gi * (1.0 - u.beta2);
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() * u.inv_sqrt_bc2 + u.eps;
            p[i] = p[i] * u.decay - mi / denom * u.step_size;
        }
    }
}

struct AdamW {
    u: Update,
    m: SendPtr,
    v: SendPtr,
    n: usize,
}

impl InplaceOp2 for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let g = f32_slice(gs, gl, self.name())?;
        let Some((start, end)) = dst_l.contiguous_offsets() else { candle_core::bail!("adamw: parameter must be contiguous") };
        let CpuStorage::F32(p) = dst else { candle_core::bail!("adamw: parameter must be f32") };
        let p = SendPtr::new(&mut p[start..end]);
        let n = self.n;
        parallel_for(n.div_ceil(CHUNK), |i| {
            let r = i * CHUNK..n.min((i + 1) * CHUNK);
            // SAFETY: chunks are disjoint; m and v hold n elements (checked in `update`).
            let (pc, mc, vc) = unsafe { (p.slice(r.start, r.len()), self.m.slice(r.start, r.len()), self.v.slice(r.start, r.len())) };
            update_chunk(pc, &g[r], mc, vc, self.u);
        });
        Ok(())
    }
}

simd::dispatch! {
    fn sum_sq(x: &[f32]) -> f64 {
        simd::dot(x, x) as f64
    }
}

/// Sum of squares of a contiguous f32 CPU tensor's elements, in f64 across chunks; None for any
/// other tensor.
pub fn sum_of_squares(t: &Tensor) -> Option<f64> {
    if !t.is_contiguous() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let x = cpu_f32(&storage, layout, "sum_of_squares").ok()?;
    Some(x.chunks(CHUNK).map(sum_sq).sum())
}
