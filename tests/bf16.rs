//! The bf16 kernels: rounding, the microkernels against a scalar model of `vdpbf16ps`, the
//! blocked product against an f64 product, and the hardware against the emulation bit for bit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thermoformer::kernels::bf16::gemm::{self, PackedB, Src};
use thermoformer::kernels::bf16::round::{self, to_bf16};
use thermoformer::kernels::bf16::Kernel;

// ---------------------------------------------------------------------------------------------
// A scalar model of the instruction, written apart from the library's (src/kernels/bf16/micro.rs).

fn model_flush(x: f32) -> f32 {
    if x.is_subnormal() {
        if x.is_sign_negative() {
            -0.0
        } else {
            0.0
        }
    } else {
        x
    }
}

fn widen(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// One lane: acc = ftz(fma(daz(a0), daz(b0), ftz(fma(daz(a1), daz(b1), daz(acc))))).
fn model_lane(acc: f32, a: [u16; 2], b: [u16; 2]) -> f32 {
    let d = |x: u16| model_flush(widen(x));
    let t = model_flush(d(a[1]).mul_add(d(b[1]), model_flush(acc)));
    model_flush(d(a[0]).mul_add(d(b[0]), t))
}

/// C = A . B over bf16 bits, row-major, k even or padded with zeros, starting from +0.
fn model_gemm(m: usize, n: usize, k: usize, a: &[u16], b: &[u16]) -> Vec<f32> {
    let at = |i: usize, kk: usize| if kk < k { a[i * k + kk] } else { 0 };
    let bt = |kk: usize, j: usize| if kk < k { b[kk * n + j] } else { 0 };
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k.div_ceil(2) {
                acc = model_lane(acc, [at(i, 2 * p), at(i, 2 * p + 1)], [bt(2 * p, j), bt(2 * p + 1, j)]);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

fn run_gemm(kernel: Kernel, m: usize, n: usize, k: usize, a: &[u16], b: &[u16], parallel: bool) -> Vec<f32> {
    let mut c = vec![f32::NAN; m * n];
    // SAFETY: a is (m, k), b (k, n), c (m, n), row-major.
    unsafe {
        gemm::gemm(
            kernel,
            m,
            n,
            k,
            Src::Bf16 { ptr: a.as_ptr(), rs: k, cs: 1 },
            Src::Bf16 { ptr: b.as_ptr(), rs: n, cs: 1 },
            c.as_mut_ptr(),
            n,
            parallel,
        )
    };
    c
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn available() -> Vec<Kernel> {
    let ks: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
    if !Kernel::Avx512Bf16.available() {
        println!("note: this CPU has no AVX512-BF16: the hardware kernel is not compared here");
    }
    ks
}

/// Random bf16 values of every kind: wide exponents, zeros of both signs, subnormals.
fn random_bf16(rng: &mut ChaCha8Rng, n: usize, exp_range: std::ops::Range<i32>) -> Vec<u16> {
    (0..n)
        .map(|_| match rng.random_range(0..20) {
            0 => 0x0000,
            1 => 0x8000,
            2 => rng.random_range(1..0x80u16) | if rng.random() { 0x8000 } else { 0 }, // subnormal
            _ => {
                let e = rng.random_range(exp_range.clone());
                let x = (rng.random::<f32>() + 1.0) * 2f32.powi(e) * if rng.random() { -1.0 } else { 1.0 };
                to_bf16(x)
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rounding.

#[test]
fn rounding_known_values() {
    // Ties go to even; above half rounds up; NaN becomes quiet; subnormals become signed zeros.
    let cases: [(u32, u16); 12] = [
        (0x3f80_0000, 0x3f80), // 1.0
        (0x3f80_8000, 0x3f80), // 1 + 2^-8, a tie: down to even
        (0x3f81_8000, 0x3f82), // a tie: up to even
        (0x3f80_8001, 0x3f81), // above half
        (0x3f80_7fff, 0x3f80), // below half
        (0x7f7f_ffff, 0x7f80), // the largest finite rounds to infinity
        (0x7f80_0000, 0x7f80), // infinity
        (0x7f80_0001, 0x7fc0), // signalling NaN: made quiet
        (0xffc1_2345, 0xffc1), // quiet NaN: sign and payload kept
        (0x0000_0001, 0x0000), // smallest subnormal: +0
        (0x807f_ffff, 0x8000), // largest negative subnormal: -0
        (0x0080_0000, 0x0080), // smallest normal stays
    ];
    for (x, want) in cases {
        assert_eq!(to_bf16(f32::from_bits(x)), want, "to_bf16({x:#010x})");
    }
}

/// Every f32 bit pattern: the library's vector rounding (the hardware conversion where the CPU
/// has it, AVX2 arithmetic elsewhere) and its scalar formula against `half`'s rounding (an
/// independent implementation that differs only on subnormal inputs, which must give signed
/// zeros).
#[test]
fn rounding_all_inputs() {
    const CHUNK: usize = 1 << 20;
    let mut src = vec![0f32; CHUNK];
    let (mut vec_out, mut scalar_out) = (vec![0u16; CHUNK], vec![0u16; CHUNK]);
    #[cfg(target_arch = "x86_64")]
    let mut avx2_out = vec![0u16; CHUNK];
    for chunk in 0..(1u64 << 32) / CHUNK as u64 {
        for (i, s) in src.iter_mut().enumerate() {
            *s = f32::from_bits((chunk as u32) * CHUNK as u32 + i as u32);
        }
        round::round_slice(&src, &mut vec_out);
        round::round_scalar(&src, &mut scalar_out);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            unsafe { round::x86::round_avx2(&src, &mut avx2_out) };
            assert!(avx2_out == scalar_out, "AVX2 rounding differs in chunk {chunk}");
        }
        if vec_out != scalar_out {
            let i = (0..CHUNK).find(|&i| vec_out[i] != scalar_out[i]).unwrap();
            panic!("vector rounding of {:#010x}: {:#06x}, the formula {:#06x}", src[i].to_bits(), vec_out[i], scalar_out[i]);
        }
        for (x, &got) in src.iter().zip(&scalar_out) {
            let want = if x.is_subnormal() || *x == 0.0 { (x.to_bits() >> 16) as u16 & 0x8000 } else { half::bf16::from_f32(*x).to_bits() };
            if got != want {
                panic!("to_bf16({:#010x}) = {got:#06x}, expected {want:#06x}", x.to_bits());
            }
        }
    }
    if !Kernel::Avx512Bf16.available() {
        println!("note: this CPU has no AVX512-BF16: the hardware conversion was not compared");
    }
}

// ---------------------------------------------------------------------------------------------
// The microkernels.

/// Hand-made lanes where each part of the formula decides the result.
#[test]
fn microkernels_follow_the_formula_on_edge_cases() {
    let one = to_bf16(1.0);
    let p24 = to_bf16(2f32.powi(24));
    let n24 = to_bf16(-(2f32.powi(24)));
    let tiny = to_bf16(2f32.powi(-70));
    // (a pairs, b pairs) for a 1 x 1 product with k = 4; a[0..2] is the first pair.
    // The first pair's odd product meets the accumulator (+0) first, then the even one.
    let cases: Vec<([u16; 4], [u16; 4], f32, &str)> = vec![
        // Pair order: the first pair leaves 1; then odd first gives fma(2^24, 1, 1) = 2^24 (a
        // tie, to even), then -2^24: 0. The even element first would give -2^24 + 1 exactly,
        // then + 2^24: 1.
        ([0, one, n24, p24], [one, one, one, one], 0.0, "pair order"),
        // Flush to zero: 2^-70 * 2^-70 = 2^-140 is subnormal, so 0 (kept without FTZ; in the last
        // pair, since the next step's DAZ would read it as zero anyway).
        ([0, 0, tiny, 0], [0, 0, tiny, 0], 0.0, "flush of a subnormal result"),
        // Denormals are zero: a bf16 subnormal times 2^100 would be 2^-33 if it were read.
        ([0x0001, 0, 0, 0], [to_bf16(2f32.powi(100)), 0, 0, 0], 0.0, "subnormal input read as zero"),
        // Cancellation to exactly zero, then a small term survives.
        ([to_bf16(3.0), to_bf16(-3.0), to_bf16(0.5), 0], [one, one, one, 0], 0.5, "cancellation"),
    ];
    for kernel in available() {
        for (a, b, want, what) in &cases {
            // Column of b: the 4 values as k.
            let got = run_gemm(kernel, 1, 1, 4, a, b, false)[0];
            let model = model_gemm(1, 1, 4, a, b)[0];
            assert_eq!(model.to_bits(), want.to_bits(), "the model itself, {what}");
            assert_eq!(got.to_bits(), want.to_bits(), "{} kernel, {what}: got {got:e}", kernel.name());
        }
    }
}

/// Random lanes of every kind, through every shape of tile the kernels have, against the model.
#[test]
fn microkernels_match_the_model_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let kernels = available();
    // Small exponents make subnormal products and flushed sums; wide ones make cancellations.
    for (round_no, exps) in [(-70..-60), (-8..8), (-30..30)].into_iter().enumerate() {
        for &(m, n, k) in &[(8, 32, 64), (3, 16, 7), (1, 1, 1), (9, 33, 130), (16, 48, 400)] {
            let a = random_bf16(&mut rng, m * k, exps.clone());
            let b = random_bf16(&mut rng, k * n, exps.clone());
            let want = bits(&model_gemm(m, n, k, &a, &b));
            for &kernel in &kernels {
                let got = bits(&run_gemm(kernel, m, n, k, &a, &b, false));
                let bad = (0..m * n).find(|&i| got[i] != want[i]);
                assert!(bad.is_none(), "{} kernel, round {round_no}, ({m}, {n}, {k}): element {:?} {:#010x} vs model {:#010x}", kernel.name(), bad, got[bad.unwrap()], want[bad.unwrap()]);
            }
        }
    }
}

/// The hardware kernel against the emulation over millions of lanes (long k, so each lane runs a
/// long chain through both FMAs), as one more witness that the emulation is exact.
#[test]
fn hardware_equals_emulation_over_millions_of_lanes() {
    if !Kernel::Avx512Bf16.available() {
        println!("note: this CPU has no AVX512-BF16: the hardware kernel was not compared with the emulation");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (m, n, k) = (96, 160, 512); // 15,360 outputs x 256 pairs: 3.9 million lane steps
    for exps in [(-8..8), (-66..-58), (-40..40)] {
        let a = random_bf16(&mut rng, m * k, exps.clone());
        let b = random_bf16(&mut rng, k * n, exps);
        let hw = bits(&run_gemm(Kernel::Avx512Bf16, m, n, k, &a, &b, true));
        if Kernel::Avx512.available() {
            assert!(hw == bits(&run_gemm(Kernel::Avx512, m, n, k, &a, &b, true)), "AVX-512 emulation differs from vdpbf16ps");
        }
        if Kernel::Avx2.available() {
            assert!(hw == bits(&run_gemm(Kernel::Avx2, m, n, k, &a, &b, true)), "AVX2 emulation differs from vdpbf16ps");
        }
        assert!(hw == bits(&run_gemm(Kernel::Scalar, m, n, k, &a, &b, false)), "scalar kernel differs from vdpbf16ps");
    }
}

// ---------------------------------------------------------------------------------------------
// The blocked product.

/// Odd shapes (m, n, k), each run with A and B stored plainly or transposed.
const ODD_SHAPES: [(usize, usize, usize); 8] = [(1, 1, 1), (5, 17, 3), (8, 16, 2), (33, 31, 65), (70, 129, 385), (200, 96, 1000), (1, 300, 777), (47, 80, 64)];

/// An operand pair from f32, stored transposed where asked, and its bf16-rounded elements.
struct Operands {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Operands {
    fn random(rng: &mut ChaCha8Rng, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Self {
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Operands { m, n, k, ta, tb, a, b }
    }

    /// A's view: element (i, kk) at kk * m + i when stored transposed.
    fn sa(&self) -> Src {
        let (m, k) = (self.m, self.k);
        if self.ta { Src::F32 { ptr: self.a.as_ptr(), rs: 1, cs: m } } else { Src::F32 { ptr: self.a.as_ptr(), rs: k, cs: 1 } }
    }

    fn sb(&self) -> Src {
        let (n, k) = (self.n, self.k);
        if self.tb { Src::F32 { ptr: self.b.as_ptr(), rs: 1, cs: k } } else { Src::F32 { ptr: self.b.as_ptr(), rs: n, cs: 1 } }
    }

    /// Every output within gamma_k sum |a_i b_i| of the f64 product of the bf16-rounded operands.
    fn assert_within_bound(&self, c: &[f32], what: &str) {
        let (m, n, k, ta, tb) = (self.m, self.n, self.k, self.ta, self.tb);
        let a_at = |i: usize, kk: usize| round::to_f32(to_bf16(if ta { self.a[kk * m + i] } else { self.a[i * k + kk] })) as f64;
        let b_at = |kk: usize, j: usize| round::to_f32(to_bf16(if tb { self.b[j * k + kk] } else { self.b[kk * n + j] })) as f64;
        let u = 2f64.powi(-24);
        let gamma = k as f64 * u / (1.0 - k as f64 * u);
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut abs) = (0f64, 0f64);
                for kk in 0..k {
                    exact += a_at(i, kk) * b_at(kk, j);
                    abs += (a_at(i, kk) * b_at(kk, j)).abs();
                }
                let err = (c[i * n + j] as f64 - exact).abs();
                assert!(err <= gamma * abs, "({m},{n},{k}) ta={ta} tb={tb} {what}: C[{i}][{j}] = {} vs {exact}, bound {}", c[i * n + j], gamma * abs);
            }
        }
    }
}

/// Odd shapes and transposed operands from f32: within gamma_k sum |a_i b_i| of the f64 product
/// of the bf16-rounded operands; the same bits from every kernel, threaded or not, and from a
/// B packed beforehand.
#[test]
fn gemm_matches_f64_at_odd_shapes_and_transposes() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let kernels = available();
    for &(m, n, k) in &ODD_SHAPES {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ops = Operands::random(&mut rng, m, n, k, ta, tb);
            let (sa, sb) = (ops.sa(), ops.sb());
            let mut reference: Option<Vec<u32>> = None;
            for &kernel in &kernels {
                for parallel in [false, true] {
                    let mut c = vec![f32::NAN; m * n];
                    unsafe { gemm::gemm(kernel, m, n, k, sa, sb, c.as_mut_ptr(), n, parallel) };
                    ops.assert_within_bound(&c, kernel.name());
                    match &reference {
                        None => reference = Some(bits(&c)),
                        Some(r) => assert!(*r == bits(&c), "({m},{n},{k}) {} parallel={parallel} differs from the first kernel", kernel.name()),
                    }
                }
            }
            if !tb {
                // B packed once, as a weight is: the same bits.
                let packed = unsafe { PackedB::new(sb, k, n) };
                let mut c = vec![f32::NAN; m * n];
                unsafe { gemm::gemm_packed(kernels[0], m, sa, &packed, c.as_mut_ptr(), n, true) };
                assert!(reference.as_ref() == Some(&bits(&c)), "({m},{n},{k}) the packed B differs");
            }
        }
    }
}

/// AMX's tiles (only by name, not reproducible): at the same odd shapes and transposes, and at
/// shapes with whole and partial tiles, blocks and k-chunks, every output is written and within
/// the same bound of the f64 product, threaded or not, with B packed per call or beforehand;
/// threads split only whole blocks, so the two runs agree bit for bit.
#[test]
fn amx_product_is_within_the_bound_at_odd_shapes() {
    if !Kernel::Amx.available() {
        println!("note: this CPU (or OS) has no AMX-BF16 tiles: the AMX kernel is not tested here");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let shapes = ODD_SHAPES.iter().copied().chain([(16, 16, 32), (32, 32, 32), (300, 260, 96), (64, 48, 40), (513, 70, 1536)]);
    for (m, n, k) in shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ops = Operands::random(&mut rng, m, n, k, ta, tb);
            let (sa, sb) = (ops.sa(), ops.sb());
            let mut first: Option<Vec<u32>> = None;
            for parallel in [false, true] {
                let mut c = vec![f32::NAN; m * n];
                unsafe { gemm::gemm(Kernel::Amx, m, n, k, sa, sb, c.as_mut_ptr(), n, parallel) };
                ops.assert_within_bound(&c, "amx");
                match &first {
                    None => first = Some(bits(&c)),
                    Some(r) => assert!(*r == bits(&c), "({m},{n},{k}) amx threaded differs"),
                }
            }
            let packed = unsafe { PackedB::new(sb, k, n) };
            let mut c = vec![f32::NAN; m * n];
            unsafe { gemm::gemm_packed(Kernel::Amx, m, sa, &packed, c.as_mut_ptr(), n, true) };
            assert!(first.as_ref() == Some(&bits(&c)), "({m},{n},{k}) amx with B packed beforehand differs");
        }
    }
}

/// THERMOFORMER_BF16_KERNEL's names, and the loud refusal of one this CPU lacks.
#[test]
fn kernel_names_parse_and_unavailable_ones_are_refused() {
    assert_eq!(Kernel::parse("scalar"), Ok(Kernel::Scalar));
    assert_eq!(Kernel::parse("auto"), Ok(Kernel::best()));
    assert!(Kernel::best().reproducible(), "auto must never pick AMX, whose bits differ");
    assert!(Kernel::parse("avx9000").unwrap_err().contains("names no bf16 kernel"));
    for k in Kernel::ALL.into_iter().chain([Kernel::Amx]) {
        match Kernel::parse(k.name()) {
            Ok(got) => assert!(k.available() && got == k),
            Err(e) => assert!(!k.available() && e.contains("this CPU lacks"), "{e}"),
        }
    }
}
