//! Boltzmann sampling from the language model: the next token is drawn from
//! p_T(x | ctx) = p(x | ctx)^(1/T) / Z_T, i.e. softmax(logits / T); T = 0 is greedy.

use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::model::Gpt;

/// Sampling options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// Sampling temperature; 0 picks the most probable token.
    pub temperature: f64,
    /// Keep only the k most probable tokens (None: all).
    pub top_k: Option<usize>,
}

/// Draw a token id from `logits` (one row of raw logits).
pub fn sample_token(logits: &[f32], opts: SampleOptions, rng: &mut ChaCha8Rng) -> usize {
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if let Some(k) = opts.top_k.filter(|&k| k > 0 && k < logits.len()) {
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(k);
    }
    let max = order.iter().map(|&i| logits[i]).fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / opts.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i;
        }
        u -= w;
    }
    *order.last().unwrap_or(&0)
}

/// Continue `prompt` (token ids, BOS first) by `n` sampled tokens, recomputing the full (cropped)
/// context each step. Returns only the new ids.
pub fn sample(model: &Gpt, prompt: &[u32], n: usize, opts: SampleOptions, rng: &mut ChaCha8Rng, dev: &Device) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        anyhow::bail!("sampling needs a prompt of at least one token (BOS)");
    }
    let context = model.config().context;
    let mut ids = prompt.to_vec();
    let mut new = Vec::with_capacity(n);
    for _ in 0..n {
        let window = &ids[ids.len().saturating_sub(context)..];
        let input = Tensor::new(window, dev)?.unsqueeze(0)?; // (1, T)
        let logits = model.forward(&input)?; // (1, T, V)
        let last = logits.i((0, window.len() - 1))?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let next = sample_token(&last, opts, rng) as u32;
        ids.push(next);
        new.push(next);
    }
    Ok(new)
}
