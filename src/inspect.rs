//! Attention as a heat bath: per-head thermodynamics of a text, and a sweep of the global
//! attention temperature over a slice of the validation split.

use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use serde::Serialize;

use crate::data::Batch;
use crate::loss;
use crate::model::Gpt;
use crate::thermo::{self, HeadSummary};
use crate::tokenizer::Tok;

/// A text read through every head.
#[derive(Debug, Clone, Serialize)]
pub struct TextInspection {
    /// Display form of each position's token, BOS first.
    pub tokens: Vec<String>,
    /// Every head's thermodynamics, layer-major.
    pub heads: Vec<HeadSummary>,
    /// Attention weights `[layer][head][query][key]`.
    #[serde(skip)]
    pub alpha: Vec<Vec<Vec<Vec<f64>>>>,
}

/// A token as a short printable label: whitespace made visible.
pub fn token_label(tok: &Tok, id: u32) -> String {
    if id == tok.bos() {
        return "<bos>".into();
    }
    tok.token_text(id)
        .chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\t' => "\\t".to_string(),
            '\r' => "\\r".to_string(),
            ' ' => "\u{b7}".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Run `text` (as BOS + tokens) through `model` and read every head. The text must fit the
/// context.
pub fn inspect_text(model: &Gpt, tok: &Tok, text: &str) -> Result<TextInspection> {
    let ids = tok.encode_with_bos(text)?;
    let context = model.config().context;
    if ids.len() > context {
        bail!(
            "the text is {} tokens + BOS, longer than the model's context of {context} positions; shorten it to at most {} tokens",
            ids.len() - 1,
            context - 1
        );
    }
    let input = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?; // (1, T)
    let (_, stats) = model.forward_with_stats(&input)?;
    let heads = thermo::head_summaries(&stats)?;
    let alpha = stats
        .iter()
        .map(|s| {
            (0..s.alpha.dim(1)?)
                .map(|h| Ok(s.alpha.i((0, h))?.to_dtype(DType::F64)?.to_vec2::<f64>()?))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TextInspection { tokens: ids.iter().map(|&id| token_label(tok, id)).collect(), heads, alpha })
}

/// One temperature of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SweepPoint {
    /// The attention temperature given to every head.
    pub temperature: f64,
    /// Mean -ln p per token of the windows (tokens with at least one real token of context, the
    /// val CE protocol), nats.
    pub energy_per_token: f64,
    /// Mean attention entropy over layers, heads and queries, nats.
    pub entropy: f64,
    /// Mean entropy / ln(keys allowed) over queries with at least two keys.
    pub normalized_entropy: f64,
    /// Mean heat capacity over layers, heads and queries.
    pub heat_capacity: f64,
}

/// For each temperature, set every head of a copy of `model` to it and measure the energy per
/// token and the attention entropy on `batches`.
pub fn sweep(model: &Gpt, batches: &[Batch], temperatures: &[f64]) -> Result<Vec<SweepPoint>> {
    if batches.is_empty() {
        bail!("the sweep needs at least one window of text");
    }
    temperatures
        .iter()
        .map(|&t| {
            let mut m = model.clone();
            m.override_temperatures(Some(t), &[])?;
            let (mut e_sum, mut e_n) = (0.0, 0usize);
            let (mut h, mut hn, mut c, mut rows, mut hnorm_rows) = (0.0, 0.0, 0.0, 0usize, 0usize);
            for batch in batches {
                let (b, len) = batch.targets.dims2()?;
                let (logits, stats) = m.forward_with_stats(&batch.inputs)?;
                let energies = loss::token_energies(&logits.flatten_to(1)?, &batch.targets.flatten_all()?)?.reshape((b, len))?;
                e_sum += energies.narrow(1, 1, len - 1)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                e_n += b * (len - 1);
                for layer in &stats {
                    for head in thermo::head_rows(layer)? {
                        for (keys, r) in head.rows {
                            h += r.entropy;
                            c += r.heat_capacity;
                            rows += 1;
                            if keys >= 2 {
                                hn += r.entropy / (keys as f64).ln();
                                hnorm_rows += 1;
                            }
                        }
                    }
                }
            }
            Ok(SweepPoint {
                temperature: t,
                energy_per_token: e_sum / e_n as f64,
                entropy: h / rows as f64,
                normalized_entropy: hn / hnorm_rows as f64,
                heat_capacity: c / rows as f64,
            })
        })
        .collect()
}
