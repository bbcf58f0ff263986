//! Does AMX's `tdpbf16ps` give the bits of the bf16 product's definition (`vdpbf16ps` chained
//! over the pairs of k, odd element first)? Runs 16 x 16 x 32 tiles of random bf16 through AMX
//! and counts, per range of exponents, the outputs equal to: the odd-first chain (the library's
//! definition), an even-first chain, and the exact sum rounded once.
//!
//! `cargo run --release --example amx_semantics` (x86-64 Linux with AMX-BF16; says so elsewhere)
//!
//! The tiles run through the library's AMX kernel (`THERMOFORMER_BF16_KERNEL=amx`'s), whose one
//! 16 x 16 block over 32 values of k is a single `tdpbf16ps`.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use rand::{Rng, SeedableRng};
    use thermoformer::kernels::bf16::gemm::{self, Src};
    use thermoformer::kernels::bf16::micro::{dp_pair, flush};
    use thermoformer::kernels::bf16::round::{to_bf16, to_f32};
    use thermoformer::kernels::bf16::Kernel;

    /// C (16 x 16 f32) = A (16 rows x 16 pairs) . B (16 pairs x 16 columns), both as u32 pairs
    /// (even element in the low half), through one AMX tile product.
    fn tile_product(a: &[u32; 256], b: &[u32; 256], c: &mut [f32; 256]) {
        // As bf16 matrices: A (16, 32) and B (32, 16), row-major.
        let (mut a16, mut b16) = ([0u16; 512], [0u16; 512]);
        for m in 0..16 {
            for p in 0..16 {
                a16[m * 32 + 2 * p] = a[m * 16 + p] as u16;
                a16[m * 32 + 2 * p + 1] = (a[m * 16 + p] >> 16) as u16;
                b16[2 * p * 16 + m] = b[p * 16 + m] as u16;
                b16[(2 * p + 1) * 16 + m] = (b[p * 16 + m] >> 16) as u16;
            }
        }
        // SAFETY: AMX is available (checked by the caller); a16, b16 and c hold the shapes named.
        unsafe {
            gemm::gemm(
                Kernel::Amx,
                16,
                16,
                32,
                Src::Bf16 { ptr: a16.as_ptr(), rs: 32, cs: 1 },
                Src::Bf16 { ptr: b16.as_ptr(), rs: 16, cs: 1 },
                c.as_mut_ptr(),
                16,
                false,
            )
        }
    }

    fn even_first(acc: f32, a: u32, b: u32) -> f32 {
        let w = |x: u32| flush(to_f32(x as u16));
        let t = flush(w(a).mul_add(w(b), flush(acc)));
        flush(w(a >> 16).mul_add(w(b >> 16), t))
    }

    pub fn main() {
        if !Kernel::Amx.available() {
            println!("this CPU (or OS) has no AMX-BF16 tiles: nothing to compare");
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
                tile_product(&a, &b, &mut c);
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
