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
        let (p, ln_z) = boltzmann(energies, beta);
        Self::from_weights(&p, energies, beta, ln_z)
    }

    /// Statistics of the weights `p` over states with `energies` at inverse temperature `beta`,
    /// with `ln_z` given: H from `p`, `<E>` and C = beta^2 Var(E) under `p`. The one place the
    /// heat capacity is computed ([`RowStats::from_energies`] and [`head_rows`] both call it).
    pub fn from_weights(p: &[f64], energies: &[f64], beta: f64, ln_z: f64) -> Self {
        let mean_energy: f64 = p.iter().zip(energies).map(|(x, e)| x * e).sum();
        let var: f64 = p.iter().zip(energies).map(|(x, e)| x * (e - mean_energy).powi(2)).sum();
        Self { ln_z, entropy: entropy(p), mean_energy, heat_capacity: beta * beta * var }
    }
}

/// The Boltzmann weights p_j = exp(-beta E_j) / Z of `energies` at inverse temperature `beta`,
/// and ln Z, computed stably (shifted by the lowest energy).
pub fn boltzmann(energies: &[f64], beta: f64) -> (Vec<f64>, f64) {
    let e_min = energies.iter().copied().fold(f64::INFINITY, f64::min);
    let weights: Vec<f64> = energies.iter().map(|e| (-beta * (e - e_min)).exp()).collect();
    let z_shifted: f64 = weights.iter().sum();
    (weights.iter().map(|w| w / z_shifted).collect(), z_shifted.ln() - beta * e_min)
}

/// Entropy -sum p ln p of a probability row (0 ln 0 = 0).
pub fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).fold(0.0, |h, x| h - x * x.ln()) // +0.0 for a point mass
}

/// One attention row, measured from the model's own tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Query position in its sequence (0 is the start).
    pub query: usize,
    /// Keys the query may see: n = query + 1, or the local window's width.
    pub keys: usize,
    /// Weight alpha_i0 on the start token (0 where a local window leaves it out).
    pub start_mass: f64,
    /// The row's inverse temperature: the head's, times any length scaling of the row.
    pub beta: f64,
    /// The row's statistics, with H from the applied alpha and ln Z from the recomputed scores,
    /// at the row's inverse temperature.
    pub stats: RowStats,
}

/// One head's rows, measured from the model's own tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRows {
    /// Inverse temperature of the head (before any length scaling of the rows).
    pub beta: f64,
    /// Every (sequence, query) row, in order.
    pub rows: Vec<Row>,
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
                let beta_i = b * stats.row_scale.get(i).copied().unwrap_or(1.0);
                let stats = RowStats::from_weights(&a[first..=i], &e[first..=i], beta_i, lz);
                let start_mass = if first == 0 { a[0] } else { 0.0 };
                Row { query: i, keys: i + 1 - first, start_mass, beta: beta_i, stats }
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HeadSummary {
    pub layer: usize,
    pub head: usize,
    /// T_h = 1 / beta_h.
    #[schema(value_type = Option<f64>)]
    pub temperature: f64,
    /// Mean attention entropy H, nats.
    pub entropy: f64,
    /// Mean of H / ln(keys allowed) over queries with at least two keys: 0 is one-hot, 1 uniform.
    #[schema(value_type = Option<f64>)]
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
    /// Attention sink: the mean weight on the start token (position 0) over the queries after
    /// it (0 where a local window hides it).
    #[schema(value_type = Option<f64>)]
    pub sink: f64,
    /// Entropy against context length: b of the least-squares fit H = a + b ln n over the rows,
    /// n the keys a query sees. About 1 for a head that averages its keys uniformly, about 0
    /// for one that retrieves a fixed few; NaN when every row sees as many keys.
    #[schema(value_type = Option<f64>)]
    pub entropy_slope: f64,
    /// a of the same fit, nats.
    #[schema(value_type = Option<f64>)]
    pub entropy_intercept: f64,
}

/// Least-squares `(a, b)` of y = a + b x over the points; NaN when x does not vary.
pub fn line_fit(points: impl Iterator<Item = (f64, f64)> + Clone) -> (f64, f64) {
    let (n, sx, sy) = points.clone().fold((0.0, 0.0, 0.0), |(n, sx, sy), (x, y)| (n + 1.0, sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxx, sxy) = points.fold((0.0, 0.0), |(sxx, sxy), (x, y)| (sxx + (x - mx) * (x - mx), sxy + (x - mx) * (y - my)));
    if sxx <= 1e-12 * n {
        return (f64::NAN, f64::NAN);
    }
    let b = sxy / sxx;
    (my - b * mx, b)
}

/// A head's summary from its rows.
pub fn summarize(layer: usize, head: usize, hr: &HeadRows) -> HeadSummary {
    let n = hr.rows.len() as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| hr.rows.iter().map(f).sum::<f64>() / n;
    let multi: Vec<f64> = hr.rows.iter().filter(|r| r.keys >= 2).map(|r| r.stats.entropy / (r.keys as f64).ln()).collect();
    let residual = hr
        .rows
        .iter()
        .map(|r| (r.stats.entropy - (r.beta * r.stats.mean_energy + r.stats.ln_z)).abs())
        .fold(0.0, f64::max);
    let after_start: Vec<f64> = hr.rows.iter().filter(|r| r.query > 0).map(|r| r.start_mass).collect();
    let (a, b) = line_fit(hr.rows.iter().map(|r| ((r.keys as f64).ln(), r.stats.entropy)));
    HeadSummary {
        layer,
        head,
        temperature: 1.0 / hr.beta,
        entropy: mean(&|r| r.stats.entropy),
        normalized_entropy: if multi.is_empty() { f64::NAN } else { multi.iter().sum::<f64>() / multi.len() as f64 },
        effective_keys: mean(&|r| r.stats.entropy.exp()),
        ln_z: mean(&|r| r.stats.ln_z),
        mean_energy: mean(&|r| r.stats.mean_energy),
        heat_capacity: mean(&|r| r.stats.heat_capacity),
        identity_residual: residual,
        sink: if after_start.is_empty() { f64::NAN } else { after_start.iter().sum::<f64>() / after_start.len() as f64 },
        entropy_slope: b,
        entropy_intercept: a,
    }
}

/// Summaries of every head of every layer, averaged over all queries of all sequences.
pub fn head_summaries(stats: &[AttnStats]) -> Result<Vec<HeadSummary>> {
    let mut out = Vec::new();
    for (layer, s) in stats.iter().enumerate() {
        for (head, hr) in head_rows(s)?.iter().enumerate() {
            out.push(summarize(layer, head, hr));
        }
    }
    Ok(out)
}
