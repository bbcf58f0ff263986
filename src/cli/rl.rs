//! `thermoformer rl`: fine-tune a trained run toward a reward (maximum-entropy policy gradient or
//! PPO), staying close to where it started; the output is an ordinary run directory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;

use super::DeviceArg;
use crate::rl::{self, Algo, RlConfig, RlRequest};

const DEFAULTS: RlConfig = RlConfig::DEFAULT;

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

/// `thermoformer rl`: run it and print the report.
pub fn run_rl(args: &RlArgs) -> Result<()> {
    let request = RlRequest {
        checkpoint: args.checkpoint.clone(),
        out: args.out.clone(),
        overwrite: args.overwrite,
        reward: args.reward.clone(),
        prompts: args.prompts.clone(),
        config: args.config(),
        progress: !args.no_progress,
    };
    let r = rl::run(&request, &args.device.device()?)?;
    let mut out = std::io::stdout().lock();
    if args.format.or_json(args.json) == super::ReportFormat::Json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(());
    }
    let over = if r.prompts > 1 { format!(", over {} prompts", r.prompts) } else { String::new() };
    writeln!(out, "{:>7} {:>9} {:>9} {:>9} {:>9}   ({} continuations of {} tokens each{over})", "", "reward", "entropy", "KL", "val CE", r.eval_rollouts, r.tokens)?;
    for (label, e, ce) in [("before", &r.before, r.val_ce_before), ("after", &r.after, r.val_ce_after)] {
        let ce = ce.map_or("-".to_string(), |c| format!("{c:.4}"));
        writeln!(out, "{label:>7} {:>9.4} {:>9.4} {:>9.4} {ce:>9}", e.reward, e.entropy, e.kl)?;
    }
    for (label, e) in [("before", &r.before), ("after", &r.after)] {
        writeln!(out, "--- {label}: two samples ---")?;
        for s in e.samples.iter().take(2) {
            writeln!(out, "{s}\n")?;
        }
    }
    writeln!(out, "policy written to {} (metrics in {})", r.out.display(), rl::RL_METRICS)?;
    Ok(())
}
