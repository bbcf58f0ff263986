//! One head's pieces of the fused attention: the shape of a call ([`Dims`]), the per-thread
//! scratch, the per-head products (f32, the bf16 tiles, AMX's causal blocks) and the Boltzmann
//! weights, shared by the forward ([`super`]) and the backward ([`super::backward`]).

use std::cell::RefCell;

use candle_core::{Result, Shape};

use super::Heads;
use crate::kernels::bf16::gemm::{gemm, gemm_packed_prefix_amx, PackedB, Src};
use crate::kernels::bf16::Kernel;
use crate::kernels::head_mm::{self, Mat};
use crate::kernels::{matmul, simd};

/// `dst (m, n) = lhs (m, k) . rhs (k, n)` on the calling thread, in f32 or, given a bf16 kernel,
/// with bf16 operands.
///
/// # Safety
/// As [`matmul`], with a column stride of 1 for `dst`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn mm(
    bf16: Option<Kernel>,
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
    match bf16 {
        None => matmul(m, n, k, dst, (dst_rs, dst_cs), lhs, (lhs_rs, lhs_cs), rhs, (rhs_rs, rhs_cs)),
        Some(kernel) => {
            debug_assert_eq!(dst_cs, 1);
            let a = Src::F32 { ptr: lhs, rs: lhs_rs, cs: lhs_cs };
            let b = Src::F32 { ptr: rhs, rs: rhs_rs, cs: rhs_cs };
            gemm(kernel, m, n, k, a, b, dst, dst_rs, false)
        }
    }
}

/// Queries per block of the causal AMX products: one row of tile pairs.
pub(super) const AMX_ROWS: usize = 32;
/// Positions from which the forward's products run on AMX ([`Dims::amx_heads`]).
pub(super) const AMX_MIN_T: usize = 128;

thread_local! {
    /// Per-thread scratch: one head's scaled queries, weights and their gradients.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Shape of one call: batch, positions, query heads, key/value heads, head size, window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) h: usize,
    pub(super) kv: usize,
    pub(super) d: usize,
    pub(super) window: Option<usize>,
}

impl Dims {
    pub(super) fn of(shape: &Shape, heads: Heads) -> Result<Self> {
        let (b, t, w) = shape.dims3()?;
        let Heads { n_head: h, n_kv_head: kv, window } = heads;
        Ok(Dims { b, t, h, kv, d: w / (h + 2 * kv), window })
    }

    /// Width of the merged output.
    pub(super) fn c(&self) -> usize {
        self.h * self.d
    }

    /// Row stride of qkv: H queries, K keys and K values.
    pub(super) fn rs(&self) -> usize {
        (self.h + 2 * self.kv) * self.d
    }

    /// Query heads per key/value head.
    pub(super) fn group(&self) -> usize {
        self.h / self.kv
    }

    /// Offset of head `h`'s query in batch row `b` of qkv.
    pub(super) fn q_at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.rs() + h * self.d
    }

    /// Offset of the key that query head `h` reads (its values at + K D).
    pub(super) fn k_at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.rs() + (self.h + h / self.group()) * self.d
    }

    /// Offset of head `h` in batch row `b` of the merged output.
    pub(super) fn y_at(&self, b: usize, h: usize) -> usize {
        b * self.t * self.c() + h * self.d
    }

    /// The first key query `i` sees.
    pub(super) fn first_key(&self, i: usize) -> usize {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))
    }

    /// One past the last query that sees key `j`.
    pub(super) fn query_end(&self, j: usize) -> usize {
        self.window.map_or(self.t, |w| (j + w).min(self.t))
    }

    /// Whether the f32 products of a call with this bf16 kernel (None: f32) run on
    /// [`head_mm`]: over the causal part only, with gemm's bits.
    pub(super) fn by_tiles(&self, bf16: Option<Kernel>) -> bool {
        bf16.is_none() && head_mm::applies(self.t, self.d)
    }

    /// Whether the bf16 products of a call with this kernel run on [`head_mm`]'s bf16 tiles
    /// (the bf16 GEMM's bits, over the causal part only): for the AVX-512 kernels, whose
    /// emulation the tiles are (a forced AVX2 or scalar kernel keeps the GEMM), and for AMX's,
    /// whose per-head GEMMs would pack every head's operands and compute the masked half too
    /// (AMX's forward from [`AMX_MIN_T`] positions goes to [`Dims::amx_heads`] first).
    pub(super) fn bf16_tiles(&self, bf16: Option<Kernel>) -> bool {
        matches!(bf16, Some(Kernel::Avx512 | Kernel::Avx512Bf16 | Kernel::Amx)) && head_mm::applies_bf16()
    }

    /// Whether those bf16 tiles run `vdpbf16ps` itself rather than its two-FMA emulation (the
    /// same bits): with the `avx512bf16` kernel, which `auto` picks where it is the faster.
    pub(super) fn bf16_hardware(&self, bf16: Option<Kernel>) -> bool {
        bf16 == Some(Kernel::Avx512Bf16)
    }

    /// Whether the forward's bf16 products (q.k and alpha.v) run on AMX's tiles by blocks of
    /// [`AMX_ROWS`] queries, each against the keys up to its last: with the AMX kernel, from
    /// [`AMX_MIN_T`] positions (below, the per-head packing costs more than the tiles save;
    /// the backward's products stay on [`head_mm`]'s tiles).
    pub(super) fn amx_heads(&self, bf16: Option<Kernel>) -> bool {
        bf16 == Some(Kernel::Amx) && self.t >= AMX_MIN_T
    }

    /// Positions and head width rounded up to even: the padded depths of the bf16 tiles.
    pub(super) fn tp(&self) -> usize {
        self.t.next_multiple_of(2)
    }

    pub(super) fn dp(&self) -> usize {
        self.d.next_multiple_of(2)
    }

    /// The scratch [`weights`] works in: the keys' transpose, and for the bf16 tiles the rounded
    /// queries and transposed keys.
    pub(super) fn weights_work(&self) -> usize {
        self.t * self.d + 2 * self.tp() * self.dp()
    }
}

/// The scaled queries `qs (T, D)` of the head at `q0`: q'_i = scale q_i.
pub(super) fn scaled_queries(qkv: &[f32], dims: Dims, q0: usize, scale: f32, qs: &mut [f32]) {
    let (rs, d) = (dims.rs(), dims.d);
    for i in 0..dims.t {
        let q = &qkv[q0 + i * rs..q0 + i * rs + d];
        for (dst, &v) in qs[i * d..(i + 1) * d].iter_mut().zip(q) {
            *dst = scale * v;
        }
    }
}

/// Scaled queries `qs (T, D)` of one head and its weights `a (T, T)`: alpha, zero for keys the
/// query does not see. `work`: [`Dims::weights_work`] values of scratch.
///
/// # Safety
/// `qkv` must be the whole buffer of `dims`, `q0` and `k0` offsets from it.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weights(bf16: Option<Kernel>, qkv: &[f32], dims: Dims, q0: usize, k0: usize, scale: f32, qs: &mut [f32], a: &mut [f32], work: &mut [f32]) {
    let Dims { t, d, .. } = dims;
    let rs = dims.rs();
    scaled_queries(qkv, dims, q0, scale, qs);
    // beta_h s_ij = q'_i . k_j: (T, D) x (D, T)
    let (kt, rest) = work.split_at_mut(t * d);
    if dims.by_tiles(bf16) {
        // Keys up to the tile's last query only; the rest of each row is zeroed below.
        head_mm::transpose(qkv[k0..].as_ptr(), rs, t, d, kt);
        head_mm::product(t, t, a.as_mut_ptr(), t, Mat { ptr: qs.as_ptr(), rs: d, cs: 1 }, kt.as_ptr(), t, |_, _| 0..d, |i1| i1);
    } else if dims.amx_heads(bf16) {
        // k^T (D, T) packed once; each block of queries against the keys up to its last (the
        // softmax below zeroes the rest of each row).
        let kt = PackedB::new(Src::F32 { ptr: qkv.as_ptr().add(k0), rs: 1, cs: rs }, d, t);
        for r0 in (0..t).step_by(AMX_ROWS) {
            let r1 = (r0 + AMX_ROWS).min(t);
            gemm_packed_prefix_amx(r1 - r0, r1, d, Src::F32 { ptr: qs.as_ptr().add(r0 * d), rs: d, cs: 1 }, &kt, a.as_mut_ptr().add(r0 * t), t);
        }
    } else if dims.bf16_tiles(bf16) {
        let (tp, dp) = (dims.tp(), dims.dp());
        let (qr, ktr) = rest.split_at_mut(tp * dp);
        head_mm::transpose(qkv[k0..].as_ptr(), rs, t, d, kt);
        head_mm::round_rows(qs, d, t, d, tp, dp, qr);
        head_mm::round_rows(kt, t, d, t, dp, tp, ktr);
        head_mm::product_bf16(t, t, a.as_mut_ptr(), t, Mat { ptr: qr.as_ptr(), rs: dp, cs: 1 }, ktr.as_ptr(), tp, |_, _| 0..d, |i1| i1, dims.bf16_hardware(bf16));
    } else {
        mm(bf16, t, t, d, a.as_mut_ptr(), (t, 1), qs.as_ptr(), (d, 1), qkv.as_ptr().add(k0), (1, rs));
    }
    for i in 0..t {
        let lo = dims.first_key(i);
        simd::softmax_row(&mut a[i * t + lo..(i + 1) * t], i + 1 - lo);
        a[i * t..i * t + lo].fill(0.0);
    }
}
