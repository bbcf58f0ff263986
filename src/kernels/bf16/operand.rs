//! Where a bf16 product's operands are read from: f32 (rounded as they are packed) or bf16 bits,
//! at any row and column strides. Shared by the blocked product ([`super::gemm`]) and AMX's
//! ([`super::amx`]).

/// Where an operand's element (i, j) is: `ptr[i * rs + j * cs]`, as f32 (rounded when packed) or
/// as bf16 bits.
#[derive(Clone, Copy, Debug)]
pub enum Src {
    F32 { ptr: *const f32, rs: usize, cs: usize },
    Bf16 { ptr: *const u16, rs: usize, cs: usize },
}

// SAFETY: a Src is a read-only view that the caller of the unsafe product promises is valid for
// the call; workers only read through it.
unsafe impl Send for Src {}
unsafe impl Sync for Src {}

impl Src {
    /// A row-major f32 matrix with `cols` columns.
    pub fn f32_rows(v: &[f32], cols: usize) -> Self {
        Src::F32 { ptr: v.as_ptr(), rs: cols, cs: 1 }
    }

    /// The transpose of a row-major f32 matrix with `cols` columns.
    pub fn f32_cols(v: &[f32], cols: usize) -> Self {
        Src::F32 { ptr: v.as_ptr(), rs: 1, cs: cols }
    }

    /// The transposed view: element (i, j) is this one's (j, i).
    pub fn t(self) -> Self {
        match self {
            Src::F32 { ptr, rs, cs } => Src::F32 { ptr, rs: cs, cs: rs },
            Src::Bf16 { ptr, rs, cs } => Src::Bf16 { ptr, rs: cs, cs: rs },
        }
    }
}

/// Elements `start, start + stride, ...` of `src` (as many as `dst` holds) as bf16 bits.
#[inline(always)]
pub(super) unsafe fn fetch(src: Src, start: usize, stride: usize, dst: &mut [u16]) {
    match src {
        Src::F32 { ptr, .. } if stride == 1 => super::round::round_slice(std::slice::from_raw_parts(ptr.add(start), dst.len()), dst),
        Src::F32 { ptr, .. } => {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = super::round::to_bf16(*ptr.add(start + i * stride));
            }
        }
        Src::Bf16 { ptr, .. } => {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = *ptr.add(start + i * stride);
            }
        }
    }
}
