//! Nadaraya-Watson kernel regression is attention.
//!
//! With a Gaussian kernel of bandwidth h, the estimate at a query x* is a Boltzmann average of the
//! training labels:
//!
//!   y(x*) = sum_i K_h(x*, x_i) y_i / sum_i K_h(x*, x_i),   K_h(x*, x_i) = exp(-|x* - x_i|^2 / (2 h^2))
//!
//! **Convention:** the energy of training point i is E_i = |x* - x_i|^2 (a squared distance,
//! k_B = 1), so the weights are exp(-E_i / T) / Z with temperature T = 2 h^2 ([`temperature`]).
//! A narrow kernel is a cold system (all weight on the nearest neighbour, the ground state); a
//! wide one is hot (every point weighs the same: the global mean).
//!
//! Expanding the square, -|x* - x_i|^2 / (2h^2) = x*.x_i / h^2 - |x_i|^2 / (2h^2) - |x*|^2 / (2h^2).
//! The last term is the same for every i and cancels in Z, so the estimate is one attention row
//! ([`crate::model::boltzmann_attention`]) with q = x*, k_i = x_i, v_i = y_i, inverse temperature
//! beta = sqrt(d) / h^2 (the attention score s_i = q.k_i / sqrt(d) carries a 1/sqrt(d)) and a
//! per-key bias -|x_i|^2 / (2 h^2). [`direct`] computes the estimate from the distances instead.

use candle_core::{DType, Device, Result, Tensor};

use crate::model::boltzmann_attention;

/// k_B T = 2 h^2 of a Gaussian kernel of bandwidth `h`, with energies |x* - x_i|^2.
pub fn temperature(h: f64) -> f64 {
    2.0 * h * h
}

/// The bandwidth h = sqrt(T / 2) of temperature `t`.
pub fn bandwidth(t: f64) -> f64 {
    (t / 2.0).sqrt()
}

fn check(x: &[Vec<f64>], y: &[f64], queries: &[Vec<f64>], h: f64) -> Result<usize> {
    let d = x.first().map_or(0, |p| p.len());
    if x.is_empty() || x.len() != y.len() {
        candle_core::bail!("need as many labels as training points (at least one), got {} and {}", x.len(), y.len())
    }
    if d == 0 || x.iter().chain(queries).any(|p| p.len() != d) {
        candle_core::bail!("every point needs the same positive dimension")
    }
    if !(h.is_finite() && h > 0.0) {
        candle_core::bail!("the bandwidth must be finite and > 0, got {h:?}")
    }
    Ok(d)
}

/// The estimate at every query, from the kernel weights directly (in f64, with the largest
/// log-weight subtracted so that a narrow kernel does not underflow).
pub fn direct(x: &[Vec<f64>], y: &[f64], queries: &[Vec<f64>], h: f64) -> Result<Vec<f64>> {
    check(x, y, queries, h)?;
    let t = temperature(h);
    Ok(queries
        .iter()
        .map(|q| {
            let energies: Vec<f64> = x.iter().map(|p| p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum()).collect();
            let e0 = energies.iter().cloned().fold(f64::INFINITY, f64::min);
            let w: Vec<f64> = energies.iter().map(|e| (-(e - e0) / t).exp()).collect();
            w.iter().zip(y).map(|(w, y)| w * y).sum::<f64>() / w.iter().sum::<f64>()
        })
        .collect())
}

/// The same estimate through the model's attention code (f64 tensors on `dev`).
pub fn via_attention(x: &[Vec<f64>], y: &[f64], queries: &[Vec<f64>], h: f64, dev: &Device) -> Result<Vec<f64>> {
    let d = check(x, y, queries, h)?;
    let (n, m) = (x.len(), queries.len());
    let rows = |pts: &[Vec<f64>]| -> Result<Tensor> {
        Tensor::from_vec(pts.iter().flatten().copied().collect::<Vec<f64>>(), (1, 1, pts.len(), d), dev)
    };
    let (q, k) = (rows(queries)?, rows(x)?); // (1, 1, M, d), (1, 1, N, d)
    let v = Tensor::from_slice(y, (1, 1, n, 1), dev)?; // (1, 1, N, 1)
    let beta = Tensor::new(&[(d as f64).sqrt() / (h * h)], dev)?; // (H = 1,)
    let key_bias: Vec<f64> = x.iter().map(|p| -p.iter().map(|a| a * a).sum::<f64>() / (2.0 * h * h)).collect();
    let bias = Tensor::from_vec(key_bias, (1, n), dev)?.broadcast_as((m, n))?; // (M, N)
    let out = boltzmann_attention(&q, &k, &v, &beta, Some(&bias))?; // (1, 1, M, 1)
    out.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
}
