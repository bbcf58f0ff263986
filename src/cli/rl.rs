//! `thermoformer rl`: fine-tune a trained run toward a reward (maximum-entropy policy gradient or
//! PPO), staying close to where it started; the output is an ordinary run directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;

use super::DeviceArg;
use crate::checkpoint;
use crate::config::OptimizerKind;
use crate::memory;
use crate::error::UsageError;
use crate::rl::{self, Algo, RlConfig, Trainer, EVAL_ROLLOUTS};

const DEFAULTS: RlConfig = RlConfig::DEFAULT;
/// Validation windows per forward pass when measuring the validation cross-entropy.
const VAL_BATCH: usize = 16;

/// Algorithm on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgoArg {
    /// REINFORCE with a leave-one-out baseline on J = E[R] + alpha H(pi) - beta KL(pi || pi_ref).
    MaxentPg,
    /// PPO's clipped surrogate over epochs of minibatches, with the KL to pi_ref in the return and
    /// an entropy bonus alpha H.
    Ppo,
}

/// Options of `thermoformer rl`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true, args_override_self = true)]
pub struct RlArgs {
    /// Run directory to start from (the policy, and the frozen reference pi_ref).
    #[arg(long, value_name = "DIR", default_value = "checkpoints/shakespeare")]
    pub checkpoint: PathBuf,
    /// Run directory to write: an ordinary checkpoint (score, generate and inspect work on it)
    /// plus rl.json (these options) and rl_metrics.jsonl (one record per update).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace a checkpoint already in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Reward of a continuation: regex:PATTERN (number of matches), contains:WORD (1 if present),
    /// length:N (-|n - N|/N, n the tokens before the first newline), energy:DIR (minus the energy
    /// per token under the checkpoint in DIR).
    #[arg(long, value_name = "SPEC")]
    pub reward: String,
    /// Policy-gradient algorithm.
    #[arg(long, value_enum, default_value_t = AlgoArg::MaxentPg)]
    pub algo: AlgoArg,
    /// Policy updates.
    #[arg(long, default_value_t = DEFAULTS.steps)]
    pub steps: usize,
    /// Continuations sampled per update.
    #[arg(long, default_value_t = DEFAULTS.batch_size)]
    pub batch_size: usize,
    /// Tokens per continuation (BOS + prompt + tokens must fit the context).
    #[arg(long, default_value_t = DEFAULTS.tokens)]
    pub tokens: usize,
    /// Prompts, one per line (empty lines skipped), used in turn, one per update [default: BOS alone].
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// AdamW learning rate of the policy (no weight decay).
    #[arg(long, default_value_t = DEFAULTS.lr)]
    pub lr: f64,
    /// Entropy weight alpha >= 0 (the starting value with --target-entropy).
    #[arg(long, default_value_t = DEFAULTS.alpha)]
    pub alpha: f64,
    /// KL weight beta >= 0 on KL(pi || pi_ref).
    #[arg(long, default_value_t = DEFAULTS.kl_coef)]
    pub kl_coef: f64,
    /// Tune alpha (SAC-style: ln alpha -= alpha-lr x (H - H_target) per update) toward this mean
    /// per-token entropy, in nats; needs --alpha > 0 to start from.
    #[arg(long, value_name = "H")]
    pub target_entropy: Option<f64>,
    /// Step size on ln alpha for --target-entropy.
    #[arg(long, default_value_t = DEFAULTS.alpha_lr)]
    pub alpha_lr: f64,
    /// PPO clip epsilon: ratios pi/pi_old are clipped to [1 - eps, 1 + eps].
    #[arg(long, default_value_t = DEFAULTS.clip)]
    pub clip: f64,
    /// PPO epochs over each batch.
    #[arg(long, default_value_t = DEFAULTS.epochs)]
    pub epochs: usize,
    /// PPO minibatches per epoch.
    #[arg(long, default_value_t = DEFAULTS.minibatches)]
    pub minibatches: usize,
    /// PPO: stop a batch's epochs once approx_kl (KL(pi_old || pi), k3) exceeds this.
    #[arg(long)]
    pub target_kl: Option<f64>,
    /// Clip the global gradient norm to this; 0 disables.
    #[arg(long, default_value_t = DEFAULTS.grad_clip)]
    pub grad_clip: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = DEFAULTS.seed)]
    pub seed: u64,
    /// How to print the report: a table, or one JSON object (before/after evaluation per prompt, validation CE, samples).
    #[arg(long, value_enum, default_value_t = super::ReportFormat::Table)]
    pub format: super::ReportFormat,
    /// The same as --format json.
    #[arg(long)]
    pub json: bool,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

impl RlArgs {
    fn config(&self) -> RlConfig {
        RlConfig {
            algo: match self.algo {
                AlgoArg::MaxentPg => Algo::MaxEntPg,
                AlgoArg::Ppo => Algo::Ppo,
            },
            steps: self.steps,
            batch_size: self.batch_size,
            tokens: self.tokens,
            lr: self.lr,
            alpha: self.alpha,
            kl_coef: self.kl_coef,
            target_entropy: self.target_entropy,
            alpha_lr: self.alpha_lr,
            clip: self.clip,
            epochs: self.epochs,
            minibatches: self.minibatches,
            target_kl: self.target_kl,
            grad_clip: self.grad_clip,
            seed: self.seed,
        }
    }
}

/// File names in the output directory.
pub const RL_METRICS: &str = "rl_metrics.jsonl";
pub const RL_CONFIG: &str = "rl.json";

/// `thermoformer rl`.
pub fn run_rl(args: &RlArgs) -> Result<()> {
    let cfg = args.config();
    if args.out == args.checkpoint || args.out.canonicalize().ok().is_some_and(|o| args.checkpoint.canonicalize().is_ok_and(|c| c == o)) {
        return Err(UsageError("--out must differ from --checkpoint: the starting run is the frozen reference and is never overwritten".into()).into());
    }
    checkpoint::check_writable(&args.out, args.overwrite, "--overwrite to replace it")?;
    let dev = args.device.device()?;
    // Read-only: the starting run is the frozen reference, and nothing in it is touched.
    let source = checkpoint::load_source(&args.checkpoint, &dev)?;
    let tok = &source.tokenizer;
    let prompts: Vec<Vec<u32>> = match &args.prompts {
        None => vec![Vec::new()],
        Some(path) => {
            let text = fs::read_to_string(path).with_context(|| format!("reading prompts {}", path.display()))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                return Err(UsageError(format!("--prompts {} has no non-empty line", path.display())).into());
            }
            lines.iter().map(|l| tok.encode(l).with_context(|| format!("encoding prompt {l:?}"))).collect::<Result<_>>()?
        }
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    cfg.validate(source.config.model.context, longest)?;
    // Rollouts are BOS + prompt + tokens long. An update holds gradients, the optimizer's state
    // and the frozen pi_ref beside a batch of them; an evaluation runs forward-only passes (no
    // graph) over more of them, beside the weights, pi_ref and the optimizer's state.
    let len = 1 + longest + cfg.tokens;
    let rollout = crate::ModelConfig { context: len, ..source.config.model.clone() };
    let eval_n = cfg.batch_size.max(EVAL_ROLLOUTS).max(prompts.len());
    let state = OptimizerKind::AdamW.state_copies();
    let resident = 4 * (1 + state) * rollout.param_count(); // pi_ref and the moments, f32
    let eval_batch = eval_n.div_ceil(prompts.len()); // the largest share of one prompt
    memory::ensure_fits_on(
        &dev,
        &format!("rl on {} rollouts of {len} tokens (an update) and {eval_batch} at once (an evaluation)", cfg.batch_size),
        rollout.training_bytes(cfg.batch_size, state + 1).max(rollout.forward_bytes(eval_batch).saturating_add(resident)),
        "lower --batch-size or --tokens",
    )?;
    let reward = rl::parse_reward(&args.reward, tok, &dev)?;

    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let options = serde_json::json!({ "checkpoint": args.checkpoint, "reward": args.reward, "prompts": args.prompts, "config": cfg });
    fs::write(args.out.join(RL_CONFIG), serde_json::to_string_pretty(&options)?).with_context(|| format!("writing {}", args.out.join(RL_CONFIG).display()))?;
    let metrics_path = args.out.join(RL_METRICS);
    let mut metrics = OpenOptions::new().create(true).write(true).truncate(true).open(&metrics_path).with_context(|| format!("opening {}", metrics_path.display()))?;

    // What the reward costs the language model: cross-entropy on the run's own validation split,
    // before and after, measured alike (the whole split, as training's last evaluation).
    let val_batches = validation_batches(&source.config, tok, &source.state.corpus_hash, &dev)
        .map_err(|e| crate::progress::note(format!("warning: the validation cross-entropy will not be measured: {e:#}")))
        .ok();
    let val_ce = |params: &crate::params::Params| -> Result<Option<f64>> {
        let Some(batches) = &val_batches else { return Ok(None) };
        Ok(Some(crate::train::evaluate(&params.detached_model(&source.config.model)?, batches, 0.0)?.ce))
    };
    let val_ce_before = val_ce(&source.params)?;

    let model_cfg = source.config.model.clone();
    let mut trainer = Trainer::new(source.params, source.model, &model_cfg, tok.bos(), cfg.clone())?;
    let before = trainer.evaluate(&prompts, reward.as_ref(), tok, eval_n)?;

    let pb = crate::progress::bar(cfg.steps, 0, !args.no_progress);
    for step in 0..cfg.steps {
        let s = trainer.update(&prompts[step % prompts.len()], reward.as_ref(), tok)?;
        writeln!(metrics, "{}", serde_json::to_string(&s)?).with_context(|| format!("writing {}", metrics_path.display()))?;
        pb.set_position(s.step as u64);
        let ppo = s.clip_fraction.map_or(String::new(), |c| format!(" | clip {c:.2} akl {:.4}", s.approx_kl.unwrap_or(0.0)));
        pb.set_message(format!("reward {:.3} | H {:.3} | KL {:.3} | alpha {:.3}{ppo} | {:.0} samples/s", s.reward, s.entropy, s.kl, s.alpha, s.samples_per_sec));
    }
    pb.finish_and_clear();
    let after = trainer.evaluate(&prompts, reward.as_ref(), tok, eval_n)?;
    // state.json describes the policy, not the model it started from.
    let val_ce_after = val_ce(trainer.params())?;
    let state = checkpoint::TrainState { val_ce: val_ce_after, ..source.state.clone() };
    // No optimizer state: rl's moments belong to another objective and to rl's own step count,
    // and `train --resume` would restore them at the source's; it starts fresh moments instead.
    checkpoint::save(&args.out, &source.config, tok, trainer.params(), Default::default(), &state)?;

    let mut out = std::io::stdout().lock();
    if args.format.or_json(args.json) == super::ReportFormat::Json {
        let v = serde_json::json!({
            "out": args.out, "steps": cfg.steps, "before": before, "after": after,
            "val_ce_before": val_ce_before, "val_ce_after": val_ce_after,
        });
        writeln!(out, "{v}")?;
    } else {
        let over = if prompts.len() > 1 { format!(", over {} prompts", prompts.len()) } else { String::new() };
        writeln!(out, "{:>7} {:>9} {:>9} {:>9} {:>9}   ({eval_n} continuations of {} tokens each{over})", "", "reward", "entropy", "KL", "val CE", cfg.tokens)?;
        for (label, e, ce) in [("before", &before, val_ce_before), ("after", &after, val_ce_after)] {
            let ce = ce.map_or("-".to_string(), |c| format!("{c:.4}"));
            writeln!(out, "{label:>7} {:>9.4} {:>9.4} {:>9.4} {ce:>9}", e.reward, e.entropy, e.kl)?;
        }
        for (label, e) in [("before", &before), ("after", &after)] {
            writeln!(out, "--- {label}: two samples ---")?;
            for s in e.samples.iter().take(2) {
                writeln!(out, "{s}\n")?;
            }
        }
        writeln!(out, "policy written to {} (metrics in {RL_METRICS})", args.out.display())?;
    }
    Ok(())
}

/// The run's validation split in tiles of BOS + context - 1 tokens (as training's last
/// evaluation reads it), or why it cannot be read: the corpus is gone or changed, or the pass
/// would not fit in memory.
fn validation_batches(config: &crate::RunConfig, tok: &crate::Tok, corpus_hash: &str, dev: &candle_core::Device) -> Result<Vec<crate::data::Batch>> {
    let val = crate::data::validation_split(config, tok, Some(corpus_hash), None)?;
    memory::ensure_fits_on(dev, &format!("a forward pass over {VAL_BATCH} validation windows"), config.model.forward_bytes(VAL_BATCH), "free some memory")?;
    crate::data::tiled_batches(&val.tokens, None, VAL_BATCH, config.model.context, tok.bos(), dev)
}
