//! The bf16 microkernels: one step of `vdpbf16ps` per pair of k, in hardware or emulated.
//!
//! Written here because no well-kept crate has a bf16 product with f32 outputs whose bits are
//! the same on every CPU (gemm 0.19 has f16 only, candle widens bf16 to f32); the layout follows
//! the usual packed-panel design (as in gemmkit's and llama.cpp's kernels), the code is ours.
//!
//! Every kernel computes, for each output element and each pair p of k in order,
//!
//! ```text
//!   acc = ftz(fma(daz(a[2p]), daz(b[2p]), ftz(fma(daz(a[2p+1]), daz(b[2p+1]), daz(acc)))))
//! ```
//!
//! which is `vdpbf16ps` as the Intel SDM defines it: two f32 FMAs rounded to nearest-even, the odd
//! element of the pair first; denormal inputs read as zero, denormal results flushed to zero (of
//! their sign), MXCSR ignored. [`dp_pair`] is that formula written out; the AVX2 and AVX-512
//! emulations get the same bits from ordinary FMAs with MXCSR's FTZ and DAZ set while they run.
//!
//! Packed operands hold bf16 pairs as u32 (element 2p in the low half, 2p+1 in the high half):
//! A in strips of [`MR`] rows, `a[p * MR + r]`; B in strips of [`NR`] columns, `b[p * NR + j]`.

use super::round::to_f32;

/// Rows of a packed A strip.
pub const MR: usize = 8;
/// Columns of a packed B strip.
pub const NR: usize = 16;

/// `x` with a zero exponent field (zero or subnormal) replaced by the zero of its sign.
#[inline(always)]
pub fn flush(x: f32) -> f32 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0 {
        f32::from_bits(u & 0x8000_0000)
    } else {
        x
    }
}

/// One lane of `vdpbf16ps`: `acc` plus the products of the bf16 pairs `a` and `b`.
#[inline(always)]
pub fn dp_pair(acc: f32, a: u32, b: u32) -> f32 {
    let (a_even, a_odd) = (flush(to_f32(a as u16)), flush(to_f32((a >> 16) as u16)));
    let (b_even, b_odd) = (flush(to_f32(b as u16)), flush(to_f32((b >> 16) as u16)));
    let t = flush(a_odd.mul_add(b_odd, flush(acc)));
    flush(a_even.mul_add(b_even, t))
}

/// A tile of `rows` x `cols` outputs (rows <= MR, cols <= NR) at `c` (row stride `ldc`) from `kp`
/// pairs of the packed strips `a` and `b`; starts from the values in `c` when `load`, else from
/// +0. The formula itself, one element at a time.
///
/// # Safety
/// `a` must hold `kp * MR` pairs, `b` `kp * NR`, and `c` the tile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_scalar(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, rows: usize, cols: usize, load: bool) {
    for r in 0..rows {
        for j in 0..cols {
            let out = c.add(r * ldc + j);
            let mut acc = if load { *out } else { 0.0 };
            for p in 0..kp {
                acc = dp_pair(acc, *a.add(p * MR + r), *b.add(p * NR + j));
            }
            *out = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    //! The emulations in AVX2 and AVX-512F, and the AVX512-BF16 hardware kernel.
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// MXCSR with flush-to-zero and denormals-are-zero set and round-to-nearest, for as long as
    /// the guard lives; the caller's MXCSR comes back on drop.
    pub struct FtzDaz(u32);

    impl FtzDaz {
        #[allow(deprecated)] // _mm_setcsr: deprecated in favour of inline asm, which does the same.
        pub fn set() -> Self {
            // SAFETY: reading and writing MXCSR changes only this thread's float environment.
            unsafe {
                let old = _mm_getcsr();
                _mm_setcsr((old & !0x6000) | 0x8040);
                FtzDaz(old)
            }
        }
    }

    impl Drop for FtzDaz {
        #[allow(deprecated)]
        fn drop(&mut self) {
            // SAFETY: restores the value read in `set`.
            unsafe { _mm_setcsr(self.0) }
        }
    }

    /// `R` rows x 8 columns through f32 FMAs: the odd products first, then the even ones. Exact
    /// only with MXCSR's FTZ and DAZ set ([`FtzDaz`]): the caller sets them.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds `kp * MR` pairs, `b` points into a strip of `kp * NR` pairs at its
    /// column 0 or 8, `c` holds the tile.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2<const R: usize>(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, load: bool) {
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [_mm256_setzero_ps(); R];
        if load {
            for (r, v) in acc.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(c.add(r * ldc));
            }
        }
        for p in 0..kp {
            let bv = _mm256_loadu_si256(b.add(p * NR) as *const __m256i);
            let b_even = _mm256_castsi256_ps(_mm256_slli_epi32(bv, 16));
            let b_odd = _mm256_castsi256_ps(_mm256_and_si256(bv, high));
            let ap = a.add(p * MR);
            for (r, v) in acc.iter_mut().enumerate() {
                let pair = *ap.add(r);
                let a_even = _mm256_set1_ps(f32::from_bits(pair << 16));
                let a_odd = _mm256_set1_ps(f32::from_bits(pair & 0xffff_0000));
                *v = _mm256_fmadd_ps(a_odd, b_odd, *v);
                *v = _mm256_fmadd_ps(a_even, b_even, *v);
            }
        }
        for (r, v) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc), *v);
        }
    }

    /// An AVX-512 tile's accumulators: `R` rows x `S` vectors of 16 from `c` (row stride `ldc`)
    /// when `load`, else zeros. Inlined into the kernels, whose features it then has.
    #[inline(always)]
    unsafe fn tile_in<const R: usize, const S: usize>(c: *const f32, ldc: usize, load: bool) -> [[__m512; S]; R] {
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        if load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (s, v) in row.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(c.add(r * ldc + s * NR));
                }
            }
        }
        acc
    }

    /// Store an AVX-512 tile's accumulators to `c` (row stride `ldc`).
    #[inline(always)]
    unsafe fn tile_out<const R: usize, const S: usize>(acc: &[[__m512; S]; R], c: *mut f32, ldc: usize) {
        for (r, row) in acc.iter().enumerate() {
            for (s, v) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * ldc + s * NR), *v);
            }
        }
    }

    /// `R` rows x `16 * S` columns through AVX-512F FMAs, the odd products first, then the even
    /// ones: the emulation at full f32 FMA width, for CPUs whose `vdpbf16ps` runs at half the FMA
    /// rate (an Intel Xeon with AVX512-BF16 was measured so; two FMAs per pair then beat one
    /// `vdpbf16ps`). A comes packed wide (as f32, per pair the MR even elements then the MR odd
    /// ones), so its broadcasts are memory operands; B is split into its even and odd halves in
    /// registers. Exact only with MXCSR's FTZ and DAZ set ([`FtzDaz`]): the caller sets them.
    ///
    /// # Safety
    /// AVX512F; `a` holds `kp` wide pairs of a strip (`2 * kp * MR` f32), `b0` (and `b1`) `kp * NR`
    /// pairs, `c` the tile.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_avx512<const R: usize, const S: usize>(
        kp: usize,
        a: *const f32,
        b0: *const u32,
        b1: *const u32,
        c: *mut f32,
        ldc: usize,
        load: bool,
    ) {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = tile_in::<R, S>(c, ldc, load);
        let bs = [b0, b1];
        for p in 0..kp {
            let mut b_even = [_mm512_setzero_ps(); S];
            let mut b_odd = [_mm512_setzero_ps(); S];
            for s in 0..S {
                let bv = _mm512_loadu_si512(bs[s].add(p * NR) as *const _);
                b_even[s] = _mm512_castsi512_ps(_mm512_slli_epi32(bv, 16));
                b_odd[s] = _mm512_castsi512_ps(_mm512_and_si512(bv, high));
            }
            let ap = a.add(p * MR * 2);
            for (r, row) in acc.iter_mut().enumerate() {
                let a_even = _mm512_set1_ps(*ap.add(r));
                let a_odd = _mm512_set1_ps(*ap.add(MR + r));
                for (s, v) in row.iter_mut().enumerate() {
                    *v = _mm512_fmadd_ps(a_odd, b_odd[s], *v);
                    *v = _mm512_fmadd_ps(a_even, b_even[s], *v);
                }
            }
        }
        tile_out(&acc, c, ldc);
    }

    /// `R` rows x `16 * S` columns through `vdpbf16ps` (S = 1 or 2 strips: `b0`, and `b1` for S = 2).
    ///
    /// # Safety
    /// AVX512F and AVX512-BF16; `a` holds `kp * MR` pairs, `b0` (and `b1`) `kp * NR`, `c` the tile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_avx512bf16<const R: usize, const S: usize>(
        kp: usize,
        a: *const u32,
        b0: *const u32,
        b1: *const u32,
        c: *mut f32,
        ldc: usize,
        load: bool,
    ) {
        let mut acc = tile_in::<R, S>(c, ldc, load);
        let bs = [b0, b1];
        for p in 0..kp {
            let mut bv = [_mm512_setzero_si512(); S];
            for (s, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(bs[s].add(p * NR) as *const _);
            }
            let ap = a.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                for (s, v) in row.iter_mut().enumerate() {
                    *v = _mm512_dpbf16_ps(*v, av, std::mem::transmute::<__m512i, __m512bh>(bv[s]));
                }
            }
        }
        tile_out(&acc, c, ldc);
    }
}
