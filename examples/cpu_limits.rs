//! The two limits this CPU puts on the bf16 path, measured directly:
//!
//! - instruction throughput per core: a register-only loop of 28 independent `vdpbf16ps` (zmm)
//!   against the same loop of `vfmadd231ps` (zmm), as instructions/s and GFLOP/s;
//! - AMX's `tdpbf16ps` per core (where the CPU and OS have the tiles): register-only, and with
//!   the four 1 KiB tile loads from L1 per four products that the library's 2 x 2 AMX kernel
//!   issues (`THERMOFORMER_BF16_KERNEL=amx`);
//! - memory read bandwidth: a vectorised sum over 512 MB on 1 and 2 threads, which bounds
//!   batch-1 generation (every weight is read once per token).
//!
//! `cargo run --release --example cpu_limits`
use std::time::Instant;

const ACC: usize = 28;
const ROUNDS: usize = 20_000_000;

#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::x86_64::*;

    use super::{ACC, ROUNDS};

    /// # Safety
    /// AVX512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16() -> f32 {
        let mut acc = [_mm512_setzero_ps(); ACC];
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        for _ in 0..ROUNDS {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }

    /// # Safety
    /// AVX512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma() -> f32 {
        let mut acc = [_mm512_setzero_ps(); ACC];
        let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_9));
        for _ in 0..ROUNDS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }
}

/// AMX's tile products per core: GFLOP/s of `tdpbf16ps` on four accumulator tiles, with no
/// loads, then with the 2 x 2 kernel's loads (two A and two B tiles, 1 KiB each, from L1) per four
/// products. The caller checks that the tiles are available (the library's `Kernel::Amx`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;

    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// (register-only, with loads) GFLOP/s on the calling thread.
    pub fn rates() -> (f64, f64) {
        const N: usize = 2_000_000;
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = 16;
        }
        let tiles = vec![0x3f80_3f80u32; 512]; // two tiles of bf16 ones
        let flops = (N * 4 * 16 * 16 * 32 * 2) as f64;
        // SAFETY: the caller checked that AMX-BF16 is available and the tile state granted; every
        // load reads inside `tiles`.
        unsafe {
            let (p, q, s) = (tiles.as_ptr(), tiles.as_ptr().add(256), 64usize);
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr());
            asm!(
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm5, [{q} + {s}*1]",
                "tileloadd tmm6, [{p} + {s}*1]", "tileloadd tmm7, [{q} + {s}*1]",
                p = in(reg) p, q = in(reg) q, s = in(reg) s,
            );
            let t = std::time::Instant::now();
            for _ in 0..N {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6", "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem),
                );
            }
            let bare = flops / t.elapsed().as_secs_f64() / 1e9;
            let t = std::time::Instant::now();
            for _ in 0..N {
                asm!(
                    "tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm6, [{p} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{q} + {s}*1]", "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{q} + {s}*1]", "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    p = in(reg) p, q = in(reg) q, s = in(reg) s,
                    options(nostack, readonly),
                );
            }
            let loaded = flops / t.elapsed().as_secs_f64() / 1e9;
            asm!("tilerelease");
            (bare, loaded)
        }
    }
}

/// A sum the compiler vectorises, in AVX-512 where the CPU has it (so the loads, not the adds,
/// are the limit).
fn sum(c: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(c: &[f32]) -> f32 {
            sum_plain(c)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { wide(c) };
        }
    }
    sum_plain(c)
}

#[inline(always)]
fn sum_plain(c: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    for ch in c.chunks_exact(32) {
        for i in 0..32 {
            acc[i] += ch[i];
        }
    }
    acc.iter().sum()
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let per = |secs: f64, flops_per: f64| {
            let instr = (ACC * ROUNDS) as f64 / secs;
            format!("{:.2} G instructions/s, {:.0} GFLOP/s per core", instr / 1e9, instr * flops_per / 1e9)
        };
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            let t = Instant::now();
            std::hint::black_box(unsafe { loops::dpbf16() });
            println!("vdpbf16ps zmm:   {}", per(t.elapsed().as_secs_f64(), 64.0));
        } else {
            println!("vdpbf16ps zmm:   this CPU has no AVX512-BF16");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            let t = Instant::now();
            std::hint::black_box(unsafe { loops::fma() });
            println!("vfmadd231ps zmm: {}", per(t.elapsed().as_secs_f64(), 32.0));
        } else {
            println!("vfmadd231ps zmm: this CPU has no AVX-512");
        }
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        if thermoformer::kernels::bf16::Kernel::Amx.available() {
            let (bare, loaded) = amx::rates();
            println!("tdpbf16ps (AMX): {bare:.0} GFLOP/s per core register-only, {loaded:.0} with the 2 x 2 kernel's tile loads");
        } else {
            println!("tdpbf16ps (AMX): this CPU (or OS) has no AMX-BF16 tiles");
        }
    }
    let n = 128 << 20; // 512 MB of f32
    let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    for threads in [1usize, 2] {
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                let s: f32 = std::thread::scope(|sc| {
                    let hs: Vec<_> = v.chunks(n / threads).map(|c| sc.spawn(move || sum(c))).collect();
                    hs.into_iter().map(|h| h.join().expect("a reader thread")).sum()
                });
                std::hint::black_box(s);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        println!("memory read, {threads} thread(s): {:.1} GB/s (best of 5)", (n * 4) as f64 / best / 1e9);
    }
}
