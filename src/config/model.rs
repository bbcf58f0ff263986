//! The architecture ([`ModelConfig`]): everything needed to rebuild the network from its weights,
//! for models trained here and for every imported family. A family is a set of these fields
//! (norm, MLP kind, kv heads, rotary layout, ...), not a fork of the model.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{valid_temperature, MIN_TEMPERATURE};
use crate::error::UsageError;

/// The position encoding `train` uses unless told otherwise: rotary phases, which won on the
/// shakespeare recipe (docs/results.md has the runs). Learned positions remain
/// [`ModelConfig::nano_cpu`]'s, the architecture of nanoGPT and of the PyTorch reference.
pub const DEFAULT_POSITIONS: Positions = Positions::Rope;

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// A learned absolute position embedding added to the token embedding (GPT-2).
    Learned,
    /// Rotary phases on queries and keys ([`crate::model::rope`]): scores depend only on relative position.
    Rope,
}

/// The architecture: everything needed to rebuild the network from its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Number of token ids, `<|bos|>` included.
    pub vocab_size: usize,
    /// Longest input the model sees, in tokens (BOS included): the length of the position table.
    pub context: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Position encoding.
    pub positions: Positions,
    /// Initial attention temperature T of every head (1 is standard attention).
    pub attn_temperature: f64,
    /// Whether each head's ln beta is a trained parameter.
    pub learn_temperature: bool,
    /// Whether Linear layers and LayerNorms carry a bias (GPT-2, nanoGPT `bias=True`); models
    /// trained here have none.
    #[serde(default)]
    pub bias: bool,
    /// The MLP's nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// LayerNorm's epsilon (1e-5 for torch, nanoGPT and GPT-2).
    #[serde(default = "default_ln_eps")]
    pub ln_eps: f64,
    /// Whether the LM head is the token embedding (tied, as trained here, GPT-2 and nanoGPT) or a
    /// matrix of its own (`lm_head.weight`).
    #[serde(default = "default_true")]
    pub tied_head: bool,
    /// What every sequence the model reads starts with: the position that conditions the first
    /// real token and is never scored.
    #[serde(default)]
    pub start: Start,
    /// Ids from this one up to `vocab_size` are padding of an imported embedding (nanoGPT pads
    /// GPT-2's 50257 to 50304): the tokenizer never produces them and sampling never draws them.
    /// None: every id is a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_vocab_size: Option<usize>,
    /// The normalisation layers: LayerNorm (GPT-2, GPT-Neo, Pythia) or RMSNorm (Llama, Qwen).
    /// `ln_eps` is its epsilon either way.
    #[serde(default)]
    pub norm: Norm,
    /// The MLP: GELU between two matrices, or SiLU-gated (SwiGLU: Llama, Qwen).
    #[serde(default)]
    pub mlp: MlpKind,
    /// The MLP's hidden width; None: 4 d_model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_ff: Option<usize>,
    /// Key/value heads, shared by groups of n_head / n_kv_head query heads (grouped-query
    /// attention); None: one per query head. Every query head keeps its own temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_head: Option<usize>,
    /// Width of one head where it is not d_model / n_head (Qwen3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_head: Option<usize>,
    /// The rotary frequency base theta: omega_m = theta^(-2m/r).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// How many of a head's dimensions rotate (the first r, in adjacent pairs; Pythia's
    /// `rotary_pct`); None: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_dims: Option<usize>,
    /// Llama 3's rescaling of the rotary frequencies, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the q, k, v projection has a bias where that differs from `bias` (Qwen2 has one
    /// and no other bias; GPT-Neo has every bias but these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qkv_bias: Option<bool>,
    /// RMSNorm of every query and key over its head before the rotary phases (Qwen3), with
    /// gains `attn.q_norm` and `attn.k_norm`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// x + attn(norm1(x)) + mlp(norm2(x)) instead of two residual steps in sequence (Pythia).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel_residual: bool,
    /// beta_0, the score scale at T = 1: s_ij = beta_0 q_i.k_j. None: 1/sqrt(d_head); GPT-Neo's
    /// is 1. T = 1 is the model as trained either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_scale: Option<f64>,
    /// Per layer, the local window of keys a query sees (itself and the window - 1 before it), or
    /// None for global attention; empty: every layer global (GPT-Neo alternates the two).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Option<usize>>,
}

/// The rotary frequency base of the original paper (RoFormer), and of models trained here.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

fn default_rope_theta() -> f64 {
    DEFAULT_ROPE_THETA
}

/// The normalisation layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// (x - mean) / sqrt(var + eps) * gain (+ bias).
    #[default]
    #[value(name = "layernorm")]
    #[serde(rename = "layernorm")]
    LayerNorm,
    /// x / sqrt(mean(x^2) + eps) * gain.
    #[value(name = "rmsnorm")]
    #[serde(rename = "rmsnorm")]
    RmsNorm,
}

/// The MLP's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// proj(gelu(fc(x))), fc `(d_ff, d)`.
    #[default]
    Gelu,
    /// proj(silu(gate(x)) * up(x)), with gate and up stored as one matrix `fc` `(2 d_ff, d)`,
    /// the gate's rows first.
    #[value(name = "swiglu")]
    #[serde(rename = "swiglu")]
    SwiGlu,
}

/// Llama 3's rotary rescaling (`rope_scaling` with `rope_type` "llama3"): wavelengths longer
/// than original_context / low_freq_factor are stretched by `factor`, shorter than
/// original_context / high_freq_factor kept, and those between interpolated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: usize,
}

fn default_ln_eps() -> f64 {
    1e-5
}

fn default_true() -> bool {
    true
}

/// The beginning-of-sequence token of every vocabulary trained here.
pub const BOS: &str = "<|bos|>";

/// The MLP's GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, x Phi(x) with the erf (torch's `nn.GELU()`, nanoGPT).
    #[default]
    GeluErf,
    /// GPT-2's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (`gelu_new`).
    GeluTanh,
}

/// The start-of-sequence convention, stored per model in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// A dedicated token of the vocabulary that is never text and never sampled: `<|bos|>` for
    /// models trained here, `<|endoftext|>` for GPT-2 (what minicons does with `bos_token=True`).
    Token(String),
    /// Ordinary text the model is conditioned on, one token of the vocabulary, which may also be
    /// sampled: a newline for nanoGPT's char models (what its sample.py starts from), so
    /// E(line) = -ln p(line | "\n").
    Text(String),
}

impl Default for Start {
    fn default() -> Self {
        Start::Token(BOS.to_string())
    }
}

impl Start {
    /// Whether the start is a dedicated token (kept out of sampling) rather than text.
    pub fn is_token(&self) -> bool {
        matches!(self, Start::Token(_))
    }

    /// How the start reads in messages and reports: `<|bos|>`, or `"\n"` (text).
    pub fn describe(&self) -> String {
        match self {
            Start::Token(t) => t.clone(),
            Start::Text(t) => format!("{t:?} (text)"),
        }
    }
}

impl ModelConfig {
    /// Ids sampling must never draw: the start token (not text) and any padding rows.
    pub fn unsampled(&self, start: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = if self.start.is_token() { vec![start] } else { Vec::new() };
        if let Some(real) = self.real_vocab_size {
            ids.extend(real as u32..self.vocab_size as u32);
        }
        ids
    }

    /// nanoGPT's CPU recipe shape (4 layers, 4 heads, 128 wide, context 64), for a given vocabulary.
    pub fn nano_cpu(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            context: 64,
            n_layer: 4,
            n_head: 4,
            d_model: 128,
            positions: Positions::Learned,
            attn_temperature: 1.0,
            learn_temperature: false,
            bias: false,
            activation: Activation::GeluErf,
            ln_eps: default_ln_eps(),
            tied_head: true,
            start: Start::default(),
            real_vocab_size: None,
            norm: Norm::LayerNorm,
            mlp: MlpKind::Gelu,
            d_ff: None,
            n_kv_head: None,
            d_head: None,
            rope_theta: default_rope_theta(),
            rope_dims: None,
            rope_scaling: None,
            qkv_bias: None,
            qk_norm: false,
            parallel_residual: false,
            score_scale: None,
            windows: Vec::new(),
        }
    }

    /// A very small model for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self { context: 16, n_layer: 2, n_head: 2, d_model: 16, ..Self::nano_cpu(vocab_size) }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_head.unwrap_or(self.d_model / self.n_head.max(1))
    }

    /// Key/value heads (n_head unless grouped).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// The MLP's hidden width.
    pub fn ff_width(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    /// Dimensions of a head that rotate (all unless partial).
    pub fn rotary_dims(&self) -> usize {
        self.rope_dims.unwrap_or(self.head_dim())
    }

    /// beta_0, the score scale at T = 1.
    pub fn score_scale(&self) -> f64 {
        self.score_scale.unwrap_or(1.0 / (self.head_dim() as f64).sqrt())
    }

    /// Whether the q, k, v projection has a bias.
    pub fn has_qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.bias)
    }

    /// Layer `l`'s local window, None where it attends globally.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.windows.get(l).copied().flatten()
    }

    /// Number of parameters (the learned position table included when there is one).
    pub fn param_count(&self) -> u64 {
        let c = |x: usize| x as u128;
        let (v, t, l, d) = (c(self.vocab_size), c(self.context), c(self.n_layer), c(self.d_model));
        let (hd, kvd, f) = (c(self.n_head * self.head_dim()), c(self.kv_heads() * self.head_dim()), c(self.ff_width()));
        let positions = if self.positions == Positions::Learned { t * d } else { 0 };
        let head = if self.tied_head { 0 } else { v * d };
        // A norm's gain, and its bias where LayerNorms have them.
        let norm = if self.bias && self.norm == Norm::LayerNorm { 2 * d } else { d };
        let qkv = d * (hd + 2 * kvd) + if self.has_qkv_bias() { hd + 2 * kvd } else { 0 };
        let proj = hd * d + if self.bias { d } else { 0 };
        let mlp = match self.mlp {
            MlpKind::Gelu => 2 * d * f + if self.bias { f + d } else { 0 },
            MlpKind::SwiGlu => 3 * d * f + if self.bias { 2 * f + d } else { 0 },
        };
        let qk_norm = if self.qk_norm { 2 * c(self.head_dim()) } else { 0 };
        let block = 2 * norm + qkv + proj + mlp + qk_norm;
        let n = v * d + head + positions + l * block + norm;
        n.min(u64::MAX as u128) as u64
    }

    /// A lower bound on the bytes one training step at `batch` windows of the full context needs:
    /// f32 weights, gradients and `state_copies` more parameter-sized tensors (AdamW's two
    /// moments, see [`crate::config::OptimizerKind::state_copies`]); per block the activations kept for the
    /// backward pass (a dozen `(B, T, d)` tensors); the logits and their gradient; and three
    /// `(T, T)` buffers (the causal mask, one head's weights and their gradient). The fused CPU
    /// attention keeps no `(B, H, T, T)` tensor, so none is counted; the composed path (other
    /// devices, `THERMOFORMER_KERNELS=composed`) needs more than this.
    pub fn training_bytes(&self, batch: usize, state_copies: u64) -> u64 {
        let (b, t, _, d, l, v) = self.dims(batch);
        let params = (2 + state_copies as u128) * self.param_count() as u128;
        let n = 4 * (params + l * b * 12 * t * d + 2 * b * t * v + 3 * t * t);
        n.min(u64::MAX as u128) as u64
    }

    /// A lower bound on the bytes a forward pass over `batch` windows of the full context needs:
    /// the f32 weights, one block's activations at a time, the logits, and two `(T, T)` buffers
    /// (the causal mask and one head's weights; as in [`Self::training_bytes`], no
    /// `(B, H, T, T)` tensor).
    pub fn forward_bytes(&self, batch: usize) -> u64 {
        let (b, t, _, d, _, v) = self.dims(batch);
        let n = 4 * (self.param_count() as u128 + b * (6 * t * d + t * v) + 2 * t * t);
        n.min(u64::MAX as u128) as u64
    }

    fn dims(&self, batch: usize) -> (u128, u128, u128, u128, u128, u128) {
        let c = |x: usize| x as u128;
        (c(batch), c(self.context), c(self.n_head), c(self.d_model), c(self.n_layer), c(self.vocab_size))
    }

    /// Check every invariant the model relies on; the message names the offending train flag.
    pub fn validate(&self) -> Result<()> {
        self.validate_as(&Spelling::FLAGS)
    }

    /// [`ModelConfig::validate`], naming the fields as `names` spells them: train's flags, a
    /// run's config.json, or an imported model's own config (`n_head` does not divide `n_embd`).
    pub fn validate_as(&self, names: &Spelling) -> Result<()> {
        let usage = |msg: String| -> Result<()> { if names.flags { Err(UsageError(msg).into()) } else { Err(anyhow::anyhow!(msg)) } };
        let Spelling { layers, heads, d_model, kv_heads, context, rope_theta, rotary, attn_temperature, .. } = *names;
        if self.n_layer == 0 {
            return usage(format!("{layers} must be at least 1"));
        }
        if self.n_head == 0 {
            return usage(format!("{heads} must be at least 1"));
        }
        if self.d_head.is_none() && (self.d_model == 0 || !self.d_model.is_multiple_of(self.n_head)) {
            return usage(format!(
                "{heads} {} does not divide {d_model} {}: each head needs an equal share of the width",
                self.n_head, self.d_model
            ));
        }
        if self.positions == Positions::Rope && !self.head_dim().is_multiple_of(2) {
            return usage(format!(
                "with {rotary}, pairs of dimensions rotate: the head width {d_model} / {heads} = {} must be even",
                self.head_dim()
            ));
        }
        if self.d_model == 0 || self.head_dim() == 0 || self.ff_width() == 0 {
            bail!("the model's widths must be positive (d_model {}, head {}, MLP {})", self.d_model, self.head_dim(), self.ff_width());
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_head.is_multiple_of(kv) {
            return usage(format!("{kv_heads} {kv} must divide {heads} {}: each key/value head serves an equal group of query heads", self.n_head));
        }
        let r = self.rotary_dims();
        if self.positions == Positions::Rope && (r == 0 || r > self.head_dim() || !r.is_multiple_of(2)) {
            bail!("the rotary dimensions ({r}) must be even and between 2 and the head width {}", self.head_dim());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return usage(format!("{rope_theta} must be a finite number above 1, got {:?}", self.rope_theta));
        }
        if let Some(s) = self.rope_scaling {
            let ok = [s.factor, s.low_freq_factor, s.high_freq_factor].iter().all(|x| x.is_finite() && *x > 0.0);
            if !ok || s.high_freq_factor <= s.low_freq_factor || s.original_context == 0 {
                bail!("rope_scaling {s:?} is not a valid llama3 scaling (positive factors, high_freq_factor > low_freq_factor)");
            }
        }
        if self.score_scale.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
            bail!("the score scale beta_0 must be a finite number > 0, got {:?}", self.score_scale);
        }
        if !self.windows.is_empty() && self.windows.len() != self.n_layer {
            bail!("windows lists {} layers but the model has {}", self.windows.len(), self.n_layer);
        }
        if self.windows.iter().flatten().any(|&w| w == 0) {
            bail!("a local attention window must hold at least one key");
        }
        if self.context < 2 {
            return usage(format!("{context} must be at least 2 (BOS + one token), got {}", self.context));
        }
        if !valid_temperature(self.attn_temperature) {
            return usage(format!("{attn_temperature} must be finite and at least {MIN_TEMPERATURE:?}, got {:?}", self.attn_temperature));
        }
        // Refuse shapes that cannot fit in memory before any allocation is attempted.
        const MAX_PARAMS: u64 = 2_000_000_000;
        let params = self.param_count();
        if params > MAX_PARAMS {
            return usage(format!(
                // At least: before the tokenizer is trained the vocabulary is a placeholder.
                "this shape has at least {params} parameters (d_model {}, {} layers, context {}); the limit is {MAX_PARAMS}",
                self.d_model, self.n_layer, self.context
            ));
        }
        if self.context > 1 << 16 {
            return usage(format!("{context} must be at most 65536, got {}", self.context));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            bail!("the LayerNorm epsilon must be a finite number > 0, got {:?}", self.ln_eps);
        }
        if self.vocab_size < 2 {
            bail!("the vocabulary has {} tokens; a language model needs at least 2", self.vocab_size);
        }
        Ok(())
    }
}

/// How a source spells the fields [`ModelConfig::validate_as`] names, so that its messages speak
/// the source's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spelling {
    pub layers: &'static str,
    pub heads: &'static str,
    pub d_model: &'static str,
    pub kv_heads: &'static str,
    pub context: &'static str,
    pub rope_theta: &'static str,
    /// Rotary positions, as the source says it uses them.
    pub rotary: &'static str,
    pub attn_temperature: &'static str,
    /// Whether these are command-line flags (a bad value is a usage error, exit 2) or a file's
    /// fields (a bad file, exit 1).
    pub flags: bool,
}

impl Spelling {
    /// `thermoformer train`'s flags.
    pub const FLAGS: Spelling = Spelling {
        layers: "--layers",
        heads: "--heads",
        d_model: "--d-model",
        kv_heads: "--kv-heads",
        context: "--context",
        rope_theta: "--rope-theta",
        rotary: "--positions rope",
        attn_temperature: "--attn-temperature",
        flags: true,
    };

    /// A run directory's config.json (its `model` object).
    pub const RUN: Spelling = Spelling::file("`n_layer`", "`n_head`", "`d_model`", "`n_kv_head`", "`context`", "`rope_theta`");

    /// A model file's own config: its names for the layer count, heads, width, key/value heads,
    /// context and rotary base (in backquotes, as the file spells them).
    pub const fn file(layers: &'static str, heads: &'static str, d_model: &'static str, kv_heads: &'static str, context: &'static str, rope_theta: &'static str) -> Spelling {
        Spelling { layers, heads, d_model, kv_heads, context, rope_theta, rotary: "rotary positions", attn_temperature: "the attention temperature", flags: false }
    }
}
