//! The explorer's JSON API as plain functions of a loaded model: what each endpoint computes,
//! with its request and response types. The HTTP layer ([`super`]) only moves bytes; tests and
//! scripts may call these directly.
//!
//! Every figure is computed by the same library calls the commands use: head statistics and
//! energies from one pass of [`inspect_ids`] (`thermoformer inspect --text`; the energies are
//! `thermoformer score`'s for a text that fits the context, which the tests check), samples by [`Generator`] (`thermoformer generate`), the sweep by
//! [`inspect::sweep`], each on a copy of the model with the request's temperatures, so a request
//! gives what the command prints with the same `--head-temperature` flags.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::{DType, IndexOp, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{valid_temperature, RunConfig, MIN_TEMPERATURE};
use crate::data::tokenizer::Tok;
use crate::data::Batch;
use crate::model::{Gpt, HeadTemperature};
use crate::physics::generate::{Generator, SampleOptions};
use crate::physics::inspect::{self, inspect_ids, Selection, SweepPoint};
use crate::physics::phase::{self, PhaseDiagram};
use crate::physics::response::{self, EnergySample, Response};
use crate::physics::score::Scored;
use crate::physics::thermo::HeadSummary;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in one line.
    pub error: String,
}

/// A request the API refuses: an HTTP status (4xx) and a message for the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into() }
    }

    /// Well-formed, but not something this model can do (text outside the vocabulary or longer
    /// than the context).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self { status: 422, message: message.into() }
    }
}

impl From<candle_core::Error> for ApiError {
    fn from(e: candle_core::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<anyhow::Error> for ApiError {
    /// A failure inside the model is the server's (500), not the request's.
    fn from(e: anyhow::Error) -> Self {
        Self { status: 500, message: format!("{e:#}") }
    }
}

/// Temperatures a request sets, as `thermoformer score` takes them: every head's, then single
/// heads' (`{"L.H": T}`, as `--head-temperature L.H=T`). Flattened into the requests, whose
/// unknown keys the server refuses itself (serde's `deny_unknown_fields` does not work across a
/// flatten, and in the OpenAPI document it would make the combined schemas contradict).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct Temperatures {
    #[serde(default)]
    pub temperatures: BTreeMap<String, f64>,
    #[serde(default)]
    pub attn_temperature: Option<f64>,
}

impl Temperatures {
    /// A copy of `model` (weights shared) with these temperatures; an unknown head or a
    /// temperature out of range is a 400 naming it.
    pub fn apply(&self, model: &Gpt) -> Result<Gpt, ApiError> {
        let check = |what: &str, t: f64| {
            if valid_temperature(t) {
                Ok(())
            } else {
                Err(ApiError::bad_request(format!("{what} must be finite and at least {MIN_TEMPERATURE:?}, got {t:?}")))
            }
        };
        if let Some(t) = self.attn_temperature {
            check("attn_temperature", t)?;
        }
        let mut heads = Vec::new();
        for (key, &t) in &self.temperatures {
            let bad = || ApiError::bad_request(format!("temperature key {key:?} is not LAYER.HEAD (e.g. \"0.1\")"));
            let (l, h) = key.split_once('.').ok_or_else(bad)?;
            let (layer, head) = (l.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
            check(&format!("temperature {key}"), t)?;
            heads.push(HeadTemperature { layer, head, temperature: t });
        }
        let mut m = model.clone();
        m.override_temperatures(self.attn_temperature, &heads).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(m)
    }
}

/// What the page needs to draw itself: the model's shape and trained temperatures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Info {
    pub checkpoint: String,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (fewer than n_head with grouped-query attention; each query head keeps its
    /// own temperature).
    pub n_kv_head: usize,
    pub context: usize,
    pub vocab_size: usize,
    pub tokenizer: String,
    pub imported_from: Option<String>,
    /// `[layer][head]` as trained.
    pub temperatures: Vec<Vec<f64>>,
    /// The smallest and largest temperature the sliders offer.
    #[schema(value_type = Vec<f64>, min_items = 2, max_items = 2)]
    pub slider_range: (f64, f64),
    /// A line to start from.
    pub sample_text: String,
}

/// The slider range: a decade each side of 1, which covers every trained temperature seen.
pub const SLIDER_RANGE: (f64, f64) = (0.05, 20.0);

pub fn info(model: &Gpt, tok: &Tok, config: &RunConfig, checkpoint: &str) -> Result<Info> {
    // A line of the shipped corpus, cut to the context, where the tokenizer can spell it.
    let sample: String = "ROMEO: I will not be entreated.".chars().take(config.model.context.saturating_sub(1)).collect();
    let sample_text = match tok.encode(&sample) {
        Ok(ids) if ids.len() < config.model.context => sample,
        _ => String::new(),
    };
    let temperatures = model.temperatures()?;
    let range = temperatures.iter().flatten().fold(SLIDER_RANGE, |(lo, hi), &t| (lo.min(t), hi.max(t)));
    Ok(Info {
        checkpoint: checkpoint.to_string(),
        n_layer: config.model.n_layer,
        n_head: config.model.n_head,
        n_kv_head: config.model.kv_heads(),
        context: config.model.context,
        vocab_size: tok.vocab_size(),
        tokenizer: crate::config::spelled(&tok.kind()),
        imported_from: config.imported_from.clone(),
        temperatures,
        slider_range: range,
        sample_text,
    })
}

/// `POST /api/score`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ScoreRequest {
    pub text: String,
    #[serde(flatten)]
    pub temperatures: Temperatures,
    /// Attention maps for these layers only (default: every layer); statistics cover every head.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Leave out the attention maps.
    #[serde(default)]
    pub no_attention: bool,
}

/// One next-token candidate.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Candidate {
    pub token: String,
    pub p: f64,
}

/// One head's attention weights, `[query][key]` over the positions (start first).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttentionMap {
    pub layer: usize,
    pub head: usize,
    pub weights: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScoreResponse {
    /// Every position's token, the start first (as `inspect` lists them).
    pub tokens: Vec<String>,
    /// Their ids.
    pub ids: Vec<u32>,
    /// -ln p(token | context) of every token after the start, nats (as `score --per-token`).
    pub energies: Vec<f64>,
    /// E = -ln p(text), nats.
    pub energy: f64,
    /// E / tokens (null for no tokens).
    pub energy_per_token: Option<f64>,
    /// At every position, the 5 most probable next tokens.
    pub top: Vec<Vec<Candidate>>,
    /// Every head's thermodynamics (as `inspect --text --format json`).
    pub heads: Vec<HeadSummary>,
    /// `[layer][head]` applied.
    pub temperatures: Vec<Vec<f64>>,
    pub attention: Vec<AttentionMap>,
}

/// The text's ids, refused (422) when the tokenizer cannot encode it or it does not fit the
/// context with the start.
fn encode_fitting(model: &Gpt, tok: &Tok, text: &str) -> Result<Vec<u32>, ApiError> {
    let ids = tok.encode(text).map_err(|e| ApiError::unprocessable(format!("{e:#}")))?;
    let context = model.config().context;
    if ids.len() + 1 > context {
        return Err(ApiError::unprocessable(format!(
            "the text is {} tokens, longer than the model's context of {context} positions allows with the start: at most {} tokens",
            ids.len(),
            context - 1
        )));
    }
    Ok(ids)
}

pub fn score(model: &Gpt, tok: &Tok, req: &ScoreRequest) -> Result<ScoreResponse, ApiError> {
    let m = req.temperatures.apply(model)?;
    let ids = encode_fitting(&m, tok, &req.text)?;
    let cfg = m.config().clone();
    if let Some(bad) = req.layers.iter().flatten().find(|&&l| l >= cfg.n_layer) {
        return Err(ApiError::bad_request(format!("layer {bad} names no layer: the model has layers 0..={}", cfg.n_layer - 1)));
    }
    // One forward pass gives everything: the heads, the candidates, and the energies, which are
    // what `score` computes for a text that fits one window (tests hold them to 1e-5).
    let (inspection, logits) = inspect_ids(&m, tok, &ids)?;
    let scored = Scored { energies: text_energies(&logits, &ids)?, ids: ids.clone() };
    let top = top_candidates(&logits, tok, 5)?;
    let attention = if req.no_attention {
        Vec::new()
    } else {
        inspection
            .alpha
            .iter()
            .enumerate()
            .filter(|(l, _)| req.layers.as_ref().is_none_or(|keep| keep.contains(l)))
            .flat_map(|(layer, heads)| {
                heads.iter().enumerate().map(move |(head, a)| AttentionMap {
                    layer,
                    head,
                    weights: a.iter().map(|row| row.iter().map(|&x| x as f32).collect()).collect(),
                })
            })
            .collect()
    };
    Ok(ScoreResponse {
        energy: scored.energy(),
        energy_per_token: scored.energy_per_token(),
        energies: scored.energies,
        tokens: inspection.tokens,
        ids,
        top,
        heads: inspection.heads,
        temperatures: m.temperatures()?,
        attention,
    })
}

/// -ln p(ids[t] | start, ids[..t]) from the logits `(1, T, V)` of start + ids.
fn text_energies(logits: &Tensor, ids: &[u32]) -> Result<Vec<f64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let predicting = logits.i(0)?.narrow(0, 0, ids.len())?; // (n, V): positions that predict a text token
    let targets = Tensor::new(ids, logits.device())?;
    Ok(crate::model::loss::token_energies(&predicting, &targets)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// The `k` most probable next tokens at every position of `logits` `(1, T, V)`.
fn top_candidates(logits: &Tensor, tok: &Tok, k: usize) -> Result<Vec<Vec<Candidate>>> {
    let rows = logits.i(0)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|&l| (l - max).exp()).sum();
            let mut order: Vec<usize> = (0..row.len()).collect();
            let k = k.min(row.len());
            order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(k);
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.into_iter().map(|i| Candidate { token: tok.token_text(i as u32), p: (row[i] - max).exp() / z }).collect()
        })
        .collect())
}

/// `POST /api/generate`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct GenerateRequest {
    #[serde(default)]
    pub prompt: String,
    /// Tokens to sample (at most [`MAX_GENERATE`]).
    #[serde(default = "default_generate_tokens")]
    pub tokens: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(flatten)]
    pub temperatures: Temperatures,
}

/// The most tokens one request samples.
pub const MAX_GENERATE: usize = 2000;

fn default_generate_tokens() -> usize {
    100
}

fn one() -> f64 {
    1.0
}

fn default_seed() -> u64 {
    1337
}

/// One sampled token, as the stream sends it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sampled {
    pub id: u32,
    pub token: String,
    /// -ln p(token | context) under the plain model (T = 1), nats.
    pub energy: f64,
}

/// Check a generation request and build its sampler's inputs: the model with the request's
/// temperatures, the prompt's ids and the options.
pub fn prepare_generation(model: &Gpt, tok: &Tok, req: &GenerateRequest) -> Result<(Gpt, Vec<u32>, SampleOptions), ApiError> {
    if req.tokens == 0 || req.tokens > MAX_GENERATE {
        return Err(ApiError::bad_request(format!("tokens must be in 1..={MAX_GENERATE}, got {}", req.tokens)));
    }
    let opts = SampleOptions { temperature: req.temperature, top_k: req.top_k, top_p: req.top_p };
    opts.validate().map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let m = req.temperatures.apply(model)?;
    let prompt = tok.encode(&req.prompt).map_err(|e| ApiError::unprocessable(format!("{e:#}")))?;
    Ok((m, prompt, opts))
}

/// Sample as `thermoformer generate --seed` does, calling `on_token` with each token as it is
/// drawn (an error from it, a client gone, stops the sampling).
pub fn generate(model: &Gpt, tok: &Tok, prompt: &[u32], opts: SampleOptions, req: &GenerateRequest, mut on_token: impl FnMut(Sampled) -> Result<()>) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(req.seed);
    let mut generator = Generator::new(model, tok.bos(), prompt)?;
    generator.generate(req.tokens, opts, &mut rng, |id, energy| on_token(Sampled { id, token: tok.token_text(id), energy }))?;
    Ok(())
}

/// `POST /api/sweep`: every head set to each temperature in turn, on the request's text.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepRequest {
    pub text: String,
    /// Default: 13 temperatures log-spaced from 0.25 to 4.
    #[serde(default)]
    pub temperatures: Option<Vec<f64>>,
}

/// At most this many temperatures per sweep.
pub const MAX_SWEEP: usize = 64;

pub fn sweep(model: &Gpt, tok: &Tok, req: &SweepRequest) -> Result<Vec<SweepPoint>, ApiError> {
    let temps = req.temperatures.clone().unwrap_or_else(|| (0..13).map(|i| 0.25 * 2f64.powf(i as f64 / 3.0)).collect());
    if temps.is_empty() || temps.len() > MAX_SWEEP {
        return Err(ApiError::bad_request(format!("temperatures must list 1 to {MAX_SWEEP} values, got {}", temps.len())));
    }
    if let Some(bad) = temps.iter().find(|&&t| !valid_temperature(t)) {
        return Err(ApiError::bad_request(format!("sweep temperatures must be finite and at least {MIN_TEMPERATURE:?}, got {bad:?}")));
    }
    let ids = encode_fitting(model, tok, &req.text)?;
    if ids.len() < 2 {
        return Err(ApiError::unprocessable("the sweep needs a text of at least 2 tokens"));
    }
    let dev = model.device();
    let mut inputs = vec![tok.bos()];
    inputs.extend_from_slice(&ids[..ids.len() - 1]);
    let batch = Batch {
        inputs: Tensor::from_vec(inputs, (1, ids.len()), dev).map_err(anyhow::Error::from)?,
        targets: Tensor::from_vec(ids.clone(), (1, ids.len()), dev).map_err(anyhow::Error::from)?,
    };
    Ok(inspect::sweep(model, &[batch], &temps, false)?)
}

/// `POST /api/response`: every head's susceptibility and thermal ablations on the text, as
/// `inspect --text --response`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ResponseRequest {
    pub text: String,
    #[serde(flatten)]
    pub temperatures: Temperatures,
    /// Ablate only these layers and heads (default: all); chi covers every head.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    #[serde(default)]
    pub heads: Option<Vec<usize>>,
}

/// Check a layer/head selection against the model: 400 naming the bad index.
fn selection(model: &Gpt, layers: &Option<Vec<usize>>, heads: &Option<Vec<usize>>) -> Result<Selection, ApiError> {
    let sel = Selection { layers: layers.clone(), heads: heads.clone() };
    let cfg = model.config();
    sel.check(cfg.n_layer, cfg.n_head).map_err(|e| ApiError::bad_request(e.to_string().replace("--", "")))?;
    Ok(sel)
}

pub fn response(model: &Gpt, tok: &Tok, req: &ResponseRequest) -> Result<Response, ApiError> {
    let m = req.temperatures.apply(model)?;
    let sel = selection(&m, &req.layers, &req.heads)?;
    let ids = encode_fitting(&m, tok, &req.text)?;
    if ids.is_empty() {
        return Err(ApiError::unprocessable("the response needs a text of at least 1 token"));
    }
    let sample = EnergySample::text(&m, tok.bos(), &ids)?;
    Ok(response::response(&m, &sample, &sel, false)?)
}

/// `POST /api/phase`: every head's C(T), entropy and sink along a temperature grid on the text,
/// as `inspect --text --phase`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct PhaseRequest {
    pub text: String,
    #[serde(flatten)]
    pub temperatures: Temperatures,
    /// [low, high, points] (default [0.01, 100, 81]), evenly spaced in ln T.
    #[serde(default)]
    #[schema(value_type = Option<Vec<f64>>, min_items = 3, max_items = 3)]
    pub grid: Option<(f64, f64, usize)>,
}

/// The most grid points a phase request may ask for.
pub const MAX_PHASE_POINTS: usize = 400;

pub fn phase(model: &Gpt, tok: &Tok, req: &PhaseRequest) -> Result<PhaseDiagram, ApiError> {
    let m = req.temperatures.apply(model)?;
    let (lo, hi, n) = req.grid.unwrap_or((0.01, 100.0, 81));
    if n > MAX_PHASE_POINTS {
        return Err(ApiError::bad_request(format!("grid asks for {n} points; at most {MAX_PHASE_POINTS}")));
    }
    let grid = phase::log_grid(lo, hi, n).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ids = encode_fitting(&m, tok, &req.text)?;
    let mut input = vec![tok.bos()];
    input.extend_from_slice(&ids);
    let input = Tensor::new(input.as_slice(), m.device()).and_then(|t| t.unsqueeze(0)).map_err(anyhow::Error::from)?;
    let (_, stats) = m.forward_with_stats(&input).map_err(anyhow::Error::from)?;
    Ok(phase::phase_diagram(&stats, &grid)?)
}
