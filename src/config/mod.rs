//! Typed configuration: the model's shape ([`ModelConfig`]), how it is trained ([`TrainConfig`]),
//! and the two saved together as a run's `config.json` ([`RunConfig`]).
//!
//! Training options are resolved in three layers: built-in defaults, then an optional `--config`
//! file (TOML or JSON, the same keys as the flags in snake_case), then the flags themselves
//! ([`TrainOptions`] holds the last two layers, every field optional).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::UsageError;

mod model;
pub use model::*;

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
/// CPU (`vdpbf16ps` where present, an exact emulation elsewhere).
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

/// Declares [`TrainOptions`] (every field an `Option`) from one list of options and generates
/// from the same list what the options do: `overlay` (a later layer wins), `apply_to` (onto a
/// [`TrainConfig`]) and `model_config` (onto the default [`ModelConfig`]). Written by hand because
/// the three must name every option, and a list written once cannot drift from the struct.
macro_rules! train_options {
    (
        $(#[$meta:meta])*
        pub struct TrainOptions {
            $( $(#[doc = $doc:literal])* $(#[serde($($serde:tt)*)])? #[arg($($arg:tt)*)] $name:ident: $ty:ty => $target:ident . $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct TrainOptions {
            $( $(#[doc = $doc])* $(#[serde($($serde)*)])? #[arg($($arg)*)] pub $name: Option<$ty>, )*
        }

        impl TrainOptions {
            /// Options of `self`, overridden by those set in `other`.
            pub fn overlay(mut self, other: &TrainOptions) -> Self {
                $( if other.$name.is_some() { self.$name = other.$name.clone(); } )*
                self
            }

            /// `base` with the training options set here applied on top.
            pub fn apply_to(&self, base: &TrainConfig) -> TrainConfig {
                let mut config = base.clone();
                $( train_options!(@set train, $target, config.$field, self.$name); )*
                config
            }

            /// The flags set here that shape the model (`=> model.FIELD`), as `--name`.
            pub fn model_options_set(&self) -> Vec<String> {
                let mut set: Vec<&str> = Vec::new();
                $( train_options!(@named $target, set, self.$name, stringify!($name)); )*
                set.into_iter().map(|n| format!("--{}", n.replace('_', "-"))).collect()
            }

            /// The model configuration for a tokenizer of `vocab_size` tokens: nanoGPT's CPU
            /// recipe shape with [`DEFAULT_POSITIONS`], and the model options set here.
            pub fn model_config(&self, vocab_size: usize) -> ModelConfig {
                let mut config = ModelConfig { positions: DEFAULT_POSITIONS, ..ModelConfig::nano_cpu(vocab_size) };
                $( train_options!(@set model, $target, config.$field, self.$name); )*
                config
            }
        }
    };
    // Set the field when the option targets the configuration being built, else nothing.
    (@set train, train, $dst:expr, $opt:expr) => { if let Some(v) = &$opt { $dst = v.clone(); } };
    (@set model, model, $dst:expr, $opt:expr) => { if let Some(v) = &$opt { $dst = v.clone(); } };
    // A model field that is itself optional (None: the architecture's default).
    (@set model, model_some, $dst:expr, $opt:expr) => { if let Some(v) = &$opt { $dst = Some(v.clone()); } };
    (@set $building:ident, $target:ident, $dst:expr, $opt:expr) => {};
    // Name the option when it is set and targets the model.
    (@named model, $set:expr, $opt:expr, $name:expr) => { if $opt.is_some() { $set.push($name); } };
    (@named model_some, $set:expr, $opt:expr, $name:expr) => { if $opt.is_some() { $set.push($name); } };
    (@named $target:ident, $set:expr, $opt:expr, $name:expr) => {};
}

train_options! {
/// Training options as given in a `--config` file or on the command line: every field optional,
/// later layers override earlier ones ([`TrainOptions::overlay`], [`TrainOptions::apply_to`]).
///
/// The same struct is `train`'s flags (clap) and a `--config` file's keys (serde). Each option is
/// one entry of the list below, `name: Type => train.FIELD` (of [`TrainConfig`]) or
/// `=> model.FIELD` (of [`ModelConfig`]), with its doc (the `--help` text) and clap attributes;
/// `overlay`, `apply_to` and `model_config` are generated from the same list.
pub struct TrainOptions {
    /// The corpus: one or more UTF-8 text files, directories (their files, recursively) or
    /// JSON Lines files (*.jsonl, one document per record); documents are joined with a newline.
    /// Tokenized once into the token cache ($THERMOFORMER_CACHE, else ~/.cache/thermoformer).
    #[serde(default, with = "one_or_many::option")]
    #[arg(long, value_name = "PATH", num_args = 1..)]
    corpus: Vec<PathBuf> => train.corpus,
    /// The string field of each JSON Lines record that holds its text.
    #[arg(long, value_name = "NAME")]
    text_field: String => train.text_field,
    /// Total optimizer steps.
    #[arg(long)]
    steps: usize => train.steps,
    /// Sequences per step.
    #[arg(long)]
    batch_size: usize => train.batch_size,
    /// Context length in tokens, BOS included.
    #[arg(long)]
    context: usize => model.context,
    /// Transformer blocks.
    #[arg(long)]
    layers: usize => model.n_layer,
    /// Attention heads per block; must divide --d-model.
    #[arg(long)]
    heads: usize => model.n_head,
    /// Width of the residual stream.
    #[arg(long)]
    d_model: usize => model.d_model,
    /// Position encoding: rotary phases on queries and keys, or a learned position table
    /// (nanoGPT's and the PyTorch reference's architecture).
    #[arg(long, value_enum)]
    positions: Positions => model.positions,
    /// Normalisation layers: LayerNorm (GPT-2, Pythia) or RMSNorm (Llama, Qwen).
    #[arg(long, value_enum)]
    norm: Norm => model.norm,
    /// The MLP: GELU (GPT-2, Pythia) or SwiGLU, a SiLU-gated pair of matrices (Llama, Qwen).
    #[arg(long, value_enum)]
    mlp: MlpKind => model.mlp,
    /// The MLP's hidden width (Llama-style models use about 8/3 --d-model with --mlp swiglu).
    #[arg(long)]
    d_ff: usize => model_some.d_ff,
    /// Key/value heads, each shared by --heads / --kv-heads query heads (grouped-query
    /// attention, as Llama and Qwen); every query head keeps its own temperature.
    #[arg(long)]
    kv_heads: usize => model_some.n_kv_head,
    /// Rotary frequency base theta (with --positions rope).
    #[arg(long, value_name = "THETA")]
    rope_theta: f64 => model.rope_theta,
    /// Dimensions of each head that rotate (even; Pythia rotates a quarter).
    #[arg(long, value_name = "R")]
    rope_dims: usize => model_some.rope_dims,
    /// x + attn(norm1(x)) + mlp(norm2(x)) in each block, as Pythia, instead of two residual
    /// steps in sequence.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    parallel_residual: bool => model.parallel_residual,
    /// Peak learning rate after warmup.
    #[arg(long)]
    lr: f64 => train.lr,
    /// Final learning rate of the cosine decay.
    #[arg(long)]
    min_lr: f64 => train.min_lr,
    /// Linear warmup steps.
    #[arg(long)]
    warmup: usize => train.warmup,
    /// AdamW beta1.
    #[arg(long)]
    beta1: f64 => train.beta1,
    /// AdamW beta2.
    #[arg(long)]
    beta2: f64 => train.beta2,
    /// Decoupled weight decay on matrices (not on LayerNorm gains or temperatures): each step
    /// scales them by 1 - lr * wd.
    #[arg(long)]
    weight_decay: f64 => train.weight_decay,
    /// Clip the global gradient norm to this; 0 disables.
    #[arg(long)]
    grad_clip: f64 => train.grad_clip,
    /// Label smoothing eps in [0, 1): loss = (1-eps) CE + eps mean_v(-ln p_v).
    #[arg(long)]
    label_smoothing: f64 => train.label_smoothing,
    /// Attention temperature T of every head, T > 0; 1 is standard attention.
    #[arg(long)]
    attn_temperature: f64 => model.attn_temperature,
    /// Train each head's ln beta = -ln T as a parameter (starting from --attn-temperature).
    #[arg(long, num_args = 0, default_missing_value = "true")]
    learn_temperature: bool => model.learn_temperature,
    /// Tokenizer.
    #[arg(long, value_enum)]
    tokenizer: TokenizerKind => train.tokenizer,
    /// Vocabulary size for --tokenizer bpe, BOS included.
    #[arg(long)]
    vocab_size: usize => train.bpe_vocab_size,
    /// Bytes of the corpus that BPE training reads at most: whole lines spread evenly over it.
    #[arg(long, value_name = "BYTES")]
    bpe_sample_bytes: u64 => train.bpe_sample_bytes,
    /// Seed for initialisation, batch sampling and SGLD noise.
    #[arg(long)]
    seed: u64 => train.seed,
    /// Optimizer; a resumed run keeps its own.
    #[arg(long, value_enum)]
    optimizer: OptimizerKind => train.optimizer,
    /// Arithmetic of the products: f32, or bf16 operands with f32 accumulation (master weights,
    /// optimizer, LayerNorm, softmax and loss stay f32); the same bits on every CPU, fastest where
    /// it has AVX512-BF16. A resumed run keeps its own.
    #[arg(long, value_enum)]
    precision: Precision => train.precision,
    /// SGLD temperature T >= 0 (with --optimizer sgld): each step adds N(0, 2 lr T) noise to every
    /// parameter, so training samples exp(-loss/T) with the loss in mean nats per token;
    /// T = 1/(training tokens) is the Bayesian posterior, 0 is plain SGD.
    #[arg(long, value_name = "T")]
    sgld_temperature: f64 => train.sgld_temperature,
    /// Evaluate on the validation split and checkpoint every N steps.
    #[arg(long)]
    eval_every: usize => train.eval_every,
    /// Batches of validation windows per evaluation.
    #[arg(long)]
    eval_batches: usize => train.eval_batches,
    /// Validation targets the last evaluation covers at most (evenly spaced windows), or `all`
    /// for the whole split; earlier evaluations use --eval-batches.
    #[arg(long, value_name = "N|all")]
    eval_tokens: EvalTokens => train.eval_tokens,
    /// Fraction of the corpus (its tail) held out for validation.
    #[arg(long)]
    val_fraction: f64 => train.val_fraction,
    /// Tokens sampled (temperature 0.8) and printed when training ends; 0 for none.
    #[arg(long)]
    sample_tokens: usize => train.sample_tokens,
}
}

impl TrainOptions {
    /// Read a TOML (by extension `.toml`) or JSON file of options.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        let parsed = if is_toml {
            toml::from_str(&text).map_err(|e| {
                let line = e.span().map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count());
                match line {
                    Some(line) => anyhow::anyhow!("line {line}: {}", e.message()),
                    None => anyhow::anyhow!("{}", e.message()),
                }
            })
        } else {
            // Anything not named .toml is read as JSON; say so when it is not.
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{e} (read as JSON; name a TOML file *.toml)"))
        };
        parsed.map_err(|e| UsageError(format!("config file {}: {e:#}", path.display())).into())
    }

    /// The training configuration: defaults with these options applied (the default learning
    /// rate and weight decay are the chosen optimizer's).
    pub fn train_config(&self) -> TrainConfig {
        let optimizer = self.optimizer.unwrap_or_default();
        let base = TrainConfig {
            optimizer,
            lr: optimizer.default_lr(),
            weight_decay: optimizer.default_weight_decay(),
            ..TrainConfig::default()
        };
        self.apply_to(&base)
    }

    /// The default of every option that has one, by option name (as `train`'s flags are named,
    /// in snake_case), spelled as the command line takes it: what `train --help` shows as
    /// `[default: ...]`, read from [`TrainConfig::default`] and [`TrainOptions::model_config`] so
    /// that it is never typed twice. Switches (`--learn-temperature`) have none.
    pub fn shown_defaults() -> Vec<(String, String)> {
        let train = serde_json::to_value(TrainConfig::default()).expect("a configuration serialises");
        let model = serde_json::to_value(TrainOptions::default().model_config(0)).expect("a configuration serialises");
        let by_optimizer = |f: fn(OptimizerKind) -> f64| {
            format!("{:?} with {}, {:?} with {}", f(OptimizerKind::AdamW), spelled(&OptimizerKind::AdamW), f(OptimizerKind::Sgld), spelled(&OptimizerKind::Sgld))
        };
        let names = match serde_json::to_value(TrainOptions::default()) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        };
        names
            .into_iter()
            .filter_map(|name| {
                let shown = match name.as_str() {
                    // The optimizer's own defaults.
                    "lr" => by_optimizer(OptimizerKind::default_lr),
                    "weight_decay" => by_optimizer(OptimizerKind::default_weight_decay),
                    // Architecture options whose default follows from others.
                    "d_ff" => "4 x --d-model".into(),
                    "kv_heads" => "--heads".into(),
                    "rope_dims" => "the head width, --d-model / --heads".into(),
                    _ => match train.get(field_of(&name)).or_else(|| model.get(field_of(&name)))? {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) if n.is_f64() => format!("{:?}", n.as_f64()?),
                        serde_json::Value::Number(n) => n.to_string(),
                        _ => return None,
                    },
                };
                Some((name, shown))
            })
            .collect()
    }

    /// On `--resume`, options that would change the model, its tokenizer, the split or the seed
    /// must agree with the checkpoint: name the first one that does not.
    pub fn check_resumable(&self, run: &RunConfig) -> Result<()> {
        let (m, t) = (&run.model, &run.train);
        let mismatch = |flag: &str, given: String, saved: String| -> Result<()> {
            Err(UsageError(format!(
                "{flag} {given} does not match the checkpoint's {saved}; a resumed run keeps its model, tokenizer, split and seed"
            ))
            .into())
        };
        macro_rules! same {
            ($opt:expr, $saved:expr, $flag:literal) => {
                if let Some(v) = $opt {
                    if v != $saved {
                        return mismatch($flag, spelled(&v), spelled(&$saved));
                    }
                }
            };
        }
        same!(self.context, m.context, "--context");
        same!(self.layers, m.n_layer, "--layers");
        same!(self.heads, m.n_head, "--heads");
        same!(self.d_model, m.d_model, "--d-model");
        same!(self.positions, m.positions, "--positions");
        same!(self.norm, m.norm, "--norm");
        same!(self.mlp, m.mlp, "--mlp");
        same!(self.d_ff, m.ff_width(), "--d-ff");
        same!(self.kv_heads, m.kv_heads(), "--kv-heads");
        same!(self.rope_theta, m.rope_theta, "--rope-theta");
        same!(self.rope_dims, m.rotary_dims(), "--rope-dims");
        same!(self.parallel_residual, m.parallel_residual, "--parallel-residual");
        same!(self.attn_temperature, m.attn_temperature, "--attn-temperature");
        same!(self.learn_temperature, m.learn_temperature, "--learn-temperature");
        same!(self.tokenizer, t.tokenizer, "--tokenizer");
        if t.tokenizer == TokenizerKind::Bpe {
            same!(self.vocab_size, t.bpe_vocab_size, "--vocab-size");
        }
        same!(self.seed, t.seed, "--seed");
        same!(self.optimizer, t.optimizer, "--optimizer");
        same!(self.precision, t.precision, "--precision");
        same!(self.corpus.as_ref(), &t.corpus, "--corpus");
        same!(self.val_fraction, t.val_fraction, "--val-fraction");
        Ok(())
    }
}

/// The configuration field an option's default is read from: its own name, but for the three
/// whose flag reads better than the field `config.json` has always had.
fn field_of(option: &str) -> &str {
    match option {
        "vocab_size" => "bpe_vocab_size",
        "layers" => "n_layer",
        "heads" => "n_head",
        other => other,
    }
}

/// A setting as the command line spells it (`learned`, `char`, `adamw`, a path), for messages;
/// numbers and flags as Rust prints them (`16`, `2.0`, `NaN`, `true`).
pub fn spelled<T: Serialize + std::fmt::Debug + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}
