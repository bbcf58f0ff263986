//! `thermoformer train`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;

use crate::config::{OptimizerKind, Positions, TokenizerKind, TrainOptions};
use crate::train::{self, TrainRequest};

/// Tokenizer choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenizerArg {
    /// One token per distinct character of the corpus.
    Char,
    /// Byte-level BPE trained on the corpus (size set by --vocab-size).
    Bpe,
}

impl From<TokenizerArg> for TokenizerKind {
    fn from(t: TokenizerArg) -> Self {
        match t {
            TokenizerArg::Char => TokenizerKind::Char,
            TokenizerArg::Bpe => TokenizerKind::Bpe,
        }
    }
}

/// Position encoding on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PositionsArg {
    /// A learned absolute position embedding added to the tokens (GPT-2).
    Learned,
    /// Rotary phases on queries and keys: attention scores depend only on relative position.
    Rope,
}

impl From<PositionsArg> for Positions {
    fn from(p: PositionsArg) -> Self {
        match p {
            PositionsArg::Learned => Positions::Learned,
            PositionsArg::Rope => Positions::Rope,
        }
    }
}

/// Optimizer on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// AdamW with decoupled weight decay on matrices.
    Adamw,
    /// Stochastic gradient Langevin dynamics: SGD plus noise sqrt(2 lr T) per step, sampling
    /// exp(-loss / T) (temperature set by --sgld-temperature).
    Sgld,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(o: OptimizerArg) -> Self {
        match o {
            OptimizerArg::Adamw => OptimizerKind::AdamW,
            OptimizerArg::Sgld => OptimizerKind::Sgld,
        }
    }
}

/// Options of `thermoformer train`. Unset options come from --config, else the defaults shown
/// (on --resume, from the checkpoint).
#[derive(Debug, clap::Args)]
#[command(args_override_self = true, allow_negative_numbers = true)]
pub struct TrainArgs {
    /// Text corpus (UTF-8).
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Run directory for the checkpoint and metrics.jsonl.
    #[arg(long, value_name = "DIR", default_value = "checkpoints/shakespeare")]
    pub out: PathBuf,
    /// TOML or JSON file of training options, keys as the flags in snake_case (e.g.
    /// `d_model = 128`); flags given on the command line override it. --out, --resume,
    /// --overwrite, --stop-after, --format, --json, --no-progress and --device are command-line only.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the checkpoint in --out: weights, AdamW moments, step, schedule and data RNG are
    /// restored. --steps may be raised; options that change the model may not.
    #[arg(long)]
    pub resume: bool,
    /// Replace a checkpoint already in --out instead of refusing.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Total optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Context length in tokens, BOS included.
    #[arg(long)]
    pub context: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads per block; must divide --d-model.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Width of the residual stream.
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Position encoding: rotary phases on queries and keys, or a learned position table
    /// (nanoGPT's and the PyTorch reference's architecture).
    #[arg(long, value_enum)]
    pub positions: Option<PositionsArg>,
    /// Peak learning rate after warmup.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine decay.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Optimizer; a resumed run keeps its own.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// SGLD temperature T >= 0 (with --optimizer sgld): each step adds N(0, 2 lr T) noise to every
    /// parameter, so training samples exp(-loss/T) with the loss in mean nats per token;
    /// T = 1/(training tokens) is the Bayesian posterior, 0 is plain SGD.
    #[arg(long, value_name = "T")]
    pub sgld_temperature: Option<f64>,
    /// AdamW beta1.
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdamW beta2.
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Decoupled weight decay on matrices (not on LayerNorm gains or temperatures): each step
    /// scales them by 1 - lr * wd.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this; 0 disables.
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Label smoothing eps in [0, 1): loss = (1-eps) CE + eps mean_v(-ln p_v).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Attention temperature T of every head, T > 0; 1 is standard attention.
    #[arg(long)]
    pub attn_temperature: Option<f64>,
    /// Train each head's ln beta = -ln T as a parameter (starting from --attn-temperature).
    #[arg(long)]
    pub learn_temperature: bool,
    /// Tokenizer.
    #[arg(long, value_enum)]
    pub tokenizer: Option<TokenizerArg>,
    /// Vocabulary size for --tokenizer bpe, BOS included.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Seed for initialisation, batch sampling and SGLD noise.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate on the validation split and checkpoint every N steps.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Batches of validation windows per evaluation.
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Fraction of the corpus (its tail) held out for validation.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Tokens sampled (temperature 0.8) and printed when training ends; 0 for none.
    #[arg(long)]
    pub sample_tokens: Option<usize>,
    /// End this session after step N (checkpointed there), keeping the learning-rate schedule of
    /// --steps; continue later with --resume.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// How to print the report: a table, or one JSON object (out, steps, params, val_ce, train_loss, wall_secs, tokens_per_sec, sample).
    #[arg(long, value_enum, default_value_t = super::ReportFormat::Table)]
    pub format: super::ReportFormat,
    /// The same as --format json.
    #[arg(long)]
    pub json: bool,
    /// Do not draw the progress bar (evaluation lines still go to stderr).
    #[arg(long)]
    pub no_progress: bool,
    /// Device to train on.
    #[arg(long, value_enum, default_value_t = super::DeviceArg::Cpu)]
    pub device: super::DeviceArg,
}

impl TrainArgs {
    /// The options set by flags.
    fn options(&self) -> TrainOptions {
        TrainOptions {
            corpus: self.corpus.clone(),
            steps: self.steps,
            batch_size: self.batch_size,
            context: self.context,
            layers: self.layers,
            heads: self.heads,
            d_model: self.d_model,
            positions: self.positions.map(Into::into),
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            label_smoothing: self.label_smoothing,
            attn_temperature: self.attn_temperature,
            learn_temperature: self.learn_temperature.then_some(true),
            tokenizer: self.tokenizer.map(Into::into),
            vocab_size: self.vocab_size,
            seed: self.seed,
            optimizer: self.optimizer.map(Into::into),
            sgld_temperature: self.sgld_temperature,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            val_fraction: self.val_fraction,
            sample_tokens: self.sample_tokens,
        }
    }
}

/// The run's `sample_tokens` tokens drawn at temperature 0.8 from its saved weights, on the
/// run's own sampling stream (None when `sample_tokens` is 0).
fn sample_of(dir: &std::path::Path, dev: &candle_core::Device) -> Result<Option<String>> {
    let run = crate::checkpoint::load(dir, dev)?;
    let n = run.config.train.sample_tokens;
    if n == 0 {
        return Ok(None);
    }
    let mut rng = crate::rng::rng(run.config.train.seed, crate::rng::RngStream::Sample);
    let opts = crate::physics::generate::SampleOptions::with_temperature(0.8);
    let ids = crate::physics::generate::sample(&run.model, run.tokenizer.bos(), &[], n, opts, &mut rng)?;
    Ok(Some(run.tokenizer.decode(&ids)?))
}

/// `thermoformer train`: train, checkpoint, print a report and a sample.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => TrainOptions::from_file(path)?,
        None => TrainOptions::default(),
    };
    let request = TrainRequest {
        options: file.overlay(&args.options()),
        out: args.out.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        progress: !args.no_progress,
        stop_after: args.stop_after,
    };
    let dev = args.device.device()?;
    let report = train::train(&request, &dev)?;
    let sample = sample_of(&report.out, &dev)?;
    let mut stdout = std::io::stdout().lock();
    if args.format.or_json(args.json) == super::ReportFormat::Json {
        let mut v = serde_json::to_value(&report)?;
        v["sample"] = serde_json::json!(sample);
        writeln!(stdout, "{v}")?;
    } else {
        if let Some(sample) = &sample {
            writeln!(stdout, "--- sample (temperature 0.8) ---\n{sample}\n-------------------------------")?;
        }
        writeln!(
            stdout,
            "trained {} parameters to step {}: val CE {:.4} nats/token, {:.0} tokens/s, {:.1} s; checkpoint in {}",
            report.params,
            report.steps,
            report.val_ce,
            report.tokens_per_sec,
            report.wall_secs,
            report.out.display()
        )?;
    }
    Ok(())
}

