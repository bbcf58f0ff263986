//! Response functions of every head: how the sequence energy of a text answers when one head
//! is heated or cooled.
//!
//! ```text
//! chi_h          = dE / d ln T_h = -dE / d ln beta_h        (susceptibility, nats)
//! ablated_hot_h  = E(T_h = infinity) - E                    (uniform weights over allowed keys)
//! ablated_cold_h = E(T_h -> 0) - E                          (all weight on the top-scoring key)
//! ```
//!
//! E is the sequence energy -ln p(text) in nats as `score` reports it, or its mean over the
//! windows of a corpus sample. Because ln beta_h is a parameter of the model, one backward pass
//! through every layer's ln beta gives every chi_h at once ([`crate::Gpt::temperature_vars`]);
//! each ablation is one forward pass of a copy with that head patched ([`crate::Gpt::patch_head`]).
//! A positive chi means heating the head costs energy: the head does work for this text. The
//! ablations are the physics reading of mean-ablation (T = infinity) and hard attention (T -> 0).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::data::Batch;
use crate::model::{Gpt, HeadPatch};
use crate::physics::inspect::Selection;

/// What E is measured on: sequences as (inputs, targets) `(B, T)` each, position j of a row
/// predicting `targets[j]`, scored from position `from` on.
#[derive(Debug, Clone)]
pub struct EnergySample {
    parts: Vec<(Tensor, Tensor)>,
    from: usize,
    sequences: usize,
    tokens: usize,
}

impl EnergySample {
    /// One text's token ids (the start not included), scored as `score` scores it: the input is
    /// the start + ids[..n-1] and every token is a target. At least one token; within the
    /// context.
    pub fn text(model: &Gpt, start: u32, ids: &[u32]) -> Result<Self> {
        let context = model.config().context;
        if ids.is_empty() {
            bail!("the text has no tokens to score");
        }
        if ids.len() > context {
            bail!("the text is {} tokens, more than the model's context of {context}; shorten it", ids.len());
        }
        let mut input = vec![start];
        input.extend_from_slice(&ids[..ids.len() - 1]);
        let dev = model.device();
        let parts = vec![(Tensor::new(input.as_slice(), dev)?.unsqueeze(0)?, Tensor::new(ids, dev)?.unsqueeze(0)?)];
        Ok(Self { parts, from: 0, sequences: 1, tokens: ids.len() })
    }

    /// Validation windows (start + tokens each), scored as the validation loss is: every
    /// position with at least one real token of context (position 0 left out).
    pub fn windows(batches: &[Batch]) -> Result<Self> {
        if batches.is_empty() {
            bail!("the corpus sample has no windows");
        }
        let mut sequences = 0;
        let mut tokens = 0;
        for b in batches {
            let (n, t) = b.targets.dims2()?;
            sequences += n;
            tokens += n * (t - 1);
        }
        Ok(Self { parts: batches.iter().map(|b| (b.inputs.clone(), b.targets.clone())).collect(), from: 1, sequences, tokens })
    }

    /// Sequences in the sample.
    pub fn sequences(&self) -> usize {
        self.sequences
    }

    /// Tokens scored, over all sequences.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// E of `model` on the sample: the mean over sequences of -sum ln p of their scored tokens,
    /// nats, as a scalar tensor (differentiable where the model has variables).
    pub fn energy(&self, model: &Gpt) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (inputs, targets) in &self.parts {
            let (b, t) = targets.dims2()?;
            let e = model.token_energies(inputs, &targets.flatten_all()?, 1.0)?.reshape((b, t))?;
            let part = e.narrow(1, self.from, t - self.from)?.sum_all()?;
            total = Some(match total {
                Some(sum) => (sum + part)?,
                None => part,
            });
        }
        Ok((total.expect("a sample has at least one part") / self.sequences as f64)?)
    }

    fn energy_f64(&self, model: &Gpt) -> Result<f64> {
        Ok(self.energy(model)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}

/// chi_h = dE/d ln T_h of every head `[layer][head]`, and E itself, from one forward and one
/// backward pass.
pub fn susceptibilities(model: &Gpt, sample: &EnergySample) -> Result<(f64, Vec<Vec<f64>>)> {
    let mut m = model.clone();
    let vars = m.temperature_vars()?;
    let e = sample.energy(&m)?;
    let grads = e.backward()?;
    let chi = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            // d/d ln T = -d/d ln beta
            Some(g) => Ok(g.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(|x| -x).collect()),
            None => Ok(vec![0.0; v.as_tensor().elem_count()]),
        })
        .collect::<Result<Vec<Vec<f64>>>>()?;
    Ok((e.to_dtype(DType::F64)?.to_scalar::<f64>()?, chi))
}

/// E of a copy of `model` with head `layer`.`head` patched, minus `base`.
pub fn ablation(model: &Gpt, sample: &EnergySample, layer: usize, head: usize, patch: HeadPatch, base: f64) -> Result<f64> {
    let mut m = model.clone();
    m.patch_head(layer, head, patch)?;
    Ok(sample.energy_f64(&m)? - base)
}

/// One head's responses.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HeadResponse {
    pub layer: usize,
    pub head: usize,
    /// T_h as the model runs it.
    pub temperature: f64,
    /// chi_h = dE/d ln T_h, nats.
    pub susceptibility: f64,
    /// E(T_h = infinity) - E, nats.
    pub ablated_hot: f64,
    /// E(T_h -> 0) - E, nats.
    pub ablated_cold: f64,
}

/// The responses of the selected heads, layer-major.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Response {
    /// E of the sample, nats (per sequence).
    pub energy: f64,
    /// Sequences and tokens E covers.
    pub sequences: usize,
    pub tokens: usize,
    pub heads: Vec<HeadResponse>,
    /// Wall time of chi (one forward and one backward) and of the 2 x heads ablation passes.
    pub seconds_susceptibility: f64,
    pub seconds_ablation: f64,
}

/// chi, and both ablations of every selected head (2 forward passes each, counted on a
/// progress bar on stderr when `progress`).
pub fn response(model: &Gpt, sample: &EnergySample, selection: &Selection, progress: bool) -> Result<Response> {
    response_with(model, sample, selection, progress, || Ok(()))
}

/// [`response`], calling `between` before each head's ablations: an error from it (an
/// interrupt, say) stops the measurement there and is returned.
pub fn response_with(model: &Gpt, sample: &EnergySample, selection: &Selection, progress: bool, mut between: impl FnMut() -> Result<()>) -> Result<Response> {
    let clock = Instant::now();
    let (energy, chi) = susceptibilities(model, sample)?;
    let seconds_susceptibility = clock.elapsed().as_secs_f64();
    let temps = model.temperatures()?;
    let chosen: Vec<(usize, usize)> =
        (0..temps.len()).flat_map(|l| (0..temps[l].len()).map(move |h| (l, h))).filter(|&(l, h)| selection.keeps(l, h)).collect();
    let bar = crate::progress::bar(2 * chosen.len(), 0, progress);
    bar.set_message("ablations");
    let clock = Instant::now();
    let mut heads = Vec::with_capacity(chosen.len());
    for (l, h) in chosen {
        between()?;
        let ablated_hot = ablation(model, sample, l, h, HeadPatch::Hot, energy)?;
        bar.inc(1);
        let ablated_cold = ablation(model, sample, l, h, HeadPatch::Cold, energy)?;
        bar.inc(1);
        heads.push(HeadResponse { layer: l, head: h, temperature: temps[l][h], susceptibility: chi[l][h], ablated_hot, ablated_cold });
    }
    bar.finish_and_clear();
    Ok(Response {
        energy,
        sequences: sample.sequences(),
        tokens: sample.tokens(),
        heads,
        seconds_susceptibility,
        seconds_ablation: clock.elapsed().as_secs_f64(),
    })
}
