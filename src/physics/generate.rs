//! Boltzmann sampling from the language model: the next token is drawn from
//! p_T(x | ctx) = p(x | ctx)^(1/T) / Z_T, i.e. softmax(logits / T), optionally restricted to the k
//! most probable tokens (top-k) and then to the smallest set holding probability p (top-p);
//! T = 0 is greedy (argmax). BOS, the start-of-sequence marker, is never sampled (nor an imported
//! embedding's padding rows); a start that is text, as nanoGPT's newline, may be.
//!
//! Generation runs on a KV cache, so each new token costs one position's forward pass. Positions
//! (learned, or rotary phases) only reach the context the model was trained on, so when the cache
//! is full the window restarts as BOS + the last 3/4 of the context (one forward pass over that
//! window), the layout the model was trained on.

use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::model::{Gpt, KvCache};
use crate::physics::thermo;

/// Sampling options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// Sampling temperature; 0 picks the most probable token.
    pub temperature: f64,
    /// Keep only the k most probable tokens (None: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most probable tokens whose probability reaches p, in (0, 1]
    /// (None: all).
    pub top_p: Option<f64>,
}

impl SampleOptions {
    pub fn with_temperature(temperature: f64) -> Self {
        Self { temperature, top_k: None, top_p: None }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature == 0.0 || crate::config::valid_temperature(self.temperature)) {
            bail!(
                "the sampling temperature must be 0 (greedy) or finite and at least {:?}, got {:?}",
                crate::config::MIN_TEMPERATURE,
                self.temperature
            );
        }
        if self.top_k == Some(0) {
            bail!("--top-k must be at least 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1], got {p:?}");
            }
        }
        Ok(())
    }
}

fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best })
}

/// The distribution a token is drawn from: (token id, probability) pairs, most probable first.
/// Greedy (T = 0) is the one-point distribution on the argmax.
pub fn sampling_distribution(logits: &[f32], opts: SampleOptions) -> Vec<(usize, f64)> {
    if opts.temperature <= 0.0 {
        return vec![(argmax(logits), 1.0)];
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = opts.top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / opts.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut dist: Vec<(usize, f64)> = order.into_iter().zip(weights.into_iter().map(|w| w / total)).collect();
    dist.retain(|&(_, q)| q > 0.0); // tokens masked with -inf logits
    if let Some(p) = opts.top_p {
        let mut mass = 0.0;
        let keep = dist
            .iter()
            .position(|&(_, q)| {
                mass += q;
                mass >= p
            })
            .map_or(dist.len(), |i| i + 1);
        dist.truncate(keep);
        let kept: f64 = dist.iter().map(|&(_, q)| q).sum();
        dist.iter_mut().for_each(|(_, q)| *q /= kept);
    }
    dist
}

/// Draw a token id from `logits` (one row of raw logits).
pub fn sample_token(logits: &[f32], opts: SampleOptions, rng: &mut ChaCha8Rng) -> usize {
    sample_with_entropy(logits, opts, rng).0
}

/// Draw a token id from `logits`, with the entropy (nats) of the distribution it was drawn from:
/// the draw of [`sampling_distribution`] walked most probable first, as [`draw`] walks it.
///
/// Plain temperature sampling (no top-k or top-p) does not sort the vocabulary, which cost
/// more than a GPT-2-sized model's forward pass reads per token (2.8 ms for 50,257 logits):
/// it sorts only as far down the order as the draw goes, in chunks chosen by partial selection,
/// and takes the entropy as ln Z - <(l - max) / T> without a logarithm per token. Its draws are
/// [`draw`]'s on the same random number (the normalisation sums in another order, which can
/// move a probability by an ulp).
pub fn sample_with_entropy(logits: &[f32], opts: SampleOptions, rng: &mut ChaCha8Rng) -> (usize, f64) {
    if opts.temperature <= 0.0 || opts.top_k.is_some() || opts.top_p.is_some() {
        let dist = sampling_distribution(logits, opts);
        let entropy = thermo::entropy(&dist.iter().map(|&(_, q)| q).collect::<Vec<_>>());
        return (draw(&dist, rng), entropy);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights = crate::kernels::par_map_f64(logits.len(), |i| ((logits[i] as f64 - max) / opts.temperature).exp());
    let total: f64 = weights.iter().sum();
    // The support, as `sampling_distribution` keeps it: tokens of nonzero probability.
    let mut support: Vec<u32> = (0..logits.len() as u32).filter(|&i| weights[i as usize] / total > 0.0).collect();
    let q = |i: u32| weights[i as usize] / total;
    let mean_energy: f64 = support.iter().map(|&i| q(i) * (logits[i as usize] as f64 - max) / opts.temperature).sum();
    let entropy = if support.len() > 1 { total.ln() - mean_energy } else { 0.0 };
    if support.len() <= 1 {
        return (support.first().map_or(0, |&i| i as usize), entropy);
    }
    // Most probable first, ties by id: sampling_distribution's order.
    let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut u = rng.random::<f64>();
    let (mut start, mut chunk) = (0, 64);
    loop {
        let end = (start + chunk).min(support.len());
        let rest = &mut support[start..];
        if end - start < rest.len() {
            rest.select_nth_unstable_by(end - start - 1, order);
        }
        rest[..end - start].sort_unstable_by(order);
        for &i in &support[start..end] {
            if u < q(i) {
                return (i as usize, entropy);
            }
            u -= q(i);
        }
        if end == support.len() {
            return (support[end - 1] as usize, entropy);
        }
        start = end;
        chunk *= 4;
    }
}

/// Walk `dist` (most probable first) with one uniform number.
pub fn draw(dist: &[(usize, f64)], rng: &mut ChaCha8Rng) -> usize {
    if dist.len() == 1 {
        return dist[0].0;
    }
    let mut u = rng.random::<f64>();
    for &(i, q) in dist {
        if u < q {
            return i;
        }
        u -= q;
    }
    dist.last().map_or(0, |&(i, _)| i)
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new token ids.
    pub ids: Vec<u32>,
    /// -ln p(x_t | context) of each new token under the plain model (T = 1), nats.
    pub energies: Vec<f64>,
    /// Entropy of each sampling distribution (after temperature, top-k and top-p), nats.
    pub entropies: Vec<f64>,
}

impl Generation {
    /// Energy of the continuation, nats.
    pub fn energy(&self) -> f64 {
        self.energies.iter().fold(0.0, |a, e| a + e)
    }

    /// Mean entropy of the sampling distributions (0 for no tokens).
    pub fn mean_entropy(&self) -> f64 {
        if self.entropies.is_empty() { 0.0 } else { self.entropies.iter().sum::<f64>() / self.entropies.len() as f64 }
    }
}

/// Tokens kept (after BOS) when the window restarts: 3/4 of the context, leaving room to grow.
pub fn restart_keep(context: usize) -> usize {
    (3 * context / 4).min(context.saturating_sub(2)).max(1)
}

/// Sample from a model with a KV cache.
pub struct Generator<'a> {
    model: &'a Gpt,
    bos: u32,
    cache: KvCache,
    /// Every token so far, BOS first.
    ids: Vec<u32>,
    /// Logits of the next token (stale after the last token of a generation until asked for).
    next: Vec<f32>,
    stale: bool,
}

impl<'a> Generator<'a> {
    /// Start from `prompt` (token ids, BOS not included; may be empty).
    pub fn new(model: &'a Gpt, bos: u32, prompt: &[u32]) -> Result<Self> {
        let mut ids = vec![bos];
        ids.extend_from_slice(prompt);
        let mut g = Self { model, bos, cache: KvCache::new(), ids, next: Vec::new(), stale: false };
        g.refill()?;
        Ok(g)
    }

    /// Rebuild the cache from BOS + the most recent tokens that fit, and compute the next logits.
    fn refill(&mut self) -> Result<()> {
        let context = self.model.config().context;
        let keep = if self.ids.len() <= context { self.ids.len() - 1 } else { restart_keep(context) };
        let mut window = vec![self.bos];
        window.extend_from_slice(&self.ids[self.ids.len() - keep..]);
        self.cache = KvCache::new();
        let input = Tensor::new(window.as_slice(), self.model.device())?.unsqueeze(0)?; // (1, T)
        let logits = self.model.forward_cached(&input, &mut self.cache)?; // (1, T, V)
        self.next = logits.i((0, window.len() - 1))?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(())
    }

    /// Raw logits of the next token.
    pub fn logits(&mut self) -> Result<&[f32]> {
        self.refresh()?;
        Ok(&self.next)
    }

    /// Run the forward pass of the last token if it has not been run yet.
    fn refresh(&mut self) -> Result<()> {
        if !self.stale {
            return Ok(());
        }
        self.stale = false;
        let id = *self.ids.last().expect("BOS at least");
        if self.cache.len() >= self.model.config().context {
            return self.refill();
        }
        let input = Tensor::new(&[id], self.model.device())?.unsqueeze(0)?; // (1, 1)
        let logits = self.model.forward_cached(&input, &mut self.cache)?; // (1, 1, V)
        self.next = logits.i((0, 0))?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(())
    }

    /// Every token so far, BOS first.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Append `id`; the logits that follow it are computed when next needed.
    pub fn push(&mut self, id: u32) -> Result<()> {
        self.refresh()?;
        self.ids.push(id);
        self.stale = true;
        Ok(())
    }

    /// Sample `n` tokens, calling `on_token` with each and its energy as soon as it is drawn.
    pub fn generate(
        &mut self,
        n: usize,
        opts: SampleOptions,
        rng: &mut ChaCha8Rng,
        mut on_token: impl FnMut(u32, f64) -> Result<()>,
    ) -> Result<Generation> {
        opts.validate()?;
        let mut out = Generation { ids: Vec::new(), energies: Vec::new(), entropies: Vec::new() };
        for _ in 0..n {
            // A start token (BOS) marks the start of a sequence and is never text, and padding
            // rows of an imported embedding are no tokens: neither is sampled. A start that is
            // text (nanoGPT's newline) is an ordinary token.
            let mut logits = self.logits()?.to_vec();
            for id in self.model.config().unsampled(self.bos) {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            let (id, entropy) = sample_with_entropy(&logits, opts, rng);
            out.entropies.push(entropy);
            let energy = energy_of(&self.next, id); // self.next is fresh: logits() above
            out.energies.push(energy);
            out.ids.push(id as u32);
            on_token(id as u32, energy)?;
            self.push(id as u32)?;
        }
        Ok(out)
    }
}

/// -ln softmax(logits)[id].
fn energy_of(logits: &[f32], id: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + crate::kernels::par_map_f64(logits.len(), |i| (logits[i] as f64 - max).exp()).iter().sum::<f64>().ln();
    lse - logits[id] as f64
}

/// Continue `prompt` (token ids, BOS not included) by `n` sampled tokens; the new ids.
pub fn sample(model: &Gpt, bos: u32, prompt: &[u32], n: usize, opts: SampleOptions, rng: &mut ChaCha8Rng) -> Result<Vec<u32>> {
    Ok(Generator::new(model, bos, prompt)?.generate(n, opts, rng, |_, _| Ok(()))?.ids)
}
