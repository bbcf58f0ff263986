//! An rl run from start to finish, as [`crate::train::train`] is for training: check the
//! directories, read the source run (never writing to it), bound the memory, write `rl.json`,
//! measure the validation cross-entropy and the policy before and after, update the policy with
//! one record per update in `rl_metrics.jsonl`, and save an ordinary run directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::{parse_reward, Evaluation, RlConfig, Trainer, EVAL_ROLLOUTS};
use crate::checkpoint;
use crate::config::{OptimizerKind, RunConfig};
use crate::data::{self, tokenizer::Tok, Batch};
use crate::error::UsageError;
use crate::memory;
use crate::model::params::Params;

/// File names in the output directory.
pub const RL_METRICS: &str = "rl_metrics.jsonl";
pub const RL_CONFIG: &str = "rl.json";

/// Validation windows per forward pass when measuring the validation cross-entropy.
const VAL_BATCH: usize = 16;

/// What to fine-tune, toward what, and where to write it.
#[derive(Debug, Clone)]
pub struct RlRequest {
    /// The run to start from: the policy's first weights and the frozen reference pi_ref.
    pub checkpoint: PathBuf,
    /// The run directory to write.
    pub out: PathBuf,
    /// Replace a checkpoint already in `out`.
    pub overwrite: bool,
    /// The reward, as `--reward` spells it ([`parse_reward`]).
    pub reward: String,
    /// A file of prompts, one per non-empty line (None: BOS alone).
    pub prompts: Option<PathBuf>,
    pub config: RlConfig,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The arithmetic of the products, for the policy, the reference and the evaluations.
    pub precision: crate::config::Precision,
}

/// The outcome of an rl run.
#[derive(Debug, Clone, Serialize)]
pub struct RlReport {
    pub out: PathBuf,
    pub steps: usize,
    /// The policy on fresh continuations before the first update and after the last.
    pub before: Evaluation,
    pub after: Evaluation,
    /// Validation cross-entropy (nats/token) of the starting model and of the policy; None when
    /// the run's corpus is gone or changed.
    pub val_ce_before: Option<f64>,
    pub val_ce_after: Option<f64>,
    /// Continuations drawn for each evaluation, over how many prompts, of how many tokens.
    pub eval_rollouts: usize,
    pub prompts: usize,
    pub tokens: usize,
}

/// Run `req` on `dev`.
pub fn run(req: &RlRequest, dev: &Device) -> Result<RlReport> {
    crate::kernels::bf16::require(req.precision)?;
    let cfg = &req.config;
    if req.out == req.checkpoint || req.out.canonicalize().ok().is_some_and(|o| req.checkpoint.canonicalize().is_ok_and(|c| c == o)) {
        return Err(UsageError("--out must differ from --checkpoint: the starting run is the frozen reference and is never overwritten".into()).into());
    }
    checkpoint::check_writable(&req.out, req.overwrite, "--overwrite to replace it")?;
    // Read-only: the starting run is the frozen reference, and nothing in it is touched.
    let source = checkpoint::load_source(&req.checkpoint, dev)?;
    let tok = &source.tokenizer;
    let prompts = read_prompts(req.prompts.as_ref(), tok)?;
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
        dev,
        &format!("rl on {} rollouts of {len} tokens (an update) and {eval_batch} at once (an evaluation)", cfg.batch_size),
        rollout.training_bytes(cfg.batch_size, state + 1).max(rollout.forward_bytes(eval_batch).saturating_add(resident)),
        "lower --batch-size or --tokens",
    )?;
    let reward = parse_reward(&req.reward, tok, dev)?;

    fs::create_dir_all(&req.out).with_context(|| format!("creating {}", req.out.display()))?;
    let options = serde_json::json!({ "checkpoint": req.checkpoint, "reward": req.reward, "prompts": req.prompts, "config": cfg });
    fs::write(req.out.join(RL_CONFIG), serde_json::to_string_pretty(&options)?).with_context(|| format!("writing {}", req.out.join(RL_CONFIG).display()))?;
    let metrics_path = req.out.join(RL_METRICS);
    let mut metrics = OpenOptions::new().create(true).write(true).truncate(true).open(&metrics_path).with_context(|| format!("opening {}", metrics_path.display()))?;

    // What the reward costs the language model: cross-entropy on the run's own validation split,
    // before and after, measured alike (at most the run's --eval-tokens targets, as training's last evaluation).
    let val_batches = validation_batches(&source.config, tok, &source.state.corpus_hash, dev)
        .map_err(|e| crate::progress::note(format!("warning: the validation cross-entropy will not be measured: {e:#}")))
        .ok();
    let val_ce = |params: &Params| -> Result<Option<f64>> {
        let Some(batches) = &val_batches else { return Ok(None) };
        let mut model = params.detached_model(&source.config.model)?;
        model.set_precision(req.precision);
        Ok(Some(crate::train::evaluate(&model, batches, 0.0)?.ce))
    };
    let val_ce_before = val_ce(&source.params)?;

    let model_cfg = source.config.model.clone();
    let mut trainer = Trainer::new(source.params, source.model, &model_cfg, tok.bos(), cfg.clone())?;
    trainer.set_precision(req.precision);
    let before = trainer.evaluate(&prompts, reward.as_ref(), tok, eval_n)?;

    let pb = crate::progress::bar(cfg.steps, 0, req.progress);
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
    checkpoint::save(&req.out, &source.config, tok, trainer.params(), Default::default(), &state)?;
    Ok(RlReport {
        out: req.out.clone(),
        steps: cfg.steps,
        before,
        after,
        val_ce_before,
        val_ce_after,
        eval_rollouts: eval_n,
        prompts: prompts.len(),
        tokens: cfg.tokens,
    })
}

/// The prompts of `path`, one per non-empty line, encoded; BOS alone (one empty prompt) without
/// a file.
fn read_prompts(path: Option<&PathBuf>, tok: &Tok) -> Result<Vec<Vec<u32>>> {
    let Some(path) = path else { return Ok(vec![Vec::new()]) };
    let text = fs::read_to_string(path).with_context(|| format!("reading prompts {}", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err(UsageError(format!("--prompts {} has no non-empty line", path.display())).into());
    }
    lines.iter().map(|l| tok.encode(l).with_context(|| format!("encoding prompt {l:?}"))).collect()
}

/// The run's validation split in tiles of BOS + context - 1 tokens, at most its --eval-tokens
/// targets (as training's last evaluation reads it), or why it cannot be read: the corpus is gone or changed, or the pass
/// would not fit in memory.
fn validation_batches(config: &RunConfig, tok: &Tok, corpus_hash: &str, dev: &Device) -> Result<Vec<Batch>> {
    let val = data::validation_split(config, tok, Some(corpus_hash), None)?;
    memory::ensure_fits_on(dev, &format!("a forward pass over {VAL_BATCH} validation windows"), config.model.forward_bytes(VAL_BATCH), "free some memory")?;
    data::tiled_batches(val.tokens(), config.train.eval_tokens.windows(config.model.context), VAL_BATCH, config.model.context, tok.bos(), dev)
}
