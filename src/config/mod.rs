//! Typed configuration: the model's shape ([`ModelConfig`]), how it is trained ([`TrainConfig`]),
//! and the two saved together as a run's `config.json` ([`RunConfig`]).
//!
//! Training options are resolved in three layers: built-in defaults, then an optional `--config`
//! file (TOML or JSON, the same keys as the flags in snake_case), then the flags themselves
//! ([`TrainOptions`] holds the last two layers, every field optional).

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::UsageError;

mod model;
mod options;
pub use model::*;
pub use options::*;

/// Version of the checkpoint layout. Bump it when a change would make old run directories load
/// wrongly; loaders refuse a newer version with a hint to upgrade. Version 2 added the model
/// fields of imported architectures (`bias`, `activation`, `ln_eps`, `tied_head`, `start`) and
/// `imported_from`; version 3 the fields of the imported families (`norm`, `mlp`, `rope_theta`,
/// `n_kv_head`, `windows`, ...), which a version-2 binary would refuse as unknown. Older
/// directories read with their defaults, which are what they were.
pub const FORMAT_VERSION: u32 = 3;

/// The arithmetic of the model's products (Linear layers, the LM head, attention's q.k and
/// alpha.v): f32 throughout, or bf16 operands with f32 accumulation and outputs, as PyTorch's
/// autocast runs them but writing f32. Master weights, optimizer state, LayerNorm, softmax, the
/// loss and the residual stream stay f32 either way. A bf16 run gives the same bits on every
/// CPU (`vdpbf16ps` where present, an exact emulation elsewhere), unless AMX's tiles are asked
/// for by name (`THERMOFORMER_BF16_KERNEL=amx`: faster, not reproducible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// Which tokenizer a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per distinct character of the corpus.
    Char,
    /// Byte-level BPE trained on the corpus.
    Bpe,
}

/// Which optimizer a run trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay on matrices.
    #[default]
    #[value(name = "adamw")]
    AdamW,
    /// Stochastic gradient Langevin dynamics at `sgld_temperature` ([`crate::train::optim::Sgld`]).
    Sgld,
}

impl OptimizerKind {
    /// The default peak learning rate: AdamW's 1e-3 is far too small for plain gradient steps.
    pub fn default_lr(self) -> f64 {
        match self {
            Self::AdamW => 1e-3,
            Self::Sgld => SGLD_LR,
        }
    }

    /// Parameter-sized tensors of state the optimizer keeps: AdamW's two moments, none for SGLD.
    pub fn state_copies(self) -> u64 {
        match self {
            Self::AdamW => 2,
            Self::Sgld => 0,
        }
    }

    /// The default weight decay. The decoupled decay shrinks matrices by lr * wd per step, so
    /// AdamW's 0.1 at SGLD's learning rate would shrink them by 10% a step.
    pub fn default_weight_decay(self) -> f64 {
        match self {
            Self::AdamW => 0.1,
            Self::Sgld => 0.0,
        }
    }
}

/// Default peak learning rate of SGLD (the step eta of its gradient descent part); the README's
/// SGLD section has the sweep it was chosen from.
pub const SGLD_LR: f64 = 1.0;

/// How a run is trained. Every field has a default ([`TrainConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The corpus: UTF-8 text files, directories of them and JSON Lines files
    /// ([`crate::data::corpus`]). One path is written as a string, as it always was.
    #[serde(with = "one_or_many")]
    pub corpus: Vec<PathBuf>,
    /// The string field of a JSON Lines record that holds its document.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Whether `*.jsonl` files are read as JSON Lines. Runs written before corpora could be
    /// JSON Lines have no such field and read every file as text, as they were trained.
    #[serde(default)]
    pub json_lines: bool,
    /// Optimizer steps in total (a resumed run continues up to this number).
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// AdamW first-moment decay.
    pub beta1: f64,
    /// AdamW second-moment decay.
    pub beta2: f64,
    /// AdamW epsilon in the denominator.
    pub adam_eps: f64,
    /// Decoupled weight decay, applied to matrices (embeddings and linear weights) only.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub grad_clip: f64,
    /// Label smoothing eps in [0, 1): mix of the one-hot target with the uniform distribution.
    pub label_smoothing: f64,
    /// Seed for initialisation, batch sampling and SGLD noise.
    pub seed: u64,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// The arithmetic of the products, in training and in its evaluations. Runs from before
    /// bf16 have no such field and trained in f32.
    #[serde(default)]
    pub precision: Precision,
    /// SGLD temperature T: the noise is sqrt(2 lr T) per step (0: plain SGD).
    #[serde(default)]
    pub sgld_temperature: f64,
    /// Evaluate (and checkpoint) every this many steps.
    pub eval_every: usize,
    /// Batches of validation windows per evaluation (a fixed set, the same at every evaluation).
    pub eval_batches: usize,
    /// Validation targets the last evaluation of a run covers at most (evenly spaced windows).
    #[serde(default)]
    pub eval_tokens: EvalTokens,
    /// Fraction of the corpus held out for validation (the tail).
    pub val_fraction: f64,
    /// Tokenizer kind.
    pub tokenizer: TokenizerKind,
    /// Target vocabulary size for `--tokenizer bpe` (BOS included).
    pub bpe_vocab_size: usize,
    /// Bytes of the corpus BPE training reads at most (whole lines, spread evenly over it).
    #[serde(default = "default_bpe_sample_bytes")]
    pub bpe_sample_bytes: u64,
    /// Standard deviation of the normal initialisation of matrices (GPT-2: 0.02).
    pub init_std: f64,
    /// Tokens sampled and printed at the end of training (0: none).
    pub sample_tokens: usize,
    /// The run directory a fine-tuning run started from (`train --init-from`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl Default for TrainConfig {
    /// The defaults train nanoGPT's CPU recipe shape on the shipped corpus, 2.5 times longer than
    /// the recipe's 2000 steps, for clearly better text.
    fn default() -> Self {
        Self {
            corpus: vec![PathBuf::from("data/tinyshakespeare.txt")],
            text_field: default_text_field(),
            json_lines: true,
            steps: 5000,
            batch_size: 12,
            lr: OptimizerKind::AdamW.default_lr(),
            min_lr: 1e-4,
            warmup: 100,
            beta1: 0.9,
            beta2: 0.99,
            adam_eps: 1e-8,
            weight_decay: OptimizerKind::AdamW.default_weight_decay(),
            grad_clip: 1.0,
            label_smoothing: 0.0,
            seed: 1337,
            optimizer: OptimizerKind::AdamW,
            precision: Precision::F32,
            sgld_temperature: 0.0,
            eval_every: 500,
            eval_batches: 40,
            eval_tokens: EvalTokens::default(),
            val_fraction: 0.1,
            tokenizer: TokenizerKind::Char,
            bpe_vocab_size: 512,
            bpe_sample_bytes: default_bpe_sample_bytes(),
            init_std: 0.02,
            sample_tokens: 300,
            init_from: None,
        }
    }
}

fn default_text_field() -> String {
    "text".into()
}

fn default_bpe_sample_bytes() -> u64 {
    DEFAULT_BPE_SAMPLE_BYTES
}

/// BPE training reads at most this much of a corpus by default: 32 MiB, the shipped corpus 30
/// times over, trains a 4096-token BPE in about a minute on two cores.
pub const DEFAULT_BPE_SAMPLE_BYTES: u64 = 32 << 20;

/// How many validation targets a run's last evaluation covers: at most N (evenly spaced windows
/// of the context), or the whole split. Spelled `N` or `all` on the command line and in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalTokens {
    AtMost(usize),
    All,
}

impl EvalTokens {
    /// The default, 131,072 (2^17) targets: more than the shipped corpus's whole validation split
    /// (111,539 char tokens), so the figures of runs on it are over the whole split, and a few
    /// seconds of forward passes on the default model.
    pub const DEFAULT: usize = 1 << 17;

    /// Windows of `context` tokens that cover at most this many targets, at least one (None: all
    /// of them).
    pub fn windows(&self, context: usize) -> Option<usize> {
        match *self {
            EvalTokens::AtMost(n) => Some((n / context.max(1)).max(1)),
            EvalTokens::All => None,
        }
    }
}

impl Default for EvalTokens {
    fn default() -> Self {
        EvalTokens::AtMost(Self::DEFAULT)
    }
}

impl std::fmt::Display for EvalTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalTokens::AtMost(n) => write!(f, "{n}"),
            EvalTokens::All => write!(f, "all"),
        }
    }
}

impl std::str::FromStr for EvalTokens {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "all" => Ok(EvalTokens::All),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(EvalTokens::AtMost(n)),
                _ => Err(format!("expected a number of tokens > 0 or `all`, got {s:?}")),
            },
        }
    }
}

impl Serialize for EvalTokens {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            EvalTokens::AtMost(n) => s.serialize_u64(*n as u64),
            EvalTokens::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for EvalTokens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(u64),
            S(String),
        }
        match Repr::deserialize(d)? {
            Repr::N(0) => Err(serde::de::Error::custom("eval_tokens must be > 0 or \"all\"")),
            Repr::N(n) => Ok(EvalTokens::AtMost(n as usize)),
            Repr::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A list of paths that reads from a string or a list, and writes one path as a string.
mod one_or_many {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        match paths {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::One(p) => vec![p],
            Repr::Many(v) => v,
        })
    }

    /// The same for an optional list (a `--config` file's `corpus`).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(paths: &Option<Vec<PathBuf>>, s: S) -> Result<S::Ok, S::Error> {
            match paths {
                Some(p) => super::serialize(p, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PathBuf>>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// A family's block at any size, for `train --preset`: the architecture flags it stands for,
/// filled in where the command line and `--config` leave them unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// GPT-2 / nanoGPT: LayerNorm, a GELU MLP 4 d wide, rotary positions (the default).
    Gpt,
    /// Llama 3 / SmolLM2: RMSNorm, SwiGLU about 8/3 d wide (a multiple of 8), rotary positions,
    /// and grouped-query attention with two query heads per key/value head where the heads pair.
    Llama,
    /// Pythia (GPT-NeoX): LayerNorm, a GELU MLP 4 d wide, the parallel residual, rotary phases on
    /// a quarter of each head.
    Pythia,
}

impl Preset {
    /// `opts` with this family's architecture options wherever it leaves them unset.
    pub fn fill(self, mut opts: TrainOptions) -> TrainOptions {
        let base = ModelConfig::nano_cpu(2);
        let (d, heads) = (opts.d_model.unwrap_or(base.d_model), opts.heads.unwrap_or(base.n_head));
        opts.positions.get_or_insert(Positions::Rope);
        match self {
            Preset::Gpt => {
                opts.norm.get_or_insert(Norm::LayerNorm);
                opts.mlp.get_or_insert(MlpKind::Gelu);
            }
            Preset::Llama => {
                opts.norm.get_or_insert(Norm::RmsNorm);
                opts.mlp.get_or_insert(MlpKind::SwiGlu);
                opts.d_ff.get_or_insert((8 * d).div_ceil(3).div_ceil(8) * 8);
                if heads >= 2 && heads.is_multiple_of(2) {
                    opts.kv_heads.get_or_insert(heads / 2);
                }
            }
            Preset::Pythia => {
                opts.norm.get_or_insert(Norm::LayerNorm);
                opts.mlp.get_or_insert(MlpKind::Gelu);
                opts.parallel_residual.get_or_insert(true);
                let head = d / heads.max(1);
                opts.rope_dims.get_or_insert((head / 4 / 2 * 2).max(2));
            }
        }
        opts
    }
}

/// The smallest temperature accepted anywhere (attention heads, sampling, scoring, sweeps):
/// beta = 1/T then stays far inside f32's range. The T -> 0 limit is reached well before it: at
/// 1e-6 an attention row is already one-hot on its largest score.
pub const MIN_TEMPERATURE: f64 = 1e-6;

/// Whether `t` is a usable temperature: finite and at least [`MIN_TEMPERATURE`].
pub fn valid_temperature(t: f64) -> bool {
    t.is_finite() && t >= MIN_TEMPERATURE
}

/// The largest byte-level BPE vocabulary `train` builds (GPT-4's is about 100k).
pub const MAX_BPE_VOCAB: usize = 1 << 20;

impl TrainConfig {
    /// The JSON Lines field to read `*.jsonl` files by, or None where every file is text.
    pub fn json_field(&self) -> Option<&str> {
        self.json_lines.then_some(self.text_field.as_str())
    }

    /// Check the ranges of every option; the message names the flag.
    pub fn validate(&self) -> Result<()> {
        let usage = |msg: String| -> Result<()> { Err(UsageError(msg).into()) };
        if self.steps == 0 {
            return usage("--steps must be at least 1".into());
        }
        if self.batch_size == 0 {
            return usage("--batch-size must be at least 1".into());
        }
        if self.corpus.is_empty() {
            return usage("--corpus needs at least one file or directory".into());
        }
        if self.text_field.is_empty() {
            return usage("--text-field must name a field".into());
        }
        if self.bpe_sample_bytes == 0 {
            return usage("--bpe-sample-bytes must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return usage(format!("--lr must be a finite number > 0, got {:?}", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return usage(format!("--min-lr must lie in [0, --lr = {:?}], got {:?}", self.lr, self.min_lr));
        }
        for (flag, b) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return usage(format!("{flag} must lie in [0, 1), got {b:?}"));
            }
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return usage(format!("adam_eps must be > 0, got {:?}", self.adam_eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return usage(format!("--weight-decay must be >= 0, got {:?}", self.weight_decay));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return usage(format!("--grad-clip must be >= 0 (0 disables it), got {:?}", self.grad_clip));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return usage(format!("--label-smoothing must lie in [0, 1), got {:?}", self.label_smoothing));
        }
        if !(self.sgld_temperature.is_finite() && self.sgld_temperature >= 0.0) {
            return usage(format!("--sgld-temperature must be a finite number >= 0, got {:?}", self.sgld_temperature));
        }
        if self.sgld_temperature > 0.0 && self.optimizer != OptimizerKind::Sgld {
            return usage("--sgld-temperature needs --optimizer sgld".into());
        }
        if self.eval_every == 0 {
            return usage("--eval-every must be at least 1".into());
        }
        if self.eval_batches == 0 {
            return usage("--eval-batches must be at least 1".into());
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return usage(format!("--val-fraction must lie in (0, 1), got {:?}", self.val_fraction));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return usage(format!("init_std must be > 0, got {:?}", self.init_std));
        }
        if self.tokenizer == TokenizerKind::Bpe && self.bpe_vocab_size > MAX_BPE_VOCAB {
            return usage(format!("--vocab-size must be at most {MAX_BPE_VOCAB}, got {}", self.bpe_vocab_size));
        }
        if self.tokenizer == TokenizerKind::Bpe && self.bpe_vocab_size < 258 {
            return usage(format!(
                "--vocab-size must be at least 258 for byte-level BPE (256 bytes + BOS + one merge), got {}",
                self.bpe_vocab_size
            ));
        }
        Ok(())
    }
}

/// What `config.json` in a run directory holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Checkpoint layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The architecture.
    pub model: ModelConfig,
    /// How it was (or is being) trained; for an imported model, the defaults a fine-tuning run
    /// (`train --init-from`) starts from.
    pub train: TrainConfig,
    /// Where an imported model came from (`thermoformer import`): the format and the source path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}
