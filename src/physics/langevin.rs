//! Langevin dynamics: samples from the Boltzmann law p_T(x) = exp(-E(x) / T) / Z of any energy
//! E given as a closure on candle tensors (gradients by autodiff).
//!
//! - ULA (unadjusted Langevin): x <- x - eta grad E(x) + sqrt(2 eta T) xi, xi ~ N(0, I). Its
//!   stationary law is p_T up to a discretisation bias of order eta.
//! - MALA (Metropolis-adjusted): the ULA move is a proposal x', accepted with probability
//!   min(1, exp(-(E(x') - E(x)) / T) q(x | x') / q(x' | x)), q(x' | x) = N(x'; x - eta grad E(x),
//!   2 eta T I). This makes p_T exactly stationary; the acceptance rate falls as eta grows.
//!
//! [`sgld_noise_std`] is the same noise scale that `train --optimizer sgld` adds to a gradient
//! step on the model's parameters.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// Settings of one chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LangevinOptions {
    /// Step size eta.
    pub step: f64,
    /// Temperature T (k_B = 1).
    pub temperature: f64,
    /// Samples to keep.
    pub samples: usize,
    /// Moves discarded before the first kept sample.
    pub burn_in: usize,
    /// Moves between kept samples.
    pub thin: usize,
    pub seed: u64,
}

impl Default for LangevinOptions {
    fn default() -> Self {
        Self { step: 0.01, temperature: 1.0, samples: 10_000, burn_in: 1_000, thin: 10, seed: 0 }
    }
}

/// A chain's kept samples and, for MALA, the fraction of proposals accepted (1 for ULA).
#[derive(Debug, Clone)]
pub struct Chain {
    pub samples: Vec<Vec<f64>>,
    pub acceptance: f64,
}

/// The standard deviation sqrt(2 eta T) of the noise of one Langevin step (SGLD training's).
pub fn sgld_noise_std(step: f64, temperature: f64) -> f64 {
    crate::train::optim::Sgld::noise_std(step, temperature)
}

/// E(x) and grad E(x) at `x`, through the closure (on f64 tensors of shape `(d,)`).
pub fn energy_and_grad<F: Fn(&Tensor) -> Result<Tensor>>(energy: &F, x: &[f64], dev: &Device) -> Result<(f64, Vec<f64>)> {
    let var = Var::from_vec(x.to_vec(), x.len(), dev)?;
    let e = energy(var.as_tensor())?;
    if e.elem_count() != 1 {
        candle_core::bail!("the energy must be a scalar, got shape {:?}", e.shape())
    }
    let grads = e.backward()?;
    let g = match grads.get(var.as_tensor()) {
        Some(g) => g.to_dtype(DType::F64)?.to_vec1()?,
        None => vec![0.0; x.len()], // an energy that does not depend on x
    };
    Ok((e.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0], g))
}

fn validate(x0: &[f64], o: &LangevinOptions) -> Result<()> {
    if x0.is_empty() {
        candle_core::bail!("the starting point needs at least one coordinate")
    }
    if !(o.step.is_finite() && o.step > 0.0 && o.temperature.is_finite() && o.temperature > 0.0) {
        candle_core::bail!("step and temperature must be finite and > 0, got {:?} and {:?}", o.step, o.temperature)
    }
    if o.samples == 0 || o.thin == 0 {
        candle_core::bail!("need at least one sample and a thinning of at least 1")
    }
    Ok(())
}

/// Unadjusted Langevin from `x0`.
pub fn ula<F: Fn(&Tensor) -> Result<Tensor>>(energy: F, x0: &[f64], o: &LangevinOptions) -> Result<Chain> {
    run(energy, x0, o, false)
}

/// Metropolis-adjusted Langevin from `x0`.
pub fn mala<F: Fn(&Tensor) -> Result<Tensor>>(energy: F, x0: &[f64], o: &LangevinOptions) -> Result<Chain> {
    run(energy, x0, o, true)
}

fn run<F: Fn(&Tensor) -> Result<Tensor>>(energy: F, x0: &[f64], o: &LangevinOptions, adjust: bool) -> Result<Chain> {
    validate(x0, o)?;
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let uniform = Uniform::new(0.0f64, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let (eta, t) = (o.step, o.temperature);
    let sigma = sgld_noise_std(eta, t);
    let mut x = x0.to_vec();
    let (mut e, mut g) = energy_and_grad(&energy, &x, &dev)?;
    let (mut proposed, mut accepted) = (0usize, 0usize);
    let mut samples = Vec::with_capacity(o.samples);
    let total = o.burn_in + o.samples * o.thin;
    for move_i in 1..=total {
        let xi: Vec<f64> = (0..x.len()).map(|_| StandardNormal.sample(&mut rng)).collect();
        let y: Vec<f64> = x.iter().zip(&g).zip(&xi).map(|((x, g), n)| x - eta * g + sigma * n).collect();
        let (e_y, g_y) = energy_and_grad(&energy, &y, &dev)?;
        let accept = if adjust {
            // ln q(a | b) up to a constant = -|a - b + eta grad E(b)|^2 / (4 eta T)
            let ln_q = |a: &[f64], b: &[f64], gb: &[f64]| -> f64 {
                -a.iter().zip(b).zip(gb).map(|((a, b), g)| (a - b + eta * g).powi(2)).sum::<f64>() / (4.0 * eta * t)
            };
            let ln_alpha = -(e_y - e) / t + ln_q(&x, &y, &g_y) - ln_q(&y, &x, &g);
            proposed += 1;
            ln_alpha >= 0.0 || uniform.sample(&mut rng) < ln_alpha.exp()
        } else {
            true
        };
        if accept {
            accepted += 1;
            (x, e, g) = (y, e_y, g_y);
        }
        if !x.iter().all(|v| v.is_finite()) {
            candle_core::bail!("the chain diverged at move {move_i}: lower the step (eta = {eta})")
        }
        if move_i > o.burn_in && (move_i - o.burn_in).is_multiple_of(o.thin) {
            samples.push(x.clone());
        }
    }
    let acceptance = if adjust { accepted as f64 / proposed.max(1) as f64 } else { 1.0 };
    Ok(Chain { samples, acceptance })
}

/// Total-variation distance between the histogram of 1-D `samples` on `bins` equal bins over
/// [lo, hi] and the exact law exp(-E(x) / T) / Z integrated over the same bins (midpoint rule,
/// 64 points per bin). Samples outside [lo, hi) count as mass the exact law does not have there.
/// Needs at least one sample and one bin, and lo < hi.
pub fn tv_distance_1d(samples: &[f64], energy: impl Fn(f64) -> f64, temperature: f64, lo: f64, hi: f64, bins: usize) -> Result<f64> {
    if bins == 0 || samples.is_empty() || !(lo.is_finite() && hi.is_finite() && lo < hi) {
        candle_core::bail!("the histogram needs a sample, at least one bin and a finite range lo < hi, got {} samples, {bins} bins, [{lo}, {hi})", samples.len())
    }
    let width = (hi - lo) / bins as f64;
    let mut hist = vec![0f64; bins];
    for &s in samples {
        if s >= lo && s < hi {
            // (s - lo) / width can round up to `bins` for s just below hi.
            hist[(((s - lo) / width) as usize).min(bins - 1)] += 1.0;
        }
    }
    let n = samples.len() as f64;
    let sub = 64;
    let mut exact: Vec<f64> = (0..bins)
        .map(|b| (0..sub).map(|k| (-energy(lo + width * (b as f64 + (k as f64 + 0.5) / sub as f64)) / temperature).exp()).sum::<f64>())
        .collect();
    let z: f64 = exact.iter().sum();
    exact.iter_mut().for_each(|p| *p /= z);
    let inside: f64 = hist.iter().sum();
    Ok(0.5 * (hist.iter().zip(&exact).map(|(h, p)| (h / n - p).abs()).sum::<f64>() + (n - inside) / n))
}
