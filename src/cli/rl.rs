//! `thermoformer rl`: fine-tune a trained run toward a reward (maximum-entropy policy gradient or
//! PPO), staying close to where it started; the output is an ordinary run directory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::DeviceArg;
use crate::rl::{self, RlConfig, RlRequest};

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
    /// Prompts, one per line (empty lines skipped), used in turn, one per update [default: BOS alone].
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// The run's options (also saved in rl.json).
    #[command(flatten)]
    pub config: RlConfig,
    #[command(flatten)]
    pub report: super::ReportArgs,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Arithmetic of the products (policy, reference, sampling and evaluation): f32, or bf16
    /// operands with f32 accumulation.
    #[arg(long, value_enum, default_value_t = crate::config::Precision::F32)]
    pub precision: crate::config::Precision,
}

/// `thermoformer rl`: run it and print the report.
pub fn run_rl(args: &RlArgs) -> Result<()> {
    let request = RlRequest {
        checkpoint: args.checkpoint.clone(),
        out: args.out.clone(),
        overwrite: args.overwrite,
        reward: args.reward.clone(),
        prompts: args.prompts.clone(),
        config: args.config.clone(),
        progress: !args.no_progress,
        precision: args.precision,
    };
    let r = rl::run(&request, &args.device.device()?)?;
    let mut out = std::io::stdout().lock();
    if args.report.json() {
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
