//! The bf16 product on Intel's AMX tiles (`tdpbf16ps`): fast, and **not** reproducible.
//!
//! AMX accumulates a tile's 32 products per output in its own way, which matches neither the
//! chain of `vdpbf16ps` steps that every other kernel gives nor any emulation written here
//! (`cargo run --release --example amx_semantics`). So this kernel is never chosen by `auto`:
//! it runs only where `THERMOFORMER_BF16_KERNEL=amx` asks for it, and its results differ in the
//! last bits from the reproducible kernels' (and would from another AMX chip's, were its
//! accumulation different). What it gives is PyTorch autocast's speed class on CPUs that have
//! AMX (Intel Sapphire Rapids and later), where `vdpbf16ps` retires at half the f32 FMA rate.
//!
//! Written by hand because no well-kept crate offers a bf16 GEMM with f32 outputs on AMX, and
//! the AMX intrinsics are not stable Rust: the tiles are reached with `asm!`. Linux hands out
//! the tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
//! process-wide), asked once in [`available`].
//!
//! Layout: B is the blocked product's packed strip ([`super::gemm::PackedB`]), whose pair rows
//! of 16 columns are exactly AMX's B tile rows (64 bytes each). A is packed here row-major, one
//! u32 per pair, rows padded to a multiple of 16 and pairs to a multiple of 16 with zeros, so a
//! 16 x 16-pair A tile is one strided load. Each 32 x 32 block of C is four tiles accumulated
//! over the whole of k, then stored; threads split blocks of rows or columns.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use imp::*;

/// Whether this CPU and OS can run AMX's bf16 tiles (asks Linux for the tile state once).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub fn available() -> bool {
    false
}

/// The AMX product, which needs x86-64 Linux: never reached elsewhere, since [`available`] is
/// false there and [`super::Kernel::Amx`] is refused before any product runs.
///
/// # Safety
/// None needed: it only panics.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(_m: usize, _n: usize, _k: usize, _a: super::operand::Src, _pb: &[u32], _c: *mut f32, _ldc: usize, _parallel: bool) {
    unreachable!("AMX tiles are reached on x86-64 Linux only")
}

/// The AMX prefix product, which needs x86-64 Linux: never reached elsewhere (see [`gemm()`]).
///
/// # Safety
/// None needed: it only panics.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_prefix(_m: usize, _n: usize, _k: usize, _a: super::operand::Src, _pb: &[u32], _strip_kp: usize, _c: *mut f32, _ldc: usize) {
    unreachable!("AMX tiles are reached on x86-64 Linux only")
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;
    use std::sync::OnceLock;

    use super::super::operand::{fetch, Src};
    use super::super::micro::NR;
    use super::super::round::round_slice;
    use crate::kernels::SendPtr;

    /// Rows (and pairs of k) of one tile.
    const T: usize = 16;
    /// Row units (of two tiles) per block of rows a worker keeps in cache while it sweeps the
    /// columns.
    const ROW_UNITS: usize = 8;
    /// Below this many multiply-adds a product runs on the calling thread.
    const PARALLEL_MACS: usize = 1 << 18;

    extern "C" {
        fn syscall(n: i64, ...) -> i64;
    }

    /// Whether this CPU has AMX-TILE and AMX-BF16 and Linux granted the tile state.
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            // SAFETY: arch_prctl (158) with ARCH_REQ_XCOMP_PERM (0x1023) and XFEATURE_XTILEDATA
            // (18) only changes which register state the kernel saves for this process.
            unsafe { syscall(158, 0x1023i64, 18i64) == 0 }
        })
    }

    /// A packed row-major, `kpa` pairs (a multiple of 16) per row, rows up to a multiple of 16.
    struct PackedA {
        kpa: usize,
        data: Vec<u32>,
    }

    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Pack `m x k` of `a`: each row's bf16 values (rounded from f32 or read as bits) as pairs,
    /// zero beyond k and beyond m.
    unsafe fn pack_a(a: Src, m: usize, k: usize, out: &mut Vec<u32>, parallel: bool) -> usize {
        let kpa = k.div_ceil(2 * T) * T;
        let rows = m.div_ceil(T) * T;
        out.resize(rows * kpa, 0);
        let (rs, cs) = match a {
            Src::F32 { rs, cs, .. } | Src::Bf16 { rs, cs, .. } => (rs, cs),
        };
        let dst = SendPtr::new(out);
        let large = parallel && m * k >= 1 << 15;
        if cs == 1 || rs != 1 {
            // Along each row: one run per row (a strided fetch only where neither stride is 1).
            let pack = |range: std::ops::Range<usize>| {
                for r in range {
                    // SAFETY: row r's kpa words lie inside `out`, and each row is one worker's.
                    let row = std::slice::from_raw_parts_mut(dst.get().add(r * kpa) as *mut u16, 2 * kpa);
                    if r < m {
                        fetch(a, r * rs, cs, &mut row[..k]);
                        row[k..].iter_mut().for_each(|x| *x = 0);
                    } else {
                        row.iter_mut().for_each(|x| *x = 0);
                    }
                }
            };
            if large {
                crate::kernels::parallel_for_ranges(rows, pack);
            } else {
                pack(0..rows);
            }
        } else {
            // A stored transposed (rs == 1: a weight gradient's dy^T): for each k, 16 rows of A
            // are one contiguous run. Workers take blocks of 32 k (whole pairs) and write each
            // row's 64 bytes of a block at once: a fetch per row would gather one value per
            // cache line, and writing one k at a time down the rows thrashes the caches where the
            // rows' stride is a power of two.
            const KB: usize = 32;
            for r in 0..rows {
                // SAFETY: row r lies inside `out`; no worker runs yet.
                let row = std::slice::from_raw_parts_mut(dst.get().add(r * kpa) as *mut u16, 2 * kpa);
                row[if r < m { k } else { 0 }..].iter_mut().for_each(|x| *x = 0);
            }
            let pack = |range: std::ops::Range<usize>| {
                // One block: 32 k x 16 rows, rounded a run at a time, then written transposed as
                // each row's 64 bytes of that block.
                let mut block = [[0u16; T]; KB];
                let mut wide = [[0f32; T]; KB];
                let out16 = dst.get() as *mut u16;
                for blk in range {
                    let (k0, kl) = (blk * KB, KB.min(k - blk * KB));
                    for r0 in (0..m).step_by(T) {
                        let h = T.min(m - r0);
                        if let Src::F32 { ptr, .. } = a {
                            // The block's runs side by side, then rounded in one call: a call
                            // per run of 16 cost more than the rounding.
                            for (kk, run) in wide.iter_mut().enumerate().take(kl) {
                                let src = ptr.add((k0 + kk) * cs + r0);
                                if h == T {
                                    // A whole run as one fixed-size copy (inlined), not a call to
                                    // memmove per 64 bytes.
                                    *run = *(src as *const [f32; T]);
                                } else {
                                    std::ptr::copy_nonoverlapping(src, run.as_mut_ptr(), h);
                                }
                            }
                            round_slice(&wide.as_flattened()[..kl * T], &mut block.as_flattened_mut()[..kl * T]);
                        } else {
                            for (kk, run) in block.iter_mut().enumerate().take(kl) {
                                fetch(a, (k0 + kk) * cs + r0, 1, &mut run[..h]);
                            }
                        }
                        for i in 0..h {
                            // SAFETY: slots (r0 + i, k0..k0 + kl) lie inside `out`; the block of
                            // k is this worker's.
                            let row = out16.add((r0 + i) * 2 * kpa + k0);
                            for (kk, run) in block.iter().enumerate().take(kl) {
                                *row.add(kk) = run[i];
                            }
                        }
                    }
                }
            };
            if large {
                crate::kernels::parallel_for_ranges(k.div_ceil(KB), pack);
            } else {
                pack(0..k.div_ceil(KB));
            }
        }
        kpa
    }

    /// `c (m, n) = a (m, k) . b`, with `b` packed as [`super::super::gemm`]'s strips of `NR`
    /// columns over `kp` pairs. `c` has row stride `ldc`.
    ///
    /// # Safety
    /// [`available`] must be true; `a`'s elements readable, `pb` the packed B of `(k, n)`, `c`'s
    /// rows writable and not aliasing the operands.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(m: usize, n: usize, k: usize, a: Src, pb: &[u32], c: *mut f32, ldc: usize, parallel: bool) {
        debug_assert_eq!(NR, T);
        if m == 0 || n == 0 {
            return;
        }
        with_packed_a(a, m, k, parallel, |pa| multiply(m, n, k.div_ceil(2), pa, pb, c, ldc, parallel))
    }

    /// `run` on `a (m, k)` packed in this thread's reused buffer.
    unsafe fn with_packed_a(a: Src, m: usize, k: usize, parallel: bool, run: impl FnOnce(&PackedA)) {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let kpa = pack_a(a, m, k, &mut s, parallel);
            let pa = PackedA { kpa, data: std::mem::take(&mut *s) };
            run(&pa);
            *s = pa.data;
        })
    }

    /// `c (m, n) = a (m, k) . b[..k, ..n]` on the calling thread, where `b` holds strips of
    /// `strip_kp` pairs (a packed B of `strip_kp * 2` rows or one fewer) and `k <= 2 strip_kp`:
    /// the leading rows and columns of a packed B, as a causal product reads them.
    ///
    /// # Safety
    /// As [`gemm()`], with `n` within `b`'s strips.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_prefix(m: usize, n: usize, k: usize, a: Src, pb: &[u32], strip_kp: usize, c: *mut f32, ldc: usize) {
        debug_assert!(k.div_ceil(2) <= strip_kp);
        if m == 0 || n == 0 {
            return;
        }
        with_packed_a(a, m, k, false, |pa| block(m, n, k.div_ceil(2), strip_kp, pa, pb, c, ldc, 0..m.div_ceil(2 * T), 0..n.div_ceil(2 * T)))
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn multiply(m: usize, n: usize, kp: usize, pa: &PackedA, pb: &[u32], c: *mut f32, ldc: usize, parallel: bool) {
        let (row_units, col_units) = (m.div_ceil(2 * T), n.div_ceil(2 * T));
        let out = SendPtr(c);
        let threads = candle_core::utils::get_num_threads();
        let run = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| block(m, n, kp, kp, pa, pb, out.get(), ldc, rows, cols);
        if !parallel || threads < 2 || m * n * kp * 2 < PARALLEL_MACS {
            return run(0..row_units, 0..col_units);
        }
        if col_units >= 2 * threads || col_units >= row_units {
            crate::kernels::parallel_for_ranges(col_units, |cols| run(0..row_units, cols));
        } else {
            crate::kernels::parallel_for_ranges(row_units, |rows| run(rows, 0..col_units));
        }
    }

    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// Every tile register as 16 rows of 64 bytes (palette 1), for this thread.
    unsafe fn configure() {
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = T as u8;
        }
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly, preserves_flags));
    }

    /// The 32 x 32 blocks of C in row units `rows` x column units `cols`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(m: usize, n: usize, kp: usize, strip_kp: usize, pa: &PackedA, pb: &[u32], c: *mut f32, ldc: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        configure();
        let kpa = pa.kpa;
        let full = kp / T; // chunks of 16 pairs that B holds in full
        let tail = kp % T;
        let strips = n.div_ceil(NR);
        // B's last chunk where kp is not a multiple of 16: its pair rows, zero below.
        let mut b_tail = [[0u32; T * T]; 2];
        let mut out = [[0f32; T * T]; 4];
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + ROW_UNITS).min(rows.end);
            for cu in cols.clone() {
                let s0 = 2 * cu;
                let two_cols = s0 + 1 < strips;
                let b0 = pb.as_ptr().add(s0 * strip_kp * NR);
                let b1 = if two_cols { b0.add(strip_kp * NR) } else { b0 };
                if tail > 0 {
                    for (s, b) in [b0, b1].into_iter().enumerate() {
                        std::ptr::copy_nonoverlapping(b.add(full * T * NR), b_tail[s].as_mut_ptr(), tail * NR);
                    }
                }
                for ru in r0..r1 {
                    let i0 = 2 * ru * T;
                    let two_rows = i0 + T < m;
                    let a0 = pa.data.as_ptr().add(i0 * kpa);
                    let a1 = if two_rows { a0.add(T * kpa) } else { a0 };
                    let (sa, sb) = (kpa * 4, NR * 4);
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem, preserves_flags));
                    for ch in 0..full + (tail > 0) as usize {
                        let (pb0, pb1) = if ch < full {
                            (b0.add(ch * T * NR), b1.add(ch * T * NR))
                        } else {
                            (b_tail[0].as_ptr(), b_tail[1].as_ptr())
                        };
                        let (pa0, pa1) = (a0.add(ch * T), a1.add(ch * T));
                        // Four tiles: (A0, A1) x (B0, B1) into tmm0..tmm3; the unused ones,
                        // where C's edge has one tile of rows or of columns, only cost time.
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) pa0,
                            a1 = in(reg) pa1,
                            b0 = in(reg) pb0,
                            b1 = in(reg) pb1,
                            sa = in(reg) sa,
                            sb = in(reg) sb,
                            options(nostack, readonly, preserves_flags),
                        );
                    }
                    // The tiles to C: straight where a tile lies inside C, else through `out`.
                    let tiles = [(0, 0), (0, 1), (1, 0), (1, 1)];
                    for (t, (ti, tj)) in tiles.into_iter().enumerate() {
                        let (i, j) = (i0 + ti * T, (s0 + tj) * NR);
                        if i >= m || j >= n {
                            continue;
                        }
                        let (h, w) = (T.min(m - i), T.min(n - j));
                        let inside = h == T && w == T;
                        let (dst, stride) = if inside { (c.add(i * ldc + j), ldc * 4) } else { (out[t].as_mut_ptr(), T * 4) };
                        match t {
                            0 => asm!("tilestored [{d} + {s}*1], tmm0", d = in(reg) dst, s = in(reg) stride, options(nostack, preserves_flags)),
                            1 => asm!("tilestored [{d} + {s}*1], tmm1", d = in(reg) dst, s = in(reg) stride, options(nostack, preserves_flags)),
                            2 => asm!("tilestored [{d} + {s}*1], tmm2", d = in(reg) dst, s = in(reg) stride, options(nostack, preserves_flags)),
                            _ => asm!("tilestored [{d} + {s}*1], tmm3", d = in(reg) dst, s = in(reg) stride, options(nostack, preserves_flags)),
                        }
                        if !inside {
                            for r in 0..h {
                                std::ptr::copy_nonoverlapping(out[t].as_ptr().add(r * T), c.add((i + r) * ldc + j), w);
                            }
                        }
                    }
                }
            }
            r0 = r1;
        }
        // Back to the init state, so that context switches of this thread save no tile data.
        asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}
