//! Does AMX's `tdpbf16ps` give the bits of the bf16 product's definition (`vdpbf16ps` chained
//! over the pairs of k, odd element first)? Runs 16 x 16 x 32 tiles of random bf16 through AMX
//! and counts, per range of exponents, the outputs equal to: the odd-first chain (the library's
//! definition), an even-first chain, and the exact sum rounded once.
//!
//! `cargo run --release --example amx_semantics` (x86-64 Linux with AMX-BF16; says so elsewhere)
//!
//! AMX is reached through `asm!` (its intrinsics are not stable Rust); the tile state is asked
//! for with `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, as Linux requires.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;

    use rand::{Rng, SeedableRng};
    use thermoformer::kernels::bf16::micro::{dp_pair, flush};
    use thermoformer::kernels::bf16::round::{to_bf16, to_f32};

    extern "C" {
        fn syscall(n: i64, ...) -> i64;
    }

    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// C (16 x 16 f32) = A (16 rows x 16 pairs) . B (16 pairs x 16 columns), both as u32 pairs,
    /// B in AMX's pair-interleaved rows (the library's packed-B layout).
    unsafe fn tile_product(a: &[u32; 256], b: &[u32; 256], c: &mut [f32; 256]) {
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1; // palette 1
        for t in 0..3 {
            cfg.0[16 + 2 * t] = 64; // bytes per row
            cfg.0[48 + t] = 16; // rows
        }
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr());
        asm!(
            "tileloadd tmm0, [{c} + {s}*1]",
            "tileloadd tmm1, [{a} + {s}*1]",
            "tileloadd tmm2, [{b} + {s}*1]",
            "tdpbf16ps tmm0, tmm1, tmm2",
            "tilestored [{c} + {s}*1], tmm0",
            "tilerelease",
            c = in(reg) c.as_mut_ptr(),
            a = in(reg) a.as_ptr(),
            b = in(reg) b.as_ptr(),
            s = in(reg) 64usize,
        );
    }

    fn even_first(acc: f32, a: u32, b: u32) -> f32 {
        let w = |x: u32| flush(to_f32(x as u16));
        let t = flush(w(a).mul_add(w(b), flush(acc)));
        flush(w(a >> 16).mul_add(w(b >> 16), t))
    }

    pub fn main() {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !flags.split_whitespace().any(|f| f == "amx_bf16") {
            println!("this CPU has no AMX-BF16: nothing to compare");
            return;
        }
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM (0x1023) and XFEATURE_XTILEDATA (18).
        if unsafe { syscall(158, 0x1023i64, 18i64) } != 0 {
            println!("the kernel refused the AMX tile state (arch_prctl): nothing to compare");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        println!("{:>10} {:>8} {:>16} {:>16} {:>16}", "exponents", "outputs", "odd-first chain", "even-first chain", "exact, one round");
        for (lo, hi) in [(-4, 4), (-30, 30), (-68, -58)] {
            let (mut odd, mut even, mut exact, mut total) = (0, 0, 0, 0);
            for _ in 0..200 {
                let mut value = || -> u32 {
                    let e: i32 = rng.random_range(lo..hi);
                    let x = (rng.random::<f32>() + 1.0) * 2f32.powi(e) * if rng.random() { -1.0 } else { 1.0 };
                    to_bf16(x) as u32
                };
                let (mut a, mut b) = ([0u32; 256], [0u32; 256]);
                for x in a.iter_mut().chain(b.iter_mut()) {
                    *x = value() | value() << 16;
                }
                let mut c = [0f32; 256];
                // SAFETY: the CPU has AMX-BF16 and the tile state was granted.
                unsafe { tile_product(&a, &b, &mut c) };
                for m in 0..16 {
                    for n in 0..16 {
                        let (mut o, mut e, mut x) = (0f32, 0f32, 0f64);
                        for p in 0..16 {
                            let (pa, pb) = (a[m * 16 + p], b[p * 16 + n]);
                            o = dp_pair(o, pa, pb);
                            e = even_first(e, pa, pb);
                            let w = |v: u32| flush(to_f32(v as u16)) as f64;
                            x += w(pa) * w(pb) + w(pa >> 16) * w(pb >> 16);
                        }
                        let got = c[m * 16 + n].to_bits();
                        total += 1;
                        odd += (got == o.to_bits()) as usize;
                        even += (got == e.to_bits()) as usize;
                        exact += (got == flush(x as f32).to_bits()) as usize;
                    }
                }
            }
            let pct = |k: usize| format!("{:.1}%", 100.0 * k as f64 / total as f64);
            println!("{:>10} {total:>8} {:>16} {:>16} {:>16}", format!("{lo}..{hi}"), pct(odd), pct(even), pct(exact));
        }
    }
}

fn main() {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    amx::main();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    println!("AMX is x86-64 only: nothing to compare");
}
