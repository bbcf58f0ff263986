//! Attention rows read as canonical ensembles.
//!
//! Query i of head h is a small system whose states are the keys j <= i, with energies
//! E_ij = -s_ij at inverse temperature beta_h. Its Boltzmann distribution is the attention row
//! alpha_ij = exp(-beta E_ij) / Z_i, and the usual quantities follow:
//!
//! ```text
//! ln Z = ln sum_j exp(-beta E_j)          free energy F = -ln Z / beta
//! <E>  = sum_j alpha_j E_j                 mean energy
//! H    = -sum_j alpha_j ln alpha_j         entropy (nats); H = beta <E> + ln Z
//! C    = beta^2 Var_alpha(E) >= 0          heat capacity, = dH/d ln T
//! ```
//!
//! [`RowStats::from_energies`] computes them from energies alone. [`head_summaries`] averages the
//! rows the model itself produced ([`crate::model::AttnStats`]): H and the weights of `<E>` and C
//! come from alpha as the attention applied it (the fused kernel's own weights on the CPU), while
//! the energies and ln Z come from scores recomputed apart from alpha.
//!
//! What the residual verifies. For any distribution a over the keys,
//!
//! ```text
//! beta <E>_a + ln Z - H(a) = sum_j a_j ln(a_j / p_j) = KL(a || p),   p_j = exp(-beta E_j) / Z
//! ```
//!
//! so `identity_residual`, the largest `|H - (beta <E> + ln Z)|` over the rows, is the largest
//! KL divergence (nats) of the applied weights from the Boltzmann distribution of the recomputed
//! scores at the reported T_h. It is zero (up to f32 rounding, about 1e-6) exactly when the
//! attention the model runs is that Boltzmann distribution; a kernel that applied another
//! temperature, a wrong mask or stale scores would show up in it. It does not check the scores
//! themselves: both sides read the same q and k projections.

use anyhow::Result;
use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::model::AttnStats;

/// Thermodynamics of one attention row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RowStats {
    /// ln Z.
    pub ln_z: f64,
    /// Entropy H of the row, nats.
    pub entropy: f64,
    /// Mean energy `<E>` under the row.
    pub mean_energy: f64,
    /// Heat capacity beta^2 Var(E).
    pub heat_capacity: f64,
}

impl RowStats {
    /// Statistics of the Boltzmann distribution over states with `energies` at inverse
    /// temperature `beta`, computed stably (shifted by the lowest energy).
    pub fn from_energies(energies: &[f64], beta: f64) -> Self {
        let e_min = energies.iter().copied().fold(f64::INFINITY, f64::min);
        let weights: Vec<f64> = energies.iter().map(|e| (-beta * (e - e_min)).exp()).collect();
        let z_shifted: f64 = weights.iter().sum();
        let ln_z = z_shifted.ln() - beta * e_min;
        let p: Vec<f64> = weights.iter().map(|w| w / z_shifted).collect();
        let entropy = entropy(&p);
        let mean_energy: f64 = p.iter().zip(energies).map(|(x, e)| x * e).sum();
        let var: f64 = p.iter().zip(energies).map(|(x, e)| x * (e - mean_energy).powi(2)).sum();
        Self { ln_z, entropy, mean_energy, heat_capacity: beta * beta * var }
    }
}

/// Entropy -sum p ln p of a probability row (0 ln 0 = 0).
pub fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).fold(0.0, |h, x| h - x * x.ln()) // +0.0 for a point mass
}

/// One head's rows, measured from the model's own tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRows {
    /// Inverse temperature of the head.
    pub beta: f64,
    /// Per (sequence, query) row, in order: keys allowed, and the row's statistics, with H from
    /// the applied alpha and ln Z from the recomputed scores.
    pub rows: Vec<(usize, RowStats)>,
}

/// Every head's rows for one layer's [`AttnStats`] (all sequences of the batch, all queries).
pub fn head_rows(stats: &AttnStats) -> Result<Vec<HeadRows>> {
    let alpha = stats.alpha.to_dtype(DType::F64)?.to_vec3_per_head()?;
    let energy = stats.energy.to_dtype(DType::F64)?.to_vec3_per_head()?;
    let ln_z = stats.ln_z.to_dtype(DType::F64)?.permute((1, 0, 2))?.flatten_from(1)?.to_vec2::<f64>()?; // (H, B*T)
    let beta = stats.beta.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let t = stats.alpha.dim(3)?;
    let mut heads = Vec::with_capacity(beta.len());
    for (h, &b) in beta.iter().enumerate() {
        let rows = alpha[h]
            .iter()
            .zip(&energy[h])
            .zip(&ln_z[h])
            .enumerate()
            .map(|(r, ((a, e), &lz))| {
                // Query i sees keys j <= i, and in a local layer only those of its window: the
                // keys of finite energy.
                let i = r % t;
                let first = e[..=i].iter().position(|e| e.is_finite()).unwrap_or(i);
                let (a, e) = (&a[first..=i], &e[first..=i]);
                let keys = a.len();
                let mean_energy: f64 = a.iter().zip(e).map(|(x, e)| x * e).sum();
                let var: f64 = a.iter().zip(e).map(|(x, e)| x * (e - mean_energy).powi(2)).sum();
                let row = RowStats { ln_z: lz, entropy: entropy(a), mean_energy, heat_capacity: b * b * var };
                (keys, row)
            })
            .collect();
        heads.push(HeadRows { beta: b, rows });
    }
    Ok(heads)
}

/// `(B, H, T, T)` -> per head, the B*T rows of length T.
trait PerHead {
    fn to_vec3_per_head(&self) -> Result<Vec<Vec<Vec<f64>>>>;
}

impl PerHead for Tensor {
    fn to_vec3_per_head(&self) -> Result<Vec<Vec<Vec<f64>>>> {
        let (b, h, t, k) = self.dims4()?;
        Ok(self.permute((1, 0, 2, 3))?.reshape((h, b * t, k))?.to_vec3::<f64>()?)
    }
}

/// A head's thermodynamics averaged over query positions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadSummary {
    pub layer: usize,
    pub head: usize,
    /// T_h = 1 / beta_h.
    pub temperature: f64,
    /// Mean attention entropy H, nats.
    pub entropy: f64,
    /// Mean of H / ln(keys allowed) over queries with at least two keys: 0 is one-hot, 1 uniform.
    pub normalized_entropy: f64,
    /// Mean effective number of keys exp(H).
    pub effective_keys: f64,
    /// Mean ln Z.
    pub ln_z: f64,
    /// Mean energy `<E>` under alpha (E_ij = -s_ij).
    pub mean_energy: f64,
    /// Mean heat capacity beta^2 Var_alpha(E).
    pub heat_capacity: f64,
    /// Largest `|H - (beta <E> + ln Z)|` over the rows, with H and the weights of `<E>` from the
    /// applied alpha and ln Z, E from the recomputed scores: the largest KL divergence of the
    /// applied weights from the Boltzmann distribution at T_h (see the module docs).
    pub identity_residual: f64,
}

/// Summaries of every head of every layer, averaged over all queries of all sequences.
pub fn head_summaries(stats: &[AttnStats]) -> Result<Vec<HeadSummary>> {
    let mut out = Vec::new();
    for (layer, s) in stats.iter().enumerate() {
        for (head, hr) in head_rows(s)?.into_iter().enumerate() {
            let n = hr.rows.len() as f64;
            let mean = |f: &dyn Fn(&RowStats) -> f64| hr.rows.iter().map(|(_, r)| f(r)).sum::<f64>() / n;
            let multi: Vec<f64> = hr.rows.iter().filter(|(k, _)| *k >= 2).map(|(k, r)| r.entropy / (*k as f64).ln()).collect();
            let residual = hr
                .rows
                .iter()
                .map(|(_, r)| (r.entropy - (hr.beta * r.mean_energy + r.ln_z)).abs())
                .fold(0.0, f64::max);
            out.push(HeadSummary {
                layer,
                head,
                temperature: 1.0 / hr.beta,
                entropy: mean(&|r| r.entropy),
                normalized_entropy: if multi.is_empty() { f64::NAN } else { multi.iter().sum::<f64>() / multi.len() as f64 },
                effective_keys: mean(&|r| r.entropy.exp()),
                ln_z: mean(&|r| r.ln_z),
                mean_energy: mean(&|r| r.mean_energy),
                heat_capacity: mean(&|r| r.heat_capacity),
                identity_residual: residual,
            });
        }
    }
    Ok(out)
}
