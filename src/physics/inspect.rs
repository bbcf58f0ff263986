//! Attention as a heat bath: per-head thermodynamics of a text, and a sweep of the global
//! attention temperature over a slice of the validation split.

use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use serde::Serialize;

use crate::data::Batch;
use crate::model::loss;
use crate::model::{AttnStats, Gpt};
use crate::physics::phase::{PhaseBuilder, PhaseDiagram};
use crate::physics::thermo::{self, HeadSummary};
use crate::data::tokenizer::Tok;

/// A text read through every head.
#[derive(Debug, Clone, Serialize)]
pub struct TextInspection {
    /// Each position's token as the tokenizer spells it, the start (`<|bos|>`, or an imported
    /// model's own) first.
    pub tokens: Vec<String>,
    /// The same tokens as short printable labels, whitespace made visible ([`token_label`]).
    #[serde(skip)]
    pub labels: Vec<String>,
    /// Every head's thermodynamics, layer-major.
    pub heads: Vec<HeadSummary>,
    /// Attention weights `[layer][head][query][key]`.
    #[serde(skip)]
    pub alpha: Vec<Vec<Vec<Vec<f64>>>>,
    /// Energies E_ij = -s_ij `[layer][head][query][key]` for the keys each query may see
    /// (`key <= query`): what the weights are a Boltzmann distribution of.
    #[serde(skip)]
    pub energies: Vec<Vec<Vec<Vec<f64>>>>,
}

/// Which layers and heads to report (None: all of them), 0-based.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub layers: Option<Vec<usize>>,
    pub heads: Option<Vec<usize>>,
}

impl Selection {
    /// An error naming the first index the model does not have.
    pub fn check(&self, n_layer: usize, n_head: usize) -> Result<()> {
        for (flag, list, n, what) in [("--layers", &self.layers, n_layer, "layers"), ("--heads", &self.heads, n_head, "heads")] {
            if let Some(bad) = list.iter().flatten().find(|&&i| i >= n) {
                bail!("{flag} {bad} names no such index: the model has {what} 0..={}", n - 1);
            }
        }
        Ok(())
    }

    /// Whether head `head` of layer `layer` is selected.
    pub fn keeps(&self, layer: usize, head: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer)) && self.heads.as_ref().is_none_or(|h| h.contains(&head))
    }
}

impl TextInspection {
    /// Keep only the selected heads (their order in the model kept): the table, the JSON and the
    /// attention maps then show just those.
    pub fn select(&mut self, sel: &Selection) {
        self.heads.retain(|h| sel.keeps(h.layer, h.head));
        let keep = |maps: Vec<Vec<Vec<Vec<f64>>>>| -> Vec<Vec<Vec<Vec<f64>>>> {
            maps.into_iter()
                .enumerate()
                .map(|(l, heads)| heads.into_iter().enumerate().filter(|(h, _)| sel.keeps(l, *h)).map(|(_, a)| a).collect::<Vec<_>>())
                .filter(|heads| !heads.is_empty())
                .collect()
        };
        self.alpha = keep(std::mem::take(&mut self.alpha));
        self.energies = keep(std::mem::take(&mut self.energies));
    }
}

/// Windows per forward pass that keep the per-head statistics of one pass (weights, energies and
/// their temporaries, `(B, H, T, T)` per layer) within about 1 GiB, at most `cap`.
pub fn stats_windows_per_pass(cfg: &crate::config::ModelConfig, cap: usize) -> usize {
    let per_window = 16u128 * cfg.n_layer as u128 * cfg.n_head as u128 * (cfg.context as u128).pow(2);
    ((1u128 << 30) / per_window.max(1)).clamp(1, cap.max(1) as u128) as usize
}

/// A token as a short printable label: whitespace made visible.
pub fn token_label(tok: &Tok, id: u32) -> String {
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
    Ok(inspect_ids(model, tok, &tok.encode(text)?)?.0)
}

/// [`inspect_text`] of token ids (the start not included), with the logits `(1, T, V)` of the
/// same pass.
pub fn inspect_ids(model: &Gpt, tok: &Tok, text_ids: &[u32]) -> Result<(TextInspection, Tensor)> {
    let (report, logits, _) = inspect_pass(model, tok, text_ids)?;
    Ok((report, logits))
}

/// [`inspect_ids`], with every layer's statistics of the pass too (for the phase diagram).
pub fn inspect_pass(model: &Gpt, tok: &Tok, text_ids: &[u32]) -> Result<(TextInspection, Tensor, Vec<AttnStats>)> {
    let mut ids = vec![tok.bos()];
    ids.extend_from_slice(text_ids);
    let context = model.config().context;
    if ids.len() > context {
        bail!(
            "the text is {} tokens + BOS, longer than the model's context of {context} positions; shorten it to at most {} tokens",
            ids.len() - 1,
            context - 1
        );
    }
    // Every head's (T, T) weights and energies, as the pass's f32 tensors and as the f64 tables
    // returned: at least 40 bytes per (head, query, key).
    let (cfg, n) = (model.config(), ids.len() as u64);
    crate::memory::ensure_fits_on(
        model.device(),
        &format!("reading {} layers x {} heads on {n} positions", cfg.n_layer, cfg.n_head),
        40 * (cfg.n_layer * cfg.n_head) as u64 * n * n,
        "read a shorter text",
    )?;
    let input = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?; // (1, T)
    let (logits, stats) = model.forward_with_stats(&input)?;
    let heads = thermo::head_summaries(&stats)?;
    let alpha = stats
        .iter()
        .map(|s| {
            (0..s.alpha.dim(1)?)
                .map(|h| Ok(s.alpha.i((0, h))?.to_dtype(DType::F64)?.to_vec2::<f64>()?))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let energies = stats
        .iter()
        .map(|s| {
            (0..s.energy.dim(1)?)
                .map(|h| {
                    let rows = s.energy.i((0, h))?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                    Ok(rows.into_iter().enumerate().map(|(q, mut row)| {
                        row.truncate(q + 1);
                        row
                    }).collect())
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    // Position 0 is the start, whatever its id (a nanoGPT model's start is its newline, which
    // may also occur in the text).
    let start = tok.token_str(tok.bos()).unwrap_or_else(|| crate::data::tokenizer::BOS.to_string());
    let tokens = ids.iter().enumerate().map(|(i, &id)| if i == 0 { start.clone() } else { tok.token_text(id) }).collect();
    let labels = ids.iter().enumerate().map(|(i, &id)| if i == 0 { "<bos>".to_string() } else { token_label(tok, id) }).collect();
    Ok((TextInspection { tokens, labels, heads, alpha, energies }, logits, stats))
}

/// One temperature of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SweepPoint {
    /// The attention temperature given to every head.
    pub temperature: f64,
    /// Mean -ln p per token of the windows (tokens with at least one real token of context, the
    /// val CE protocol), nats.
    #[schema(value_type = Option<f64>)]
    pub energy_per_token: f64,
    /// Mean attention entropy over layers, heads and queries, nats.
    #[schema(value_type = Option<f64>)]
    pub entropy: f64,
    /// Mean entropy / ln(keys allowed) over queries with at least two keys.
    #[schema(value_type = Option<f64>)]
    pub normalized_entropy: f64,
    /// Mean heat capacity over layers, heads and queries.
    #[schema(value_type = Option<f64>)]
    pub heat_capacity: f64,
    /// Attention sink: the mean weight on the start token over layers, heads and the queries
    /// after it.
    #[schema(value_type = Option<f64>)]
    pub sink: f64,
}

/// For each temperature, set every head of a copy of `model` to it and measure the energy per
/// token and the attention entropy on `batches`, with a progress bar on stderr when `progress`.
pub fn sweep(model: &Gpt, batches: &[Batch], temperatures: &[f64], progress: bool) -> Result<Vec<SweepPoint>> {
    if batches.is_empty() {
        bail!("the sweep needs at least one window of text");
    }
    let bar = crate::progress::bar(temperatures.len() * batches.len(), 0, progress);
    bar.set_message("sweep");
    let points = temperatures
        .iter()
        .map(|&t| {
            let mut m = model.clone();
            m.override_temperatures(Some(t), &[])?;
            let (mut e_sum, mut e_n) = (0.0, 0usize);
            let (mut h, mut hn, mut c, mut rows, mut hnorm_rows) = (0.0, 0.0, 0.0, 0usize, 0usize);
            let (mut sink, mut sink_rows) = (0.0, 0usize);
            for batch in batches {
                bar.inc(1);
                let (b, len) = batch.targets.dims2()?;
                let (logits, stats) = m.forward_with_stats(&batch.inputs)?;
                let energies = loss::token_energies(&logits.flatten_to(1)?, &batch.targets.flatten_all()?)?.reshape((b, len))?;
                e_sum += energies.narrow(1, 1, len - 1)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                e_n += b * (len - 1);
                for layer in &stats {
                    for head in thermo::head_rows(layer)? {
                        for r in head.rows {
                            h += r.stats.entropy;
                            c += r.stats.heat_capacity;
                            rows += 1;
                            if r.keys >= 2 {
                                hn += r.stats.entropy / (r.keys as f64).ln();
                                hnorm_rows += 1;
                            }
                            if r.query > 0 {
                                sink += r.start_mass;
                                sink_rows += 1;
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
                sink: sink / sink_rows as f64,
            })
        })
        .collect();
    bar.finish_and_clear();
    points
}

/// How far one head looks: its mean score and attention weight against the relative distance
/// d = i - j between query i and key j. With rotary positions the scores depend on positions only
/// through d, so this is the head's whole positional profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistanceProfile {
    pub layer: usize,
    pub head: usize,
    /// T_h of the head.
    pub temperature: f64,
    /// Mean score s_ij = beta_0 q_i.k_j (beta_0 = 1/sqrt(d_head) for most families) over the
    /// (window, query) pairs with a key at distance d, for d = 0..context; NaN past a local
    /// layer's window, where no query sees a key.
    pub mean_score: Vec<f64>,
    /// Mean attention weight alpha_ij on the key at distance d, likewise.
    pub mean_weight: Vec<f64>,
    /// Mean over queries of the attended distance sum_j alpha_ij (i - j), in tokens.
    pub mean_distance: f64,
}

/// Distance profiles of every head (layer-major) over the windows of `batches`.
pub fn distance_profiles(model: &Gpt, batches: &[Batch]) -> Result<Vec<DistanceProfile>> {
    if batches.is_empty() {
        bail!("the distance profile needs at least one window of text");
    }
    let temps = model.temperatures()?;
    let (n_layer, n_head) = (temps.len(), temps[0].len());
    let t = batches[0].inputs.dim(1)?;
    // Per head: sums of score and weight by distance, pairs by distance, sum of attended distance, rows.
    let mut score = vec![vec![0f64; t]; n_layer * n_head];
    let mut weight = vec![vec![0f64; t]; n_layer * n_head];
    let mut pairs = vec![vec![0usize; t]; n_layer * n_head];
    let (mut attended, mut rows) = (vec![0f64; n_layer * n_head], 0usize);
    for batch in batches {
        let (b, tb) = batch.inputs.dims2()?;
        if tb != t {
            bail!("windows of different lengths ({t} and {tb})");
        }
        let (_, stats) = model.forward_with_stats(&batch.inputs)?;
        for (l, s) in stats.iter().enumerate() {
            let alpha = s.alpha.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?; // (B, H, T, T)
            let energy = s.energy.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            for bh in 0..b * n_head {
                let k = l * n_head + bh % n_head;
                for i in 0..t {
                    let row = (bh * t + i) * t;
                    // Keys j <= i, those outside a local layer's window (energy +inf) left out.
                    for j in (0..=i).filter(|&j| energy[row + j].is_finite()) {
                        score[k][i - j] -= energy[row + j];
                        pairs[k][i - j] += 1;
                        weight[k][i - j] += alpha[row + j];
                        attended[k] += alpha[row + j] * (i - j) as f64;
                    }
                }
            }
        }
        rows += b * t;
    }
    Ok((0..n_layer * n_head)
        .map(|k| DistanceProfile {
            layer: k / n_head,
            head: k % n_head,
            temperature: temps[k / n_head][k % n_head],
            mean_score: score[k].iter().zip(&pairs[k]).map(|(s, &n)| s / n as f64).collect(),
            mean_weight: weight[k].iter().zip(&pairs[k]).map(|(w, &n)| w / n as f64).collect(),
            mean_distance: attended[k] / rows as f64,
        })
        .collect())
}

/// Every head read over the windows of `batches`: the summaries over all their query rows and,
/// given a temperature grid, the phase diagram of the same rows
/// ([`crate::physics::phase`]).
pub fn read_windows(model: &Gpt, batches: &[Batch], grid: Option<&[f64]>) -> Result<(Vec<HeadSummary>, Option<PhaseDiagram>)> {
    if batches.is_empty() {
        bail!("reading the heads needs at least one window of text");
    }
    let total: usize = batches.iter().map(|b| b.inputs.elem_count()).sum();
    let mut phase = grid.map(|_| PhaseBuilder::new(total));
    let mut rows: Vec<Vec<thermo::HeadRows>> = Vec::new();
    for batch in batches {
        let (_, stats) = model.forward_with_stats(&batch.inputs)?;
        for (l, s) in stats.iter().enumerate() {
            let heads = thermo::head_rows(s)?;
            if rows.len() <= l {
                rows.push(heads);
            } else {
                for (acc, more) in rows[l].iter_mut().zip(heads) {
                    acc.rows.extend(more.rows);
                }
            }
        }
        if let Some(p) = phase.as_mut() {
            p.add(&stats)?;
        }
    }
    let summaries = rows.iter().enumerate().flat_map(|(l, heads)| heads.iter().enumerate().map(move |(h, hr)| thermo::summarize(l, h, hr))).collect();
    Ok((summaries, phase.zip(grid).map(|(p, g)| p.finish(g))))
}
