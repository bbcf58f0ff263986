//! Training options as `train`'s flags and a `--config` file's keys: [`TrainOptions`], declared
//! with what each option does by one list, and the helpers that name and spell options.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::*;
use crate::error::UsageError;

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
