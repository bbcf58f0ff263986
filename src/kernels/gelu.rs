//! Fused exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, and its derivative
//! Phi(x) + x phi(x), with a vectorisable erf; and GPT-2's tanh approximation
//! 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), with its derivative.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::{f32_slice, parallel_for, simd, written, SendPtr};

/// GELU of every element of `x`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu { tanh: false })
}

/// GPT-2's tanh-approximated GELU (`gelu_new`) of every element of `x`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu { tanh: true })
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// sigmoid(2u) of the tanh approximation at x, and du/dx.
#[inline(always)]
fn tanh_parts(x: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    let s = 1.0 / (1.0 + simd::exp(-2.0 * u)); // exp overflows to inf for very negative u: s = 0
    (s, SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x))
}

simd::dispatch! {
    fn forward_tanh_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * tanh_parts(v).0;
        }
    }
}

simd::dispatch! {
    fn backward_tanh_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let (s, du) = tanh_parts(v);
            *o = g * (s + v * 2.0 * s * (1.0 - s) * du);
        }
    }
}

/// Elements per parallel work item.
const CHUNK: usize = 16 * 1024;

/// Phi(x), the standard normal CDF, to 3e-7 absolute (float round-off): Abramowitz & Stegun 7.1.26 for
/// erfc(|x| / sqrt 2), reflected for x > 0.
#[inline(always)]
fn phi_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let half_erfc = 0.5 * poly * simd::exp(-z * z); // (1 - erf(z)) / 2 = Phi(-|x|)
    if x < 0.0 {
        half_erfc
    } else {
        1.0 - half_erfc
    }
}

/// phi(x), the standard normal density.
#[inline(always)]
fn phi_pdf(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    INV_SQRT_2PI * simd::exp(-0.5 * x * x)
}

simd::dispatch! {
    fn forward_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v * phi_cdf(v);
        }
    }
}

simd::dispatch! {
    fn backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            *o = g * (phi_cdf(v) + v * phi_pdf(v));
        }
    }
}

/// The `n` outputs of `f(input range, output chunk)`, which writes every value of its chunk,
/// over chunks in parallel.
fn map_chunks(n: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
    let fill = |p: *mut f32| {
        let ptr = SendPtr(p);
        parallel_for(n.div_ceil(CHUNK), |i| {
            let r = i * CHUNK..n.min((i + 1) * CHUNK);
            // SAFETY: chunks are disjoint.
            let dst = unsafe { ptr.slice(r.start, r.len()) };
            f(r, dst);
        });
    };
    // SAFETY: the chunks cover 0..n and `f` writes each in full (the elementwise loops above).
    unsafe { written(n, fill) }
}

/// The GELU (exact, or with `tanh` GPT-2's approximation) of every value of `x`, in parallel.
pub(crate) fn forward_all(x: &[f32], tanh: bool) -> Vec<f32> {
    map_chunks(x.len(), |r, dst| forward_slice(&x[r], dst, tanh))
}

/// `y = GELU(x)` on the calling thread.
pub(crate) fn forward_slice(x: &[f32], y: &mut [f32], tanh: bool) {
    if tanh {
        forward_tanh_chunk(x, y)
    } else {
        forward_chunk(x, y)
    }
}

/// dx = dy GELU'(x), elementwise, on the calling thread.
pub(crate) fn backward_slice(x: &[f32], dy: &[f32], dx: &mut [f32], tanh: bool) {
    if tanh {
        backward_tanh_chunk(x, dy, dx)
    } else {
        backward_chunk(x, dy, dx)
    }
}

/// dx = dy GELU'(x), elementwise, in parallel.
pub(crate) fn backward_all(x: &[f32], dy: &[f32], tanh: bool) -> Vec<f32> {
    if tanh {
        map_chunks(x.len(), |r, dst| backward_tanh_chunk(&x[r.clone()], &dy[r], dst))
    } else {
        map_chunks(x.len(), |r, dst| backward_chunk(&x[r.clone()], &dy[r], dst))
    }
}

/// The exact GELU, or with `tanh` GPT-2's approximation.
struct Gelu {
    tanh: bool,
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        if self.tanh {
            "gelu-tanh"
        } else {
            "gelu"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        Ok((CpuStorage::F32(forward_all(x, self.tanh)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward { tanh: self.tanh })?))
    }
}

/// (x, dy) -> dx.
struct GeluBackward {
    tanh: bool,
}

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        Ok((CpuStorage::F32(backward_all(x, dy, self.tanh)), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_matches_erf_to_3e7() {
        // Phi(x) = erfc(-x / sqrt 2) / 2, against a series for erf in f64.
        fn erf(x: f64) -> f64 {
            // Maclaurin series, converges fast for |x| <= 3.
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-18 || n < 5.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut x = -4.0f64;
        while x <= 4.0 {
            let want = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
            let got = phi_cdf(x as f32) as f64;
            assert!((got - want).abs() < 3e-7, "Phi({x}) = {got}, want {want}");
            x += 0.01;
        }
    }
}
