//! Output-temperature calibration: label smoothing as a finite-temperature correction, measured.
//!
//! The model's next-token law is softmax(z). Tempering it to softmax(z / T) changes the validation
//! energy (mean -ln p of the observed tokens) and the calibration: how well the probability the
//! model gives its top token matches how often that token is right. T* is the single temperature
//! that minimises the validation energy. E(beta) = mean[ln sum_v exp(beta z_v) - beta z_y] is convex
//! in beta = 1/T (a log-sum-exp minus a linear term), so a golden-section search on beta finds it.
//! T* > 1 means the model was over-confident (too cold), T* < 1 under-confident (too hot).
//!
//! The expected calibration error (Guo et al., 2017) bins the tokens by confidence c = max_v p_v
//! into equal-width bins and sums |accuracy - mean confidence| weighted by each bin's share.

use anyhow::{bail, Result};
use candle_core::{DType, IndexOp};
use serde::Serialize;

use crate::data::Batch;
use crate::model::Gpt;

/// Logits and observed next tokens, on the host.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// `(N, V)` row-major.
    logits: Vec<f32>,
    targets: Vec<u32>,
    vocab: usize,
}

impl Predictions {
    /// From `(N, V)` logits and N targets.
    pub fn new(logits: Vec<f32>, targets: Vec<u32>, vocab: usize) -> Result<Self> {
        if vocab == 0 || logits.len() != targets.len() * vocab {
            bail!("{} logits do not make {} rows of {vocab}", logits.len(), targets.len());
        }
        if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("target {t} is outside the vocabulary of {vocab}");
        }
        if targets.is_empty() {
            bail!("no tokens to calibrate on");
        }
        Ok(Self { logits, targets, vocab })
    }

    /// The model's predictions on `batches`, every position but the first of each window (the
    /// one predicted from BOS alone), as in the validation CE of training.
    pub fn collect(model: &Gpt, batches: &[Batch]) -> Result<Self> {
        let vocab = model.config().vocab_size;
        let (mut logits, mut targets) = (Vec::new(), Vec::new());
        let bar = crate::progress::bar(batches.len(), 0, true);
        bar.set_message("predictions");
        for batch in batches {
            bar.inc(1);
            let (_, t) = batch.targets.dims2()?;
            let z = model.forward(&batch.inputs)?.i((.., 1..t, ..))?.to_dtype(DType::F32)?; // (B, T-1, V)
            logits.extend(z.flatten_all()?.to_vec1::<f32>()?);
            targets.extend(batch.targets.i((.., 1..t))?.flatten_all()?.to_vec1::<u32>()?);
        }
        bar.finish_and_clear();
        Self::new(logits, targets, vocab)
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn rows(&self) -> impl Iterator<Item = (&[f32], usize)> {
        self.logits.chunks_exact(self.vocab).zip(self.targets.iter().map(|&t| t as usize))
    }

    /// Sum of `f(logits row, target)` over the rows, spread over the cores.
    fn par_sum(&self, f: impl Fn(&[f32], usize) -> f64 + Sync) -> f64 {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.len().div_ceil(threads);
        std::thread::scope(|s| {
            let f = &f;
            let parts: Vec<_> = (0..threads)
                .map(|k| {
                    let (lo, hi) = (k * per, ((k + 1) * per).min(self.len()));
                    s.spawn(move || (lo..hi).map(|i| f(&self.logits[i * self.vocab..(i + 1) * self.vocab], self.targets[i] as usize)).sum::<f64>())
                })
                .collect();
            parts.into_iter().map(|p| p.join().expect("energy worker panicked")).sum()
        })
    }

    /// Mean energy `-ln softmax(z / T)[target]`, nats per token.
    pub fn energy(&self, temperature: f64) -> f64 {
        let beta = 1.0 / temperature;
        self.par_sum(|z, y| ln_z(z, beta) - beta * z[y] as f64) / self.len() as f64
    }

    /// Reliability at temperature T: tokens binned by confidence into `bins` (at least 1)
    /// equal-width bins.
    pub fn reliability(&self, temperature: f64, bins: usize) -> Result<Reliability> {
        if bins == 0 {
            bail!("the reliability diagram needs at least one bin");
        }
        let beta = 1.0 / temperature;
        let mut acc = vec![(0usize, 0f64, 0usize); bins]; // (count, sum of confidence, correct)
        for (z, y) in self.rows() {
            let (top, zmax) = z.iter().enumerate().fold((0, f32::NEG_INFINITY), |(i, m), (j, &v)| if v > m { (j, v) } else { (i, m) });
            let confidence = (beta * zmax as f64 - ln_z(z, beta)).exp(); // max_v p_v
            let b = ((confidence * bins as f64) as usize).min(bins - 1);
            acc[b].0 += 1;
            acc[b].1 += confidence;
            acc[b].2 += usize::from(top == y);
        }
        let n = self.len() as f64;
        let bins: Vec<Bin> = acc
            .iter()
            .enumerate()
            .map(|(k, &(count, conf, correct))| Bin {
                lower: k as f64 / bins as f64,
                upper: (k + 1) as f64 / bins as f64,
                count,
                confidence: if count > 0 { conf / count as f64 } else { f64::NAN },
                accuracy: if count > 0 { correct as f64 / count as f64 } else { f64::NAN },
            })
            .collect();
        let ece = bins.iter().filter(|b| b.count > 0).map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs()).sum();
        let accuracy = bins.iter().map(|b| if b.count > 0 { b.accuracy * b.count as f64 } else { 0.0 }).sum::<f64>() / n;
        Ok(Reliability { ece, accuracy, bins })
    }
}

/// ln sum_v exp(beta z_v), stably.
fn ln_z(z: &[f32], beta: f64) -> f64 {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    m * beta + z.iter().map(|&v| (beta * (v as f64 - m)).exp()).sum::<f64>().ln()
}

/// One confidence bin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    /// Tokens whose confidence falls in [lower, upper).
    pub count: usize,
    /// Their mean confidence (NaN, null in JSON, for an empty bin).
    pub confidence: f64,
    /// The fraction of them whose top token is the observed one.
    pub accuracy: f64,
}

/// Calibration at one temperature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reliability {
    /// Expected calibration error: sum over bins of (count / N) |accuracy - confidence|.
    pub ece: f64,
    /// Top-1 accuracy (unchanged by T, which keeps the order of the logits).
    pub accuracy: f64,
    pub bins: Vec<Bin>,
}

/// The search range of T*.
pub const T_RANGE: (f64, f64) = (0.05, 20.0);

/// What a fitted T* says about the model as trained.
pub fn reading(t_star: f64) -> &'static str {
    match t_star.partial_cmp(&1.0) {
        Some(std::cmp::Ordering::Greater) => "above 1: the model was over-confident (too cold)",
        Some(std::cmp::Ordering::Less) => "below 1: the model was under-confident (too hot)",
        Some(std::cmp::Ordering::Equal) => "exactly 1: the model was calibrated as trained",
        None => "not a number: no temperature was fitted",
    }
}

/// The T in [`T_RANGE`] that minimises the validation energy: golden-section search on beta = 1/T
/// (where the energy is convex), to 1e-5 in beta.
pub fn fit_temperature(preds: &Predictions) -> f64 {
    let f = |beta: f64| preds.energy(1.0 / beta);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (1.0 / T_RANGE.1, 1.0 / T_RANGE.0);
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > 1e-5 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    2.0 / (a + b)
}

/// The outcome of `calibrate`.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Tokens calibrated on.
    pub tokens: usize,
    /// Energy-minimising output temperature.
    pub t_star: f64,
    /// Validation energy (nats/token) at T = 1 and at T*.
    pub energy_before: f64,
    pub energy_after: f64,
    /// Reliability at T = 1 and at T*.
    pub before: Reliability,
    pub after: Reliability,
    /// The validation energy on a grid of T (log-spaced over [`T_RANGE`] and around T*), for the plot.
    pub curve: Vec<(f64, f64)>,
}

/// The most ECE bins: more leaves most of them empty on any validation split.
pub const MAX_BINS: usize = 10_000;

/// Fit T* on `preds` and measure energy and calibration before and after, with `bins` ECE bins
/// (1..=[`MAX_BINS`]).
pub fn calibrate(preds: &Predictions, bins: usize) -> Result<Calibration> {
    if !(1..=MAX_BINS).contains(&bins) {
        bail!("the reliability diagram needs 1..={MAX_BINS} bins, got {bins}");
    }
    let t_star = fit_temperature(preds);
    let mut grid: Vec<f64> = (0..=24).map(|k| 0.25 * 16f64.powf(k as f64 / 24.0)).collect(); // 0.25 .. 4
    grid.extend([t_star, 1.0]);
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    Ok(Calibration {
        tokens: preds.len(),
        t_star,
        energy_before: preds.energy(1.0),
        energy_after: preds.energy(t_star),
        before: preds.reliability(1.0, bins)?,
        after: preds.reliability(t_star, bins)?,
        curve: grid.iter().map(|&t| (t, preds.energy(t))).collect(),
    })
}
