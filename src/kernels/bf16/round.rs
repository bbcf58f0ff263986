//! f32 -> bf16 rounding as `vcvtne2ps2bf16` does it, and the bf16 -> f32 widening.
//!
//! Round to nearest, ties to even: `(u + 0x7FFF + ((u >> 16) & 1)) >> 16` on the f32 bits `u`.
//! A NaN keeps its sign and upper payload and becomes quiet (bit 6 of the bf16 set); a zero or a
//! subnormal input becomes a zero of its sign. `half::bf16::from_f32` differs only on subnormal
//! inputs, which it rounds instead of flushing.

/// The bf16 bits of `x`, rounded as the hardware conversion rounds.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x0040) as u16; // NaN: quiet, sign and upper payload kept
    }
    if u & 0x7f80_0000 == 0 {
        return ((u >> 16) & 0x8000) as u16; // zero or subnormal: a signed zero
    }
    // No overflow: the largest finite |x| plus the bias stays below 2^32 and rounds to infinity.
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// The f32 that bf16 bits `b` stand for (exact: bf16 is the upper half of an f32).
#[inline(always)]
pub fn to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `dst[i] = to_bf16(src[i])`, vectorised where the CPU allows (the same bits on every path).
pub fn round_slice(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "round_slice: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the features were just detected.
            return unsafe { x86::round_avx512bf16(src, dst) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { x86::round_avx2(src, dst) };
        }
    }
    round_scalar(src, dst)
}

/// The scalar loop of [`round_slice`].
pub fn round_scalar(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    //! The vector roundings: AVX2 integer arithmetic on the formula, and the hardware conversion.
    use std::arch::x86_64::*;

    use super::to_bf16;

    /// Eight lanes of [`to_bf16`] in AVX2 integer arithmetic, as i32 lanes holding u16 bits.
    #[inline(always)]
    unsafe fn round8(u: __m256i) -> __m256i {
        let hi = _mm256_srli_epi32(u, 16);
        let lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
        let rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
        let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
        let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
        let quiet = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
        let tiny = _mm256_cmpeq_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7f80_0000)), _mm256_setzero_si256());
        let signed_zero = _mm256_and_si256(hi, _mm256_set1_epi32(0x8000));
        let r = _mm256_blendv_epi8(rounded, quiet, nan);
        _mm256_blendv_epi8(r, signed_zero, tiny)
    }

    /// [`super::round_slice`] in AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn round_avx2(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            let a = round8(_mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i));
            let b = round8(_mm256_loadu_si256(src.as_ptr().add(i + 8) as *const __m256i));
            // packus works within 128-bit halves: a0 b0 a1 b1 -> put the quarters back in order.
            let packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0b11_01_10_00);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, packed);
            i += 16;
        }
        for j in i..n {
            dst[j] = to_bf16(src[j]);
        }
    }

    /// [`super::round_slice`] through the hardware conversion (`vcvtneps2bf16`).
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn round_avx512bf16(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
            i += 16;
        }
        for j in i..n {
            dst[j] = to_bf16(src[j]);
        }
    }
}
