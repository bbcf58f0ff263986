//! The training loop: warmup + cosine schedule, AdamW or SGLD, gradient clipping, periodic evaluation on
//! a fixed set of validation windows, `metrics.jsonl`, atomic checkpoints and exact resume.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainState};
use crate::config::{ModelConfig, OptimizerKind, RunConfig, TrainConfig, TrainOptions, FORMAT_VERSION};
use crate::data::{self, Batch, Splits};
use crate::error::UsageError;
use crate::plot;
use crate::generate::{self, SampleOptions};
use crate::loss;
use crate::memory;
use crate::model::Gpt;
use crate::optim::{self, AdamW, AdamWConfig, Optimizer, Sgld, SgldConfig};
use crate::params::Params;
use crate::rng::{rng, RngStream};
use crate::tokenizer::Tok;

/// What to train and where.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Options from `--config` and flags (unset ones take the defaults, or the checkpoint's on resume).
    pub options: TrainOptions,
    /// Run directory.
    pub out: PathBuf,
    /// Continue the checkpoint in `out`.
    pub resume: bool,
    /// Replace a checkpoint already in `out`.
    pub overwrite: bool,
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// End this session after this step (checkpointed there) while keeping the schedule of the
    /// full `steps`; `--resume` continues from it.
    pub stop_after: Option<usize>,
}

/// One record of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Optimizer steps completed.
    pub step: usize,
    /// Mean training loss (smoothed, what is minimised) over the steps since the last record.
    pub train_loss: Option<f64>,
    /// Validation cross-entropy, nats/token, unsmoothed, of the tokens predicted with at least one
    /// token of context (comparable with trainers that have no BOS, such as nanoGPT).
    pub val_ce: f64,
    /// Validation cross-entropy of every position, the first (predicted from BOS alone) included.
    pub val_ce_bos: f64,
    /// Validation loss with the run's label smoothing (every position).
    pub val_loss: f64,
    /// Validation tokens evaluated: a fixed subset at intermediate steps, the whole validation
    /// split at the last step of a session.
    pub val_tokens: usize,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training throughput since the last record (target tokens per second).
    pub tokens_per_sec: Option<f64>,
    /// Wall-clock seconds of training so far.
    pub elapsed_secs: f64,
}

/// The outcome of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub steps: usize,
    pub params: usize,
    pub val_ce: f64,
    pub train_loss: Option<f64>,
    /// Seconds spent in this session (evaluation and checkpoints included).
    pub wall_secs: f64,
    /// Training tokens per second in this session (steps only).
    pub tokens_per_sec: f64,
    pub sample: Option<String>,
}

/// Validation figures of one evaluation, nats per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Cross-entropy of the tokens predicted with at least one real token of context (every
    /// position but the first): the protocol of trainers without BOS (nanoGPT), so comparable.
    pub ce: f64,
    /// Cross-entropy of every position, the first (predicted from BOS alone) included: the mean
    /// energy per token that scoring a window as BOS + tokens gives.
    pub ce_bos: f64,
    /// The training objective (label-smoothed) over every position.
    pub loss: f64,
}

/// Evaluate `model` on `batches`, forward-only.
pub fn evaluate(model: &Gpt, batches: &[Batch], label_smoothing: f64) -> Result<Eval> {
    let (mut with_context, mut all, mut smoothed, mut n_ctx, mut n_all) = (0f64, 0f64, 0f64, 0usize, 0usize);
    for batch in batches {
        let (b, t) = batch.targets.dims2()?;
        let logits = model.forward(&batch.inputs)?.flatten_to(1)?; // (B*T, V)
        let targets = batch.targets.flatten_all()?;
        let l = loss::cross_entropy(&logits, &targets, label_smoothing)?;
        let energies = l.energies.reshape((b, t))?; // (B, T)
        all += energies.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        with_context += energies.narrow(1, 1, t - 1)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        (n_all, n_ctx) = (n_all + b * t, n_ctx + b * (t - 1));
        smoothed += l.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * (b * t) as f64;
    }
    Ok(Eval { ce: with_context / n_ctx as f64, ce_bos: all / n_all as f64, loss: smoothed / n_all as f64 })
}

/// Keep only the records of `metrics.jsonl` up to `step` (after a resume, later ones were never
/// checkpointed and will be redone).
fn truncate_metrics(dir: &Path, step: usize) -> Result<()> {
    let path = dir.join(checkpoint::METRICS);
    let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<Metrics>(l).is_ok_and(|m| m.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&path, kept).with_context(|| format!("rewriting {}", path.display()))
}

/// Draw `curves.png` (train loss and val CE against step) from the run's `metrics.jsonl`.
pub fn write_curves(dir: &Path) -> Result<()> {
    let path = dir.join(checkpoint::METRICS);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let records: Vec<Metrics> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let train: Vec<(f64, f64)> = records.iter().filter_map(|m| Some((m.step as f64, m.train_loss?))).collect();
    let val: Vec<(f64, f64)> = records.iter().map(|m| (m.step as f64, m.val_ce)).collect();
    plot::line_panels(
        &dir.join(CURVES),
        "step",
        false,
        &[(
            "training curves",
            "nats/token",
            vec![
                plot::Series { name: "train loss (mean since last eval)", points: train },
                plot::Series { name: "val CE", points: val },
            ],
        )],
    )
}

/// File name of the training curves picture in a run directory.
pub const CURVES: &str = "curves.png";

fn append_metrics(dir: &Path, m: &Metrics) -> Result<()> {
    let path = dir.join(checkpoint::METRICS);
    let mut f = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("writing {}", path.display()))
}

/// A non-finite loss or gradient: the step was not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Diverged(pub String);

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}

/// One optimizer step on `batch`: forward, label-smoothed loss, backward, global-norm clipping
/// and an optimizer update at `lr`. Returns the loss; a non-finite loss or gradient norm is a [`Diverged`] error
/// and leaves the parameters untouched.
pub fn train_step(model: &Gpt, params: &Params, optimizer: &mut Optimizer, batch: &Batch, label_smoothing: f64, lr: f64, grad_clip: f64) -> Result<f64> {
    let logits = model.forward(&batch.inputs)?.flatten_to(1)?; // (B*T, V)
    let l = loss::cross_entropy_with(&logits, &batch.targets.flatten_all()?, label_smoothing, model.kernels())?;
    let loss_value = l.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss_value.is_finite() {
        return Err(Diverged(format!("the loss is {loss_value}")).into());
    }
    let grads = l.loss.backward()?;
    let norm = optim::grad_norm(params.trainable(), &grads, model.kernels())?;
    if !norm.is_finite() {
        return Err(Diverged(format!("the gradient norm is {norm}")).into());
    }
    optimizer.step(&grads, lr, optim::clip_scale(norm, grad_clip))?;
    Ok(loss_value)
}

/// Everything the loop needs, from a fresh start or a checkpoint.
struct Setup {
    run: RunConfig,
    tok: Tok,
    params: Params,
    model: Gpt,
    optimizer: Optimizer,
    state: TrainState,
    batch_rng: ChaCha8Rng,
    splits: Splits,
    resumed: bool,
}

fn fresh(req: &TrainRequest, dev: &Device) -> Result<Setup> {
    checkpoint::check_writable(&req.out, req.overwrite, "--resume to continue it or --overwrite to start again")?;
    let train = req.options.train_config();
    train.validate()?;
    // Shape errors before the (slow) tokenizer training; the memory bound again once the
    // vocabulary is known.
    let shape = req.options.model_config(2);
    shape.validate()?;
    ensure_training_fits(dev, &shape, train.batch_size, train.optimizer.state_copies(), SHAPE_HINT)?;
    let text = data::read_corpus(&train.corpus)?;
    let tok = Tok::train(train.tokenizer, &text, train.bpe_vocab_size)?;
    let model_cfg = req.options.model_config(tok.vocab_size());
    model_cfg.validate()?;
    ensure_training_fits(dev, &model_cfg, train.batch_size, train.optimizer.state_copies(), SHAPE_HINT)?;
    // The corpus must fit the context before any memory goes to the model.
    let splits = Splits::new(&text, &tok, train.val_fraction, model_cfg.context, &train.corpus.display().to_string())?;
    let (params, model) = Params::init(&model_cfg, train.init_std, train.seed, dev)?;
    let optimizer = match train.optimizer {
        OptimizerKind::AdamW => Optimizer::AdamW(AdamW::new(params.trainable(), adamw_config(&train), model.kernels())?),
        OptimizerKind::Sgld => Optimizer::Sgld(Sgld::new(params.trainable(), sgld_config(&train))),
    };
    let batch_rng = rng(train.seed, RngStream::Batches);
    let state = TrainState {
        step: 0,
        rng_seed: train.seed,
        rng_word_pos: batch_rng.get_word_pos().to_string(),
        tokens_seen: 0,
        elapsed_secs: 0.0,
        val_ce: None,
        corpus_hash: checkpoint::corpus_hash(&text),
    };
    let run = RunConfig { format_version: FORMAT_VERSION, model: model_cfg, train };
    Ok(Setup { run, tok, params, model, optimizer, state, batch_rng, splits, resumed: false })
}

/// A usage error when a training step of this shape at `batch` windows of `model.context`
/// tokens, with `state_copies` parameter-sized optimizer tensors, cannot fit in the memory of
/// `dev`'s host; `hint` names the flags that make it smaller.
pub fn ensure_training_fits(dev: &Device, model: &ModelConfig, batch: usize, state_copies: u64, hint: &str) -> Result<()> {
    memory::ensure_fits_on(
        dev,
        &format!("training {} layers x {} wide at batch {batch} x context {}", model.n_layer, model.d_model, model.context),
        model.training_bytes(batch, state_copies),
        hint,
    )
}

const SHAPE_HINT: &str = "lower --batch-size, --context, --d-model or --layers";

fn resumed(req: &TrainRequest, dev: &Device) -> Result<Setup> {
    if !checkpoint::exists(&req.out) {
        return Err(UsageError(format!("--resume: {} holds no checkpoint to continue", req.out.display())).into());
    }
    let saved = checkpoint::load_resumable(&req.out, dev)?;
    req.options.check_resumable(&saved.config)?;
    let train = req.options.apply_to(&saved.config.train);
    train.validate()?;
    ensure_training_fits(dev, &saved.config.model, train.batch_size, train.optimizer.state_copies(), "lower --batch-size")?;
    let done = saved.state.step;
    let raise = if done >= train.steps {
        Some(format!("raise --steps (now {}) to train further", train.steps))
    } else {
        req.stop_after.filter(|&n| n <= done).map(|n| format!("raise --stop-after (now {n}) to train further"))
    };
    if let Some(raise) = raise {
        return Err(UsageError(format!("--resume: {} is already at step {done}; {raise}", req.out.display())).into());
    }
    let text = data::read_corpus(&train.corpus)?;
    if checkpoint::corpus_hash(&text) != saved.state.corpus_hash {
        bail!(
            "--resume: corpus {} is not the text {} was trained on (its content changed); resume on the same text",
            train.corpus.display(),
            req.out.display()
        );
    }
    let splits = Splits::new(&text, &saved.tokenizer, train.val_fraction, saved.config.model.context, &train.corpus.display().to_string())?;
    let optimizer = match train.optimizer {
        OptimizerKind::AdamW if saved.optimizer_state.is_empty() => {
            // Written without moments (an rl output): a step count for them would be a guess.
            crate::progress::note(format!("{} holds no optimizer state (it was not written by train): AdamW's moments start from zero", req.out.display()));
            Optimizer::AdamW(AdamW::new(saved.params.trainable(), adamw_config(&train), saved.model.kernels())?)
        }
        OptimizerKind::AdamW => Optimizer::AdamW(
            AdamW::restore(saved.params.trainable(), adamw_config(&train), saved.model.kernels(), done as u64, &saved.optimizer_state)
                .with_context(|| format!("restoring the optimizer from {}", req.out.join(checkpoint::OPTIMIZER).display()))?,
        ),
        OptimizerKind::Sgld => Optimizer::Sgld(Sgld::resume(saved.params.trainable(), sgld_config(&train), done as u64)),
    };
    let mut batch_rng = rng(saved.state.rng_seed, RngStream::Batches);
    let pos: u128 = saved.state.rng_word_pos.parse().context("state.json: rng_word_pos is not a number")?;
    batch_rng.set_word_pos(pos);
    truncate_metrics(&req.out, done)?;
    let run = RunConfig { format_version: FORMAT_VERSION, model: saved.config.model, train };
    Ok(Setup {
        run,
        tok: saved.tokenizer,
        params: saved.params,
        model: saved.model,
        optimizer,
        state: saved.state,
        batch_rng,
        splits,
        resumed: true,
    })
}

/// AdamW's settings in a training configuration.
pub fn adamw_config(t: &TrainConfig) -> AdamWConfig {
    AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.adam_eps, weight_decay: t.weight_decay }
}

fn sgld_config(t: &TrainConfig) -> SgldConfig {
    SgldConfig { temperature: t.sgld_temperature, weight_decay: t.weight_decay, seed: t.seed }
}

/// Train (or continue training) a model and checkpoint it into `req.out`.
pub fn train(req: &TrainRequest, dev: &Device) -> Result<TrainReport> {
    let session_start = Instant::now();
    let mut s = if req.resume { resumed(req, dev)? } else { fresh(req, dev)? };
    let (cfg, context, bos) = (s.run.train.clone(), s.run.model.context, s.tok.bos());
    let splits = std::mem::replace(&mut s.splits, Splits { train: Vec::new(), val: Vec::new() });
    let evals = data::tiled_batches(&splits.val, Some(cfg.eval_batches.saturating_mul(cfg.batch_size)), cfg.batch_size, context, bos, dev)?;
    // The last evaluation of a run covers the whole validation split.
    let full_eval = data::tiled_batches(&splits.val, None, cfg.batch_size, context, bos, dev)?;
    fs::create_dir_all(&req.out).with_context(|| format!("creating run directory {}", req.out.display()))?;

    let pb = crate::progress::bar(cfg.steps, s.state.step, req.progress);
    let log = |line: String| pb.suspend(|| crate::progress::note(&line));
    log(format!(
        "{} {} parameters, {} layers x {} heads x {} wide, context {}, vocab {} ({}); {} train / {} val tokens",
        if s.resumed { format!("resuming {} at step {}:", req.out.display(), s.state.step) } else { "training".to_string() },
        s.params.count(),
        s.run.model.n_layer,
        s.run.model.n_head,
        s.run.model.d_model,
        context,
        s.tok.vocab_size(),
        crate::config::spelled(&s.tok.kind()),
        splits.train.len(),
        splits.val.len(),
    ));

    let checkpoint_now = |s: &mut Setup, train_loss: Option<f64>, lr: f64, tok_s: Option<f64>, elapsed: f64, last: bool| -> Result<f64> {
        let eval_model = s.params.detached_model(&s.run.model)?;
        let batches = if last { &full_eval } else { &evals };
        let ev = evaluate(&eval_model, batches, cfg.label_smoothing)?;
        let val_ce = ev.ce;
        if !(val_ce.is_finite() && ev.loss.is_finite()) {
            bail!(
                "the validation cross-entropy is {val_ce} (smoothed loss {}) at step {}; nothing was saved, and any earlier checkpoint in {} is kept",
                ev.loss,
                s.state.step,
                req.out.display()
            );
        }
        s.state.val_ce = Some(val_ce);
        s.state.elapsed_secs = elapsed;
        s.state.rng_word_pos = s.batch_rng.get_word_pos().to_string();
        let m = Metrics {
            step: s.state.step,
            train_loss,
            val_ce,
            val_ce_bos: ev.ce_bos,
            val_loss: ev.loss,
            val_tokens: batches.iter().map(|b| b.targets.elem_count()).sum(),
            lr,
            tokens_per_sec: tok_s,
            elapsed_secs: elapsed,
        };
        append_metrics(&req.out, &m)?;
        checkpoint::save(&req.out, &s.run, &s.tok, &s.params, s.optimizer.state_tensors()?, &s.state)?;
        log(format!(
            "step {:>5}: train loss {}, val CE {val_ce:.4} (with the BOS-only first token {:.4}) nats/token, lr {lr:.2e}{}",
            s.state.step,
            train_loss.map_or("   -  ".into(), |l| format!("{l:.4}")),
            ev.ce_bos,
            tok_s.map_or(String::new(), |t| format!(", {t:.0} tok/s")),
        ));
        Ok(val_ce)
    };

    let elapsed_before = s.state.elapsed_secs;
    let mut last_val = s.state.val_ce;
    if !s.resumed {
        // A fresh run starts a fresh metrics file (after every input check has passed).
        let _ = fs::remove_file(req.out.join(checkpoint::METRICS));
        last_val = Some(checkpoint_now(&mut s, None, 0.0, None, 0.0, false)?);
    }

    let tokens_per_step = (cfg.batch_size * context) as u64;
    let loop_start = Instant::now();
    let (mut step_secs, mut session_tokens) = (0f64, 0u64);
    let (mut window_loss, mut window_steps, mut window_secs) = (0f64, 0usize, 0f64);
    let mut last_train_loss = None;
    let stop_at = req.stop_after.map_or(cfg.steps, |n| n.min(cfg.steps));
    while s.state.step < stop_at {
        let t0 = Instant::now();
        let lr = optim::lr_at(s.state.step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps);
        let starts = data::random_starts(&mut s.batch_rng, splits.train.len(), context, cfg.batch_size)?;
        let batch = data::batch_at(&splits.train, &starts, context, bos, dev)?;
        let loss_value = match train_step(&s.model, &s.params, &mut s.optimizer, &batch, cfg.label_smoothing, lr, cfg.grad_clip) {
            Ok(l) => l,
            Err(e) if e.is::<Diverged>() => bail!(
                "training diverged at step {}: {e}; the last good checkpoint in {} is kept (try a lower --lr)",
                s.state.step + 1,
                req.out.display()
            ),
            Err(e) => return Err(e),
        };
        s.state.step += 1;
        s.state.tokens_seen += tokens_per_step;
        session_tokens += tokens_per_step;
        let dt = t0.elapsed().as_secs_f64();
        step_secs += dt;
        window_secs += dt;
        window_loss += loss_value;
        window_steps += 1;

        let tok_s = (window_steps as u64 * tokens_per_step) as f64 / window_secs;
        if s.state.step % cfg.eval_every == 0 || s.state.step == stop_at {
            let mean_loss = window_loss / window_steps as f64;
            last_train_loss = Some(mean_loss);
            let elapsed = elapsed_before + loop_start.elapsed().as_secs_f64();
            let last = s.state.step == stop_at;
            last_val = Some(checkpoint_now(&mut s, Some(mean_loss), lr, Some(tok_s), elapsed, last)?);
            (window_loss, window_steps, window_secs) = (0.0, 0, 0.0);
        }
        pb.set_position(s.state.step as u64);
        pb.set_message(format!(
            "loss {loss_value:.4} | val {} | {tok_s:.0} tok/s",
            last_val.map_or("-".to_string(), |v| format!("{v:.4}"))
        ));
    }
    pb.finish_and_clear();
    if let Err(e) = write_curves(&req.out) {
        crate::progress::note(format!("warning: could not draw the training curves: {e:#}"));
    }

    let sample = if cfg.sample_tokens > 0 {
        let model = s.params.detached_model(&s.run.model)?;
        let mut sample_rng = rng(cfg.seed, RngStream::Sample);
        let opts = SampleOptions::with_temperature(0.8);
        let ids = generate::sample(&model, bos, &[], cfg.sample_tokens, opts, &mut sample_rng)?;
        Some(s.tok.decode(&ids)?)
    } else {
        None
    };
    Ok(TrainReport {
        out: req.out.clone(),
        steps: s.state.step,
        params: s.params.count(),
        val_ce: last_val.unwrap_or(f64::NAN),
        train_loss: last_train_loss,
        wall_secs: session_start.elapsed().as_secs_f64(),
        tokens_per_sec: if step_secs > 0.0 { session_tokens as f64 / step_secs } else { 0.0 },
        sample,
    })
}
