//! bf16 products with f32 accumulation whose bits are the same on every CPU.
//!
//! - [`round`]: f32 -> bf16 rounding to nearest-even, as `vcvtne2ps2bf16` rounds.
//! - [`micro`]: the microkernels: `vdpbf16ps` itself where the CPU has AVX512-BF16, exact
//!   emulations of it in AVX-512F and in AVX2/FMA, and the scalar formula.
//! - [`operand`]: where a product's operands are read from (f32 or bf16 bits, any strides).
//! - [`gemm`]: the blocked product with packed operands, split over candle's thread pool.
//! - [`ops`]: the candle ops the model's bf16 path runs (Linear layers with their backward).
//! - [`amx`]: the product on AMX tiles, fast where the CPU has them and not reproducible.
//!
//! `THERMOFORMER_BF16_KERNEL` = `avx512bf16`, `avx512`, `avx2` or `scalar` forces a microkernel
//! (an error where the CPU lacks it); unset or `auto` takes the fastest this CPU has. Every choice
//! gives the same bits, only at a different speed. `amx` is the one exception: asked for by name
//! only, it runs AMX's tiles, whose accumulation no other kernel reproduces.

pub mod amx;
pub mod gemm;
pub mod micro;
pub mod operand;
pub mod ops;
pub mod round;

use std::sync::OnceLock;

/// Where `precision` is bf16, the process's kernel must exist: a usage error naming
/// `THERMOFORMER_BF16_KERNEL`'s problem otherwise, before any work starts. AMX's kernel is
/// announced on stderr once, since its results are not the reproducible ones.
pub fn require(precision: crate::config::Precision) -> Result<(), crate::error::UsageError> {
    match precision {
        crate::config::Precision::F32 => Ok(()),
        crate::config::Precision::Bf16 => {
            let k = Kernel::from_env().map_err(crate::error::UsageError)?;
            if !k.reproducible() {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!("note: bf16 on AMX tiles (THERMOFORMER_BF16_KERNEL=amx): faster, but not the bits of bf16 runs on other kernels or CPUs")
                });
            }
            Ok(())
        }
    }
}

/// A bf16 microkernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` (AVX512F + AVX512-BF16).
    Avx512Bf16,
    /// The emulation: f32 FMAs in AVX-512F under MXCSR's flush-to-zero and denormals-are-zero.
    Avx512,
    /// The emulation: f32 FMAs in AVX2 under MXCSR's flush-to-zero and denormals-are-zero.
    Avx2,
    /// The formula, one element at a time (any CPU).
    Scalar,
    /// AMX's `tdpbf16ps` tiles: not the bits of the others, so only by name ([`amx`]).
    Amx,
}

impl Kernel {
    /// Every kernel, in the order `auto` prefers them (the two AVX-512 kernels are timed against
    /// each other where both run: see [`Kernel::best`]).
    pub const ALL: [Kernel; 4] = [Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2, Kernel::Scalar];

    /// The name `THERMOFORMER_BF16_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "avx512bf16",
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
            Kernel::Amx => "amx",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            Kernel::Scalar => true,
            Kernel::Amx => amx::available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether it gives the bits every other kernel gives (all but [`Kernel::Amx`]).
    pub fn reproducible(self) -> bool {
        self != Kernel::Amx
    }

    /// Whether it emulates `vdpbf16ps` with f32 FMAs (and so needs MXCSR's FTZ and DAZ).
    pub fn emulated(self) -> bool {
        matches!(self, Kernel::Avx512 | Kernel::Avx2)
    }

    /// Whether it reads A packed wide, each bf16 pair as two f32 ([`gemm`]'s packing).
    pub fn wide_a(self) -> bool {
        self == Kernel::Avx512
    }

    /// Whether its tiles are 32 columns wide (two B strips), as the AVX-512 kernels' are.
    pub fn avx512(self) -> bool {
        matches!(self, Kernel::Avx512Bf16 | Kernel::Avx512)
    }

    /// The fastest kernel this CPU has. Where both AVX-512 kernels run, each is timed once per
    /// process on one tile (about 0.1 ms in all) and the faster kept: `vdpbf16ps` retires at half
    /// the FMA rate on some Intel Xeons (so two FMAs per pair win there) and at twice it on AMD's
    /// Zen 4. Both give the same bits, so the choice only changes the speed.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let first = Kernel::ALL.into_iter().find(|k| k.available()).unwrap_or(Kernel::Scalar);
            if first == Kernel::Avx512Bf16 && Kernel::Avx512.available() {
                gemm::faster_of(Kernel::Avx512Bf16, Kernel::Avx512)
            } else {
                first
            }
        })
    }

    /// The kernel `name` names, if this CPU has it.
    pub fn parse(name: &str) -> Result<Kernel, String> {
        match name {
            "" | "auto" => Ok(Kernel::best()),
            _ => {
                let k = Kernel::ALL.into_iter().chain([Kernel::Amx]).find(|k| k.name() == name).ok_or_else(|| {
                    format!("THERMOFORMER_BF16_KERNEL={name:?} names no bf16 kernel: use auto, avx512bf16, avx512, avx2, scalar or amx")
                })?;
                if !k.available() {
                    return Err(format!(
                        "THERMOFORMER_BF16_KERNEL={name} asks for {}, which this CPU lacks (it has {})",
                        k.describe(),
                        Kernel::best().name()
                    ));
                }
                Ok(k)
            }
        }
    }

    /// What the kernel needs, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "the AVX512-BF16 instruction vdpbf16ps",
            Kernel::Avx512 => "AVX-512F",
            Kernel::Avx2 => "AVX2 and FMA",
            Kernel::Scalar => "nothing",
            Kernel::Amx => "AMX-BF16 tiles (granted by the OS)",
        }
    }

    /// The process's kernel: `THERMOFORMER_BF16_KERNEL`, read once, or the fastest available.
    pub fn from_env() -> Result<Kernel, String> {
        static CHOSEN: OnceLock<Result<Kernel, String>> = OnceLock::new();
        CHOSEN.get_or_init(|| Kernel::parse(std::env::var("THERMOFORMER_BF16_KERNEL").unwrap_or_default().trim())).clone()
    }
}
