//! Vectorisable building blocks for the fused kernels: a polynomial exp and lane-split
//! reductions that the compiler turns into SIMD code, plus [`dispatch!`], which compiles a row
//! kernel for AVX-512 and AVX2 as well as the baseline and picks one at run time.

use std::sync::OnceLock;

/// The widest instruction set this CPU offers that the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// AVX-512F with AVX2 and FMA (x86-64-v4).
    V4,
    /// AVX2 with FMA (x86-64-v3).
    V3,
    /// The build's baseline.
    Base,
}

pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if v3 && is_x86_feature_detected!("avx512f") {
                return Level::V4;
            }
            if v3 {
                return Level::V3;
            }
        }
        Level::Base
    })
}

/// Define `pub(crate) fn NAME(args) -> R { body }` compiled three times (AVX-512, AVX2+FMA and
/// the baseline) and dispatched on [`level`]. Helpers the body calls must be `#[inline(always)]`
/// so they are compiled with the same features.
macro_rules! dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                match $crate::kernels::simd::level() {
                    // SAFETY: level() saw the features these versions are compiled for.
                    $crate::kernels::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::kernels::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::kernels::simd::Level::Base => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// Independent accumulators per reduction: enough lanes for one AVX-512 register.
pub(crate) const LANES: usize = 16;

/// e^x in f32 to about 1 ulp for x in [-87, 88] (clamped outside: e^-87 is 1.6e-38), without a
/// table or a libm call, so that loops over it vectorise. Cody-Waite range reduction
/// x = n ln 2 + r, |r| <= ln 2 / 2, and Cephes' degree-6 polynomial for e^r.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND; // round(x / ln 2)
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32; // the same n, as an integer
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // the fit gives 0.500_000_01, which is 0.5 in f32
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// Largest element (-inf for an empty slice).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            if c[l] > acc[l] {
                acc[l] = c[l];
            }
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        if v > m {
            m = v;
        }
    }
    m
}

/// Sum of the elements.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product of two equally long slices.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// `x[i] = e^(x[i] - shift)` in place; returns the sum of the new values.
#[inline(always)]
pub(crate) fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp(c[l] - shift);
            c[l] = e;
            acc[l] += e;
        }
    }
    // The last len % LANES values through one more vector pass (a short causal attention row is
    // mostly its tail), then summed one by one as before: the same bits, since exp is the same
    // IEEE operations in either form.
    let rest = chunks.into_remainder();
    let tail = exp_tail(rest, shift);
    let mut s = 0f32;
    for (v, &e) in rest.iter_mut().zip(&tail) {
        *v = e;
        s += e;
    }
    acc.iter().sum::<f32>() + s
}

/// e^(x[i] - shift) for up to LANES values, computed on all LANES lanes (the unused ones on
/// padding) so that the loop vectorises.
#[inline(always)]
fn exp_tail(x: &[f32], shift: f32) -> [f32; LANES] {
    let mut pad = [shift; LANES];
    pad[..x.len()].copy_from_slice(x);
    for v in pad.iter_mut() {
        *v = exp(*v - shift);
    }
    pad
}

/// Sum of e^(x[i] - shift), leaving x alone.
#[inline(always)]
pub(crate) fn sum_exp_shifted(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += exp(c[l] - shift);
        }
    }
    acc.iter().sum::<f32>() + exp_tail(rest, shift)[..rest.len()].iter().sum::<f32>()
}

dispatch! {
    /// Softmax of `row[..n]` in place, zeros in `row[n..]`: one causal attention row.
    fn softmax_row(row: &mut [f32], n: usize) {
        let (live, dead) = row.split_at_mut(n);
        let m = max(live);
        let inv = 1.0 / exp_shifted_sum(live, m);
        for v in live.iter_mut() {
            *v *= inv;
        }
        dead.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn softmax_row_matches_the_definition() {
        let mut row: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.37 - 3.0).collect();
        let x = row.clone();
        softmax_row(&mut row, 30);
        let m = x[..30].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = x[..30].iter().map(|&v| ((v - m) as f64).exp()).sum();
        for j in 0..30 {
            let want = ((x[j] - m) as f64).exp() / z;
            assert!((row[j] as f64 - want).abs() < 1e-6 * want.max(1e-3), "{j}: {} vs {want}", row[j]);
        }
        assert!(row[30..].iter().all(|&v| v == 0.0));
        assert!((sum(&row) - 1.0).abs() < 1e-6);
        let plain: f32 = x[..20].iter().sum();
        assert!((dot(&[1.0; 20], &x[..20]) - plain).abs() < 1e-5 * plain.abs().max(1.0));
        assert_eq!(max(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
    }
}
