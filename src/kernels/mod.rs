//! Fused CPU kernels for the training hot path, as candle `CustomOp`s with their own backward.
//!
//! Each fused op computes the same function as a readable composition of candle primitives in
//! [`crate::model`] and [`crate::model::loss`], which stays as the reference: tests compare forward
//! values and gradients of both to 1e-5 relative in f32. The fused ops run only for contiguous f32
//! tensors on the CPU; anything else takes the composed path.
//!
//! - [`attention`]: causal attention with a per-head inverse temperature, straight from the fused
//!   q|k|v projection to the merged heads, without keeping any (T, T) tensor (backward recomputes
//!   the Boltzmann weights from q and k, as flash attention does).
//! - [`layer_norm`]: bias-free LayerNorm in one pass forward and one backward.
//! - [`cross_entropy`]: label-smoothed cross-entropy straight from the logits.
//! - [`adamw`]: the optimizer step in one pass per parameter, moments updated in place.
//! - [`linear`]: the Linear layer's product and both backward products on candle's pool.
//! - [`decode`]: forward-only attention of new queries over a key/value cache, for generation.
//! - [`matvec`]: forward-only products of a few rows with a weight matrix, for generation.
//! - [`rope`]: rotary phases on the q and k thirds of the fused projection, forward and backward
//!   (the inverse rotation) in one pass each.
//! - [`gelu`]: exact (erf) GELU with a vectorised erf, forward and backward in one pass each.
//! - [`mlp`]: the bias-free GELU MLP (two products and the GELU) as one op, its hidden tensors
//!   kept inside it rather than in candle's graph.
//!
//! Work is spread over candle's own CPU thread pool, so the kernels and candle's matmuls never
//! compete for the cores.

pub mod adamw;
pub mod attention;
pub mod bf16;
pub mod cross_entropy;
pub mod decode;
pub mod gelu;
mod head_mm;
pub mod layer_norm;
pub mod linear;
pub mod matvec;
pub mod mlp;
pub mod rope;
pub mod swiglu;
mod simd;

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

/// Which implementation the model's hot path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Fused ops where they apply (contiguous f32 on the CPU), the composition elsewhere.
    #[default]
    Fused,
    /// The readable composition of candle primitives everywhere: the reference.
    Composed,
}

const UNSET: u8 = 0;
const FUSED: u8 = 1;
const COMPOSED: u8 = 2;
static DEFAULT: AtomicU8 = AtomicU8::new(UNSET);

impl Kernels {
    /// The process-wide default: `THERMOFORMER_KERNELS=composed` selects the reference path
    /// (for comparisons and benchmarks), `fused` or nothing the fused one; any other value is
    /// warned about once and treated as `fused`.
    pub fn from_env() -> Self {
        match DEFAULT.load(Ordering::Relaxed) {
            FUSED => Kernels::Fused,
            COMPOSED => Kernels::Composed,
            _ => {
                let k = match std::env::var("THERMOFORMER_KERNELS").as_deref() {
                    Ok("composed") => Kernels::Composed,
                    Ok("fused") | Ok("") | Err(_) => Kernels::Fused,
                    Ok(other) => {
                        crate::progress::note(format!("warning: THERMOFORMER_KERNELS={other:?} is neither fused nor composed; using fused"));
                        Kernels::Fused
                    }
                };
                DEFAULT.store(if k == Kernels::Fused { FUSED } else { COMPOSED }, Ordering::Relaxed);
                k
            }
        }
    }

    /// Whether the fused kernels serve a tensor of this dtype on this device.
    pub fn fused_for(self, t: &Tensor) -> bool {
        self == Kernels::Fused && t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu)
    }
}

/// The whole f32 buffer of a CPU storage, or an error naming the op.
fn f32_data<'a>(s: &'a CpuStorage, op: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v.as_slice()),
        _ => candle_core::bail!("{op}: expects f32, got {:?}", s.dtype()),
    }
}

/// The f32 slice a contiguous CPU tensor's storage holds, or an error naming the op.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = f32_data(s, op)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects a contiguous tensor"),
    }
}

/// The f32 values of a contiguous tensor's storage on the CPU, or an error naming the op.
fn cpu_f32<'a>(s: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(cpu) => f32_slice(cpu, l, op),
        _ => candle_core::bail!("{op}: expects tensors on the CPU"),
    }
}

/// A raw pointer that parallel workers write through, each into its own disjoint part.
struct SendPtr<T = f32>(*mut T);
// Manual impls: a derive would ask T: Clone, which a pointer's copy does not need.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn new(v: &mut [T]) -> Self {
        SendPtr(v.as_mut_ptr())
    }

    fn get(&self) -> *mut T {
        self.0
    }

    /// # Safety
    /// `start..start + len` must lie in the buffer and no other worker may touch it meanwhile.
    // The mutable slice comes from the raw pointer, not from `&self`: each worker takes its own
    // disjoint range, which is what the caller promises.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// `len` values of scratch, not zeroed (as [`written`]'s buffer before its fill).
///
/// # Safety
/// The caller writes each value before it reads it.
unsafe fn scratch(len: usize) -> Vec<f32> {
    written(len, |_| {})
}

/// A vector of `len` f32 that `fill` writes in full, without zeroing it first (the products
/// overwrite their outputs; zeroing them was a memset per op).
///
/// # Safety
/// `fill` must write every one of the `len` values through the pointer it gets.
unsafe fn written(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(len);
    v.set_len(len);
    fill(v.as_mut_ptr() as *mut f32);
    // SAFETY: every value was written (the caller's promise); MaybeUninit<f32> has f32's layout.
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, len, v.capacity())
}

/// Run `f(i)` for every i in 0..n on candle's CPU thread pool.
fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    parallel_for_ranges(n, |range| range.for_each(&f));
}

/// Run `f` over ranges that together cover 0..n on candle's CPU thread pool.
fn parallel_for_ranges(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if n == 1 {
        // One item has no one to share it with: run it here rather than wake the pool and wait at
        // its barrier (a norm of one row in generation, AdamW on a small parameter).
        return f(0..1);
    }
    candle_core::utils::barrier_pool().execute_chunked(n, f);
}

/// `f(i)` for every i in 0..n, computed on candle's CPU thread pool: each value is the same
/// whichever thread computes it. For long vectors of independent values, such as the
/// Boltzmann weights of a 50,257-token vocabulary that each sampled token needs.
pub fn par_map_f64(n: usize, f: impl Fn(usize) -> f64 + Sync) -> Vec<f64> {
    /// Below this many values one thread is faster than a hand-off.
    const SERIAL: usize = 4096;
    if n < SERIAL {
        return (0..n).map(f).collect();
    }
    let mut out = vec![0f64; n];
    let dst = SendPtr::new(&mut out);
    parallel_for_ranges(n, |range| {
        // SAFETY: the ranges are disjoint and inside 0..n.
        let part = unsafe { dst.slice(range.start, range.len()) };
        for (v, i) in part.iter_mut().zip(range) {
            *v = f(i);
        }
    });
    out
}

/// `dst (m, n) = lhs (m, k) . rhs (k, n)` for f32 matrices given by row and column strides, on
/// the calling thread.
///
/// # Safety
/// Every index the strides reach must lie in its buffer, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}
