//! The products of one attention head, without a GEMM and over the causal part only, in f32 and
//! with bf16 operands.
//!
//! A head's products are small (64 x 64 x 32 at the small bench shape): a GEMM call on them spent
//! more in packing its operands and dispatching than in arithmetic, and computed the whole (T, T)
//! square where causal attention needs the lower triangle. Here each tile of rows runs over only
//! the depth (or columns) its rows need.
//!
//! The bits are those of the path replaced. In f32 ([`product`]) each output is the chain of FMAs
//! over the depth in order, started from +0, which is what gemm computes for a depth of at most 512
//! outside its small-matrix paths ([`applies`] says where this holds). With bf16 operands
//! ([`product_bf16`]) it is the chain of `vdpbf16ps` steps the bf16 GEMM computes, on operands
//! rounded as it rounds them. Depth a tile skips holds exact zeros in the lhs (masked weights):
//! they add nothing to a nonzero sum, so skipping them changes no bit (of a sum that is exactly
//! zero, at most the sign). The tests compare both with the GEMMs bit for bit. Written by hand
//! because no crate offers a product over a triangle; the tile layout is the usual broadcast-lhs
//! register block.

use std::ops::Range;

/// Rows per register tile.
const R: usize = 6;
/// Columns per vector.
const W: usize = 16;
/// Vectors per register tile.
const S: usize = 4;

/// Whether [`product`] gives gemm's bits for a head of `t` positions and width `d`, and runs on
/// this CPU: AVX-512; more than 16 positions (for (T, T) outputs of at most 256 values gemm takes
/// a horizontal kernel with another summation order); a depth of at most 512 (beyond, gemm splits
/// it into blocks); more than two of each (gemm's vector-vector and matrix-vector paths).
pub(crate) fn applies(t: usize, d: usize) -> bool {
    avx512() && (17..=512).contains(&t) && (3..=512).contains(&d)
}

/// Whether [`product_bf16`] runs on this CPU (any shape: the bf16 GEMM's order does not depend
/// on it).
pub(crate) fn applies_bf16() -> bool {
    avx512()
}

fn avx512() -> bool {
    matches!(super::simd::level(), super::simd::Level::V4)
}

/// A read-only matrix: element (i, k) at `ptr[i * rs + k * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// `dst[i][j] = sum_k lhs[i][k] rhs[k][j]` for the `m` rows of dst, by tiles of rows: a tile of
/// rows `i0..i1` sums over `depth(i0, i1)` and writes columns `0..cols(i1)` (at most `n`); other
/// columns are left as they were. `rhs` has contiguous rows of stride `ldr`, `dst` row stride
/// `ldd`. The depth a tile skips must hold zeros in the lhs of its rows.
///
/// # Safety
/// [`applies`] held; every element reached lies in its buffer; `dst` is not read.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    m: usize,
    n: usize,
    dst: *mut f32,
    ldd: usize,
    lhs: Mat,
    rhs: *const f32,
    ldr: usize,
    depth: impl Fn(usize, usize) -> Range<usize>,
    cols: impl Fn(usize) -> usize,
) {
    debug_assert!(avx512());
    tiles::<false>(m, n, dst, ldd, lhs, rhs, ldr, depth, cols)
}

/// [`product`] with bf16 operands: `lhs` and `rhs` hold values already rounded to bf16 (as f32,
/// [`round_rows`]), and are zero beyond the depth up to its next even index. The depth runs by
/// pairs from the even index at or below each tile's start, each pair's odd product first, under
/// flush-to-zero and denormals-are-zero: `vdpbf16ps` as the Intel SDM defines it, the chain that
/// the bf16 GEMM computes ([`crate::kernels::bf16::micro::dp_pair`]), so the same bits.
///
/// `hardware` runs the instruction itself (the process's bf16 kernel is `avx512bf16`, so the CPU
/// has it): the rhs's pairs of rows are interleaved once per call into the lanes it reads, and
/// each step is one `vdpbf16ps` instead of two FMAs. Otherwise the two FMAs, which on a CPU whose
/// `vdpbf16ps` runs at half the FMA rate are the faster way to the same bits.
///
/// # Safety
/// As [`product`], with the zeros up to the even depth in place; `hardware` only where the CPU
/// has AVX512-BF16.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product_bf16(
    m: usize,
    n: usize,
    dst: *mut f32,
    ldd: usize,
    lhs: Mat,
    rhs: *const f32,
    ldr: usize,
    depth: impl Fn(usize, usize) -> Range<usize>,
    cols: impl Fn(usize) -> usize,
    hardware: bool,
) {
    debug_assert!(avx512());
    #[cfg(target_arch = "x86_64")]
    let _mode = crate::kernels::bf16::micro::x86::FtzDaz::set();
    let pairs = |i0: usize, i1: usize| {
        let k = depth(i0, i1);
        k.start / 2..k.end.div_ceil(2)
    };
    if hardware {
        hardware_tiles(m, n, dst, ldd, lhs, rhs, ldr, pairs, cols);
    } else {
        tiles::<true>(m, n, dst, ldd, lhs, rhs, ldr, pairs, cols)
    }
}

thread_local! {
    /// [`hardware_tiles`]' interleaved rhs and one tile's lhs pairs, kept between calls.
    static PAIRED: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Two rounded values (low 16 bits zero) as one lane of bf16 pairs: the even one low.
#[inline(always)]
fn pair(even: f32, odd: f32) -> u32 {
    even.to_bits() >> 16 | odd.to_bits() & 0xffff_0000
}

/// [`product_bf16`] on `vdpbf16ps`: the rhs's rows `2p` and `2p + 1` (rounded, so their low 16
/// bits are zero) become one row of bf16 pairs, [`pair`] per column, over the pairs and columns
/// any tile reads; each tile's lhs rows become their pairs too, pair-major, so that a row's pair
/// is one broadcast load. Then tiles as in [`tiles`].
#[allow(clippy::too_many_arguments)]
unsafe fn hardware_tiles(
    m: usize,
    n: usize,
    dst: *mut f32,
    ldd: usize,
    lhs: Mat,
    rhs: *const f32,
    ldr: usize,
    pairs: impl Fn(usize, usize) -> Range<usize>,
    cols: impl Fn(usize) -> usize,
) {
    let (mut kp, mut nc) = (0, 0);
    for_tiles(m, |i0, i1| {
        kp = kp.max(pairs(i0, i1).end);
        nc = nc.max(cols(i1).min(n));
    });
    PAIRED.with_borrow_mut(|(paired, lhs_pairs)| {
        paired.resize(kp * nc, 0);
        for (p, row) in paired.chunks_exact_mut(nc.max(1)).take(kp).enumerate() {
            // SAFETY: the caller's promise: rows up to the even depth, nc <= n columns each.
            let even = std::slice::from_raw_parts(rhs.add(2 * p * ldr), nc);
            let odd = std::slice::from_raw_parts(rhs.add((2 * p + 1) * ldr), nc);
            for ((slot, &e), &o) in row.iter_mut().zip(even).zip(odd) {
                *slot = pair(e, o);
            }
        }
        let paired = paired.as_ptr();
        for_tiles(m, |i0, i1| {
            let k = pairs(i0, i1);
            let width = cols(i1).min(n);
            // This tile's lhs: pair p of row r at (p - k.start) R + r.
            lhs_pairs.resize(R * k.len(), 0);
            for (slots, p) in lhs_pairs.chunks_exact_mut(R).zip(k.clone()) {
                for (r, slot) in slots.iter_mut().enumerate().take(i1 - i0) {
                    let at = lhs.ptr.add((i0 + r) * lhs.rs + 2 * p * lhs.cs);
                    *slot = pair(*at, *at.add(lhs.cs));
                }
            }
            let a = Mat { ptr: lhs_pairs.as_ptr() as *const f32, rs: 1, cs: R };
            for_columns(width, |j0, j1| {
                // SAFETY: the caller's promise, for this tile's rows and columns; the CPU has
                // AVX512-BF16 where `hardware` was asked for.
                #[cfg(target_arch = "x86_64")]
                x86::tile_any::<true, true>(i1 - i0, j1 - j0, k.clone(), a, paired.add(j0) as *const f32, nc, dst.add(i0 * ldd + j0), ldd);
            });
        });
    })
}

/// Each tile of rows `i0..i1` of `m`, in order.
fn for_tiles(m: usize, mut f: impl FnMut(usize, usize)) {
    let mut i0 = 0;
    while i0 < m {
        let i1 = (i0 + R).min(m);
        f(i0, i1);
        i0 = i1;
    }
}

/// Each tile's columns `j0..j1` of `width`, in order.
fn for_columns(width: usize, mut f: impl FnMut(usize, usize)) {
    let mut j0 = 0;
    while j0 < width {
        let j1 = (j0 + S * W).min(width);
        f(j0, j1);
        j0 = j1;
    }
}

/// The tiles of [`product`] (`PAIRS`: of [`product_bf16`], `depth` then in pairs).
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const PAIRS: bool>(
    m: usize,
    n: usize,
    dst: *mut f32,
    ldd: usize,
    lhs: Mat,
    rhs: *const f32,
    ldr: usize,
    depth: impl Fn(usize, usize) -> Range<usize>,
    cols: impl Fn(usize) -> usize,
) {
    for_tiles(m, |i0, i1| {
        let k = depth(i0, i1);
        let width = cols(i1).min(n);
        let a = Mat { ptr: lhs.ptr.add(i0 * lhs.rs), ..lhs };
        for_columns(width, |j0, j1| {
            let (b, c) = (rhs.add(j0), dst.add(i0 * ldd + j0));
            // SAFETY: the caller's promise, for this tile's rows and columns.
            #[cfg(target_arch = "x86_64")]
            x86::tile_any::<PAIRS, false>(i1 - i0, j1 - j0, k.clone(), a, b, ldr, c, ldd);
        });
    });
}

/// `x` rounded to bf16 as [`crate::kernels::bf16::round::to_bf16`] rounds it, widened back to
/// f32, without branches so that loops over it vectorise.
#[inline(always)]
fn round_one(x: f32) -> f32 {
    let u = x.to_bits();
    let nearest = u.wrapping_add(0x7fff + ((u >> 16) & 1)) & 0xffff_0000;
    let nan = (u | 0x0040_0000) & 0xffff_0000;
    let v = if u & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else if u & 0x7f80_0000 == 0 {
        u & 0x8000_0000
    } else {
        nearest
    };
    f32::from_bits(v)
}

super::simd::dispatch! {
    /// `dst (rows_pad, cols_pad)` = rows `0..rows` of width `cols` of `src` (row `i` at
    /// `src[i * rs..]`) rounded to bf16 as f32, zeros beyond: an operand of [`product_bf16`],
    /// rounded as the bf16 GEMM rounds its operands while packing them.
    fn round_rows(src: &[f32], rs: usize, rows: usize, cols: usize, rows_pad: usize, cols_pad: usize, dst: &mut [f32]) {
        for i in 0..rows {
            let out = &mut dst[i * cols_pad..(i + 1) * cols_pad];
            for (o, &x) in out[..cols].iter_mut().zip(&src[i * rs..i * rs + cols]) {
                *o = round_one(x);
            }
            out[cols..].fill(0.0);
        }
        dst[rows * cols_pad..rows_pad * cols_pad].fill(0.0);
    }
}

/// `dst (D, T)` = the transpose of the T rows of width D at `src` (row stride `rs`): keys or
/// values as the contiguous rows that [`product`] reads.
///
/// # Safety
/// [`applies`] or [`applies_bf16`] held; `src` holds the T rows; `dst` at least D T values.
pub(crate) unsafe fn transpose(src: *const f32, rs: usize, t: usize, d: usize, dst: &mut [f32]) {
    debug_assert!(dst.len() >= d * t && avx512());
    #[cfg(target_arch = "x86_64")]
    x86::transpose(src, rs, t, d, dst.as_mut_ptr());
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Mat, R, S, W};

    /// [`super::transpose`]: each run of 16 destination values gathered from 16 source rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(src: *const f32, rs: usize, t: usize, d: usize, dst: *mut f32) {
        let step = _mm512_set1_epi32(rs as i32);
        let index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), step);
        let mut j0 = 0;
        while j0 < t {
            let rows = W.min(t - j0);
            let mask: __mmask16 = if rows == W { 0xffff } else { (1u16 << rows) - 1 };
            let base = src.add(j0 * rs);
            for dd in 0..d {
                let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, base.add(dd));
                _mm512_mask_storeu_ps(dst.add(dd * t + j0), mask, v);
            }
            j0 += W;
        }
    }

    /// One tile of `rows` <= R rows and `cols` <= S W columns (`HW`: on `vdpbf16ps`, `b` then
    /// holding interleaved pairs, see [`super::hardware_tiles`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_any<const PAIRS: bool, const HW: bool>(rows: usize, cols: usize, k: Range<usize>, a: Mat, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
        let vectors = cols.div_ceil(W);
        let rem = cols - (vectors - 1) * W;
        let last: __mmask16 = if rem == W { 0xffff } else { (1u16 << rem) - 1 };
        macro_rules! one {
            ($r:literal, $s:literal) => {
                if HW {
                    dp_tile::<$r, $s>(k, a, b as *const u32, ldb, c, ldc, last)
                } else {
                    tile::<$r, $s, PAIRS>(k, a, b, ldb, c, ldc, last)
                }
            };
        }
        macro_rules! go {
            ($r:literal) => {
                match vectors {
                    1 => one!($r, 1),
                    2 => one!($r, 2),
                    3 => one!($r, 3),
                    _ => one!($r, 4),
                }
            };
        }
        const _: () = assert!(R == 6 && S == 4);
        match rows {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            _ => go!(6),
        }
    }

    /// One depth step `kk` of a tile: `acc[r] += a[r][kk] b[kk]`. Inlined into [`tile`], whose
    /// features it then has.
    #[inline(always)]
    unsafe fn step<const RR: usize, const SS: usize>(acc: &mut [[__m512; SS]; RR], kk: usize, a: Mat, b: *const f32, ldb: usize, last: __mmask16) {
        let bp = b.add(kk * ldb);
        let mut bv = [_mm512_setzero_ps(); SS];
        for (s, v) in bv.iter_mut().enumerate() {
            *v = if s + 1 < SS { _mm512_loadu_ps(bp.add(s * W)) } else { _mm512_maskz_loadu_ps(last, bp.add(s * W)) };
        }
        let ap = a.ptr.add(kk * a.cs);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * a.rs));
            for (v, &bs) in row.iter_mut().zip(&bv) {
                *v = _mm512_fmadd_ps(av, bs, *v);
            }
        }
    }

    /// `RR` rows x `SS` vectors of 16 (the last one masked by `last`): accumulators from +0,
    /// one FMA per depth step, in order; with `PAIRS`, `k` counts pairs of depth, each the odd
    /// step then the even one.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const RR: usize, const SS: usize, const PAIRS: bool>(k: Range<usize>, a: Mat, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, last: __mmask16) {
        let mut acc = [[_mm512_setzero_ps(); SS]; RR];
        for kk in k {
            if PAIRS {
                step(&mut acc, 2 * kk + 1, a, b, ldb, last);
                step(&mut acc, 2 * kk, a, b, ldb, last);
            } else {
                step(&mut acc, kk, a, b, ldb, last);
            }
        }
        store(&acc, c, ldc, last);
    }

    /// [`tile`] with `PAIRS` on `vdpbf16ps`: `b`'s row `p` holds pair `p` of each column
    /// interleaved, and `a`'s element `(r, p - k.start)` the bits of row r's pair p, broadcast
    /// as one 32-bit lane.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dp_tile<const RR: usize, const SS: usize>(k: Range<usize>, a: Mat, b: *const u32, ldb: usize, c: *mut f32, ldc: usize, last: __mmask16) {
        let mut acc = [[_mm512_setzero_ps(); SS]; RR];
        for p in k.clone() {
            let bp = b.add(p * ldb);
            let mut bv = [_mm512_setzero_si512(); SS];
            for (s, v) in bv.iter_mut().enumerate() {
                *v = if s + 1 < SS { _mm512_loadu_si512(bp.add(s * W) as *const _) } else { _mm512_maskz_loadu_epi32(last, bp.add(s * W) as *const i32) };
            }
            let ap = (a.ptr as *const i32).add((p - k.start) * a.cs);
            for (r, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r * a.rs)));
                for (v, &bs) in row.iter_mut().zip(&bv) {
                    *v = _mm512_dpbf16_ps(*v, av, std::mem::transmute::<__m512i, __m512bh>(bs));
                }
            }
        }
        store(&acc, c, ldc, last);
    }

    /// A tile's accumulators to `c`, the last vector of each row masked by `last`.
    #[inline(always)]
    unsafe fn store<const RR: usize, const SS: usize>(acc: &[[__m512; SS]; RR], c: *mut f32, ldc: usize, last: __mmask16) {
        for (r, row) in acc.iter().enumerate() {
            for (s, v) in row.iter().enumerate() {
                let at = c.add(r * ldc + s * W);
                if s + 1 < SS {
                    _mm512_storeu_ps(at, *v);
                } else {
                    _mm512_mask_storeu_ps(at, last, *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1), with some exact zeros and wide magnitudes so that the
    /// order of the FMAs shows in the last bits.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if s >> 61 == 0 { 0.0 } else { u * [1.0, 1e-3, 37.0, 1e-20][(s >> 20) as usize % 4] }
            })
            .collect()
    }

    /// gemm's product through the crate's f32 matmul, as the attention kernel called it.
    #[allow(clippy::too_many_arguments)]
    fn gemm(m: usize, n: usize, k: usize, lhs: (&[f32], usize, usize), rhs: (&[f32], usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        // SAFETY: the strides describe the given slices.
        unsafe { crate::kernels::matmul(m, n, k, out.as_mut_ptr(), (n, 1), lhs.0.as_ptr(), (lhs.1, lhs.2), rhs.0.as_ptr(), (rhs.1, rhs.2)) };
        out
    }

    fn same_bits(what: &str, got: f32, want: f32) {
        assert_eq!(got.to_bits(), want.to_bits(), "{what}: {got:e} vs gemm's {want:e}");
    }

    #[test]
    fn causal_products_give_gemms_bits() {
        if !avx512() {
            eprintln!("no AVX-512 on this CPU: the attention products run through gemm, nothing to compare");
            return;
        }
        assert!(!applies(16, 32) && !applies(513, 32) && !applies(64, 2) && applies(17, 3));
        for (t, d, window) in [(17, 3, None), (64, 32, None), (100, 24, Some(7)), (33, 64, None), (256, 16, Some(100))] {
            assert!(applies(t, d));
            let first_key = |i: usize| window.map_or(0, |w: usize| (i + 1).saturating_sub(w));
            let query_end = |j: usize| window.map_or(t, |w| (j + w).min(t));
            // Queries and keys (T, D) in rows of stride rs, as in a packed qkv.
            let rs = 3 * d + 5;
            let (q, k) = (values(t * rs, 1), values(t * rs, 2));
            let mut kt = vec![f32::NAN; d * t];
            unsafe { transpose(k.as_ptr(), rs, t, d, &mut kt) };
            for j in 0..t {
                for dd in 0..d {
                    assert_eq!(kt[dd * t + j].to_bits(), k[j * rs + dd].to_bits(), "t {t} d {d}: the transpose at ({dd}, {j})");
                }
            }
            // Scores: keys up to each tile's last query; row i is compared over the keys it sees.
            let want = gemm(t, t, d, (&q, rs, 1), (&k, 1, rs));
            let mut got = vec![f32::NAN; t * t];
            unsafe { product(t, t, got.as_mut_ptr(), t, Mat { ptr: q.as_ptr(), rs, cs: 1 }, kt.as_ptr(), t, |_, _| 0..d, |i1| i1) };
            for i in 0..t {
                for j in first_key(i)..=i {
                    same_bits(&format!("t {t} d {d}: score ({i}, {j})"), got[i * t + j], want[i * t + j]);
                }
            }
            // Weights: zero outside each query's keys.
            let mut a = values(t * t, 3);
            for i in 0..t {
                for j in 0..t {
                    if j < first_key(i) || j > i {
                        a[i * t + j] = 0.0;
                    }
                }
            }
            // alpha . v over the keys each tile of queries sees, and alpha^T . dy over the queries
            // that see each tile of keys: every value of the (T, D) outputs.
            let want = gemm(t, d, t, (&a, t, 1), (&k, rs, 1));
            let mut got = vec![f32::NAN; t * d];
            unsafe { product(t, d, got.as_mut_ptr(), d, Mat { ptr: a.as_ptr(), rs: t, cs: 1 }, k.as_ptr(), rs, |i0, i1| first_key(i0)..i1, |_| d) };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                same_bits(&format!("t {t} d {d}: alpha.v ({}, {})", i / d, i % d), *g, *w);
            }
            let want = gemm(t, d, t, (&a, 1, t), (&q, rs, 1));
            let mut got = vec![f32::NAN; t * d];
            unsafe { product(t, d, got.as_mut_ptr(), d, Mat { ptr: a.as_ptr(), rs: 1, cs: t }, q.as_ptr(), rs, |j0, j1| j0..query_end(j1 - 1), |_| d) };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                same_bits(&format!("t {t} d {d}: alpha^T.dy ({}, {})", i / d, i % d), *g, *w);
            }
        }
    }

    /// The bf16 GEMM's product of f32 operands (rounded while it packs them).
    fn bf16_gemm(m: usize, n: usize, k: usize, lhs: (&[f32], usize, usize), rhs: (&[f32], usize, usize)) -> Vec<f32> {
        use crate::kernels::bf16::{gemm, Kernel};
        let mut out = vec![0f32; m * n];
        let (a, b) = (gemm::Src::F32 { ptr: lhs.0.as_ptr(), rs: lhs.1, cs: lhs.2 }, gemm::Src::F32 { ptr: rhs.0.as_ptr(), rs: rhs.1, cs: rhs.2 });
        // SAFETY: the strides describe the given slices.
        unsafe { gemm::gemm(Kernel::Avx512, m, n, k, a, b, out.as_mut_ptr(), n, false) };
        out
    }

    #[test]
    fn bf16_causal_products_give_the_bf16_gemms_bits() {
        if !applies_bf16() {
            eprintln!("no AVX-512 on this CPU: the bf16 attention products run through the bf16 GEMM, nothing to compare");
            return;
        }
        // Rounding: every kind of input (ties to even both ways at 0x3f808000 and 0x3f818000),
        // against the conversion's formula.
        let specials = [0.0f32, -0.0, 1.0, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-40, -1e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), 3.4e38];
        let mut got = vec![0f32; specials.len()];
        round_rows(&specials, specials.len(), 1, specials.len(), 1, specials.len(), &mut got);
        for (x, g) in specials.iter().zip(&got) {
            let want = crate::kernels::bf16::round::to_f32(crate::kernels::bf16::round::to_bf16(*x));
            assert_eq!(g.to_bits(), want.to_bits(), "rounding {x:e}");
        }
        let mut hardware_ways = vec![false];
        if crate::kernels::bf16::Kernel::Avx512Bf16.available() {
            hardware_ways.push(true);
        } else {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 attention tiles are compared on the emulation only");
        }
        // Odd and even positions and widths, windows, products that underflow (1e-20 squared:
        // flushed to zero under FTZ, as vdpbf16ps flushes them).
        for (t, d, window) in [(5, 3, None), (64, 32, None), (37, 9, Some(7)), (100, 24, None), (33, 64, Some(20))] {
            let (tp, dp) = (t + t % 2, d + d % 2);
            let first_key = |i: usize| window.map_or(0, |w: usize| (i + 1).saturating_sub(w));
            let query_end = |j: usize| window.map_or(t, |w| (j + w).min(t));
            let rs = 3 * d + 5;
            let (q, k) = (values(t * rs, 4), values(t * rs, 5));
            let mut a = values(t * t, 6);
            for i in 0..t {
                for j in 0..t {
                    if j < first_key(i) || j > i {
                        a[i * t + j] = 0.0;
                    }
                }
            }
            let (mut qr, mut kr, mut ar) = (vec![f32::NAN; tp * dp], vec![f32::NAN; tp * dp], vec![f32::NAN; tp * tp]);
            round_rows(&q, rs, t, d, tp, dp, &mut qr);
            round_rows(&k, rs, t, d, tp, dp, &mut kr);
            round_rows(&a, t, t, t, tp, tp, &mut ar);
            let mut kt = vec![0f32; d * t];
            unsafe { transpose(k.as_ptr(), rs, t, d, &mut kt) };
            let mut ktr = vec![f32::NAN; dp * tp];
            round_rows(&kt, t, d, t, dp, tp, &mut ktr);
            // Through the two-FMA emulation and, where the CPU has it, `vdpbf16ps` itself.
            for &hardware in &hardware_ways {
                let how = if hardware { " (vdpbf16ps)" } else { "" };
                // Scores over the keys each query sees.
                let want = bf16_gemm(t, t, d, (&q, rs, 1), (&k, 1, rs));
                let mut got = vec![f32::NAN; t * t];
                unsafe { product_bf16(t, t, got.as_mut_ptr(), t, Mat { ptr: qr.as_ptr(), rs: dp, cs: 1 }, ktr.as_ptr(), tp, |_, _| 0..d, |i1| i1, hardware) };
                for i in 0..t {
                    for j in first_key(i)..=i {
                        same_bits(&format!("bf16{how} t {t} d {d}: score ({i}, {j})"), got[i * t + j], want[i * t + j]);
                    }
                }
                // alpha . v from the keys each tile sees, alpha^T . q from the queries that see each
                // tile's keys (depths starting at odd indices).
                let want = bf16_gemm(t, d, t, (&a, t, 1), (&k, rs, 1));
                let mut got = vec![f32::NAN; t * d];
                unsafe { product_bf16(t, d, got.as_mut_ptr(), d, Mat { ptr: ar.as_ptr(), rs: tp, cs: 1 }, kr.as_ptr(), dp, |i0, i1| first_key(i0)..i1, |_| d, hardware) };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    same_bits(&format!("bf16{how} t {t} d {d}: alpha.v ({}, {})", i / d, i % d), *g, *w);
                }
                let want = bf16_gemm(t, d, t, (&a, 1, t), (&q, rs, 1));
                let mut got = vec![f32::NAN; t * d];
                unsafe { product_bf16(t, d, got.as_mut_ptr(), d, Mat { ptr: ar.as_ptr(), rs: 1, cs: tp }, qr.as_ptr(), dp, |j0, j1| j0..query_end(j1 - 1), |_| d, hardware) };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    same_bits(&format!("bf16{how} t {t} d {d}: alpha^T.q ({}, {})", i / d, i % d), *g, *w);
                }
            }
        }
    }
}
