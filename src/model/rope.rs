//! Rotary position embeddings (RoPE, Su et al. 2021) as a U(1) phase rotation.
//!
//! Read a head's `D` dimensions as `D/2` complex numbers, z_m = x_{2m} + i x_{2m+1} (adjacent
//! pairs, the original RoFormer / GPT-J layout). At position p, pair m is rotated by the phase
//! p omega_m, with frequencies omega_m = base^(-2m/D) (base 10,000):
//!
//!   z_m -> z_m exp(i p omega_m)
//!
//! Queries and keys are both rotated, so the score of query i against key j is
//!
//!   q_i . k_j = Re sum_m q_m conj(k_m) exp(i (p_i - p_j) omega_m)
//!
//! which depends on the positions only through p_i - p_j: a global phase (shifting every position
//! by the same constant) cancels, as a U(1) gauge transformation does. Pair m is periodic in p with
//! period 2 pi / omega_m; values are not rotated, and nothing is added to the residual stream.

use candle_core::{DType, Device, Result, Tensor};

use crate::config::{ModelConfig, RopeScaling};
use crate::kernels::rope::Tables;

/// The frequency base of the original paper.
pub const BASE: f64 = crate::config::DEFAULT_ROPE_THETA;

/// omega_m = base^(-2m/D) for m = 0..D/2: one angular frequency per pair of dimensions.
pub fn frequencies(head_dim: usize, base: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|m| base.powf(-2.0 * m as f64 / head_dim as f64)).collect()
}

/// cos and sin of the phase p omega_m for a list of positions p (any real numbers).
#[derive(Debug, Clone)]
pub struct Rope {
    /// cos(p omega_m), `(P, D/2)`.
    cos: Tensor,
    /// sin(p omega_m), `(P, D/2)`.
    sin: Tensor,
    /// The same tables on the host, for the fused kernel.
    host: Tables,
}

impl Rope {
    /// Tables for positions 0..positions of a head `head_dim` wide (even), with base 10,000.
    pub fn new(head_dim: usize, positions: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let p: Vec<f64> = (0..positions).map(|p| p as f64).collect();
        Self::at(&frequencies(head_dim, BASE), &p, dtype, dev)
    }

    /// The tables of a model: its first `cfg.rotary_dims()` dimensions per head rotate, at
    /// frequencies theta^(-2m/r) (rescaled as Llama 3 does where the config says so), for
    /// positions 0..context.
    pub fn for_model(cfg: &ModelConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let mut freqs = frequencies(cfg.rotary_dims(), cfg.rope_theta);
        if let Some(s) = cfg.rope_scaling {
            freqs = llama3_scaled(&freqs, s);
        }
        let p: Vec<f64> = (0..cfg.context).map(|p| p as f64).collect();
        Self::at(&freqs, &p, dtype, dev)
    }

    /// Tables for the given frequencies and positions (angles computed in f64).
    pub fn at(freqs: &[f64], positions: &[f64], dtype: DType, dev: &Device) -> Result<Self> {
        let (n, half) = (positions.len(), freqs.len());
        let angles: Vec<f64> = positions.iter().flat_map(|p| freqs.iter().map(move |w| p * w)).collect();
        let host = |f: fn(f64) -> f64| -> Vec<f32> { angles.iter().map(|a| f(*a) as f32).collect() };
        let (cos, sin) = (host(f64::cos), host(f64::sin));
        let table = |v: &[f32]| Tensor::from_slice(v, (n, half), dev)?.to_dtype(dtype);
        Ok(Self { cos: table(&cos)?, sin: table(&sin)?, host: Tables { cos: cos.into(), sin: sin.into(), half } })
    }

    /// Number of positions in the tables.
    pub fn positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Dimensions the tables rotate (2 per frequency).
    pub fn dims(&self) -> usize {
        2 * self.host.half
    }

    /// Rotate `x` `(B, H, T, D)` as if its T rows sat at positions `offset..offset + T`: its
    /// first [`Rope::dims`] dimensions, the rest passing through (partial rotary).
    pub fn apply_bhtd(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let r = self.dims();
        if d > r {
            let rotated = self.apply_bhtd(&x.narrow(3, 0, r)?, offset)?;
            return Tensor::cat(&[rotated, x.narrow(3, r, d - r)?], 3);
        }
        let (cos, sin) = self.window(offset, t)?;
        let shape = (t, d / 2, 1); // broadcast over (B, H, T, D/2, 1)
        rotate(&x.reshape((b, h, t, d / 2, 2))?, &cos.reshape(shape)?, &sin.reshape(shape)?)?.reshape((b, h, t, d))
    }

    /// Rotate `x` `(B, T, H, D)` (heads not yet split off the channels) likewise.
    pub fn apply_bthd(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, t, h, d) = x.dims4()?;
        let (cos, sin) = self.window(offset, t)?;
        let shape = (t, 1, d / 2, 1); // broadcast over (B, T, H, D/2, 1)
        rotate(&x.reshape((b, t, h, d / 2, 2))?, &cos.reshape(shape)?, &sin.reshape(shape)?)?.reshape((b, t, h, d))
    }

    /// The host tables, for [`crate::kernels::rope::rotate_qk`].
    pub fn tables(&self) -> &Tables {
        &self.host
    }

    fn window(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        if offset + t > self.positions() {
            candle_core::bail!("rotary tables cover {} positions, asked for {}..{}", self.positions(), offset, offset + t)
        }
        Ok((self.cos.narrow(0, offset, t)?, self.sin.narrow(0, offset, t)?))
    }
}

/// Llama 3's rescaled frequencies (`rope_type` "llama3" in transformers): wavelengths 2 pi/omega
/// above original_context / low_freq_factor are stretched by `factor`, those below
/// original_context / high_freq_factor kept, and those between interpolated smoothly.
pub fn llama3_scaled(freqs: &[f64], s: RopeScaling) -> Vec<f64> {
    let ctx = s.original_context as f64;
    let (low_wavelen, high_wavelen) = (ctx / s.low_freq_factor, ctx / s.high_freq_factor);
    freqs
        .iter()
        .map(|&w| {
            let wavelen = 2.0 * std::f64::consts::PI / w;
            if wavelen < high_wavelen {
                w
            } else if wavelen > low_wavelen {
                w / s.factor
            } else {
                let smooth = (ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * w / s.factor + smooth * w
            }
        })
        .collect()
}

/// (x0 + i x1) (cos + i sin) for pairs on the last axis of `x` `(..., D/2, 2)`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let last = x.rank() - 1;
    let (x0, x1) = (x.narrow(last, 0, 1)?, x.narrow(last, 1, 1)?); // (..., D/2, 1) each
    let re = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let im = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    Tensor::cat(&[re, im], last)
}
