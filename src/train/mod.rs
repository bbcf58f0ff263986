//! The training loop: warmup + cosine schedule, AdamW or SGLD, gradient clipping, periodic evaluation on
//! a fixed set of validation windows, `metrics.jsonl`, atomic checkpoints and exact resume.

pub mod evaluate;
pub mod metrics;
pub mod optim;

pub use evaluate::{evaluate, evaluate_windows, Eval};
pub use metrics::{write_curves, Metrics, CURVES};

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::checkpoint::{self, TrainState};
use crate::config::{OptimizerKind, RunConfig, TrainConfig, TrainOptions, FORMAT_VERSION};
use crate::data::tokenizer::Tok;
use crate::data::corpus::Corpus;
use crate::data::{self, tokens, Batch, Splits};
use crate::error::{Diverged, UsageError};
use crate::memory;
use crate::model::loss;
use crate::model::params::Params;
use crate::model::Gpt;
use crate::rng::{rng, RngStream};
use metrics::{append_metrics, truncate_metrics};
use optim::{AdamW, AdamWConfig, Optimizer, Sgld, SgldConfig};

/// What to train and where.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Options from `--config` and flags (unset ones take the defaults, or the checkpoint's on resume).
    pub options: TrainOptions,
    /// Run directory.
    pub out: PathBuf,
    /// Continue the checkpoint in `out`.
    pub resume: bool,
    /// Fine-tune this run directory (trained here or imported) instead of initialising afresh.
    pub init_from: Option<PathBuf>,
    /// Replace a checkpoint already in `out`.
    pub overwrite: bool,
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// End this session after this step (checkpointed there) while keeping the schedule of the
    /// full `steps`; `--resume` continues from it.
    pub stop_after: Option<usize>,
}

/// The outcome of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub steps: usize,
    pub params: usize,
    pub val_ce: f64,
    /// Validation targets the last evaluation of this session covered (None when it took no step).
    pub val_tokens: Option<usize>,
    pub train_loss: Option<f64>,
    /// Seconds spent in this session (evaluation and checkpoints included).
    pub wall_secs: f64,
    /// Training tokens per second in this session (steps only).
    pub tokens_per_sec: f64,
}

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

/// The windows an evaluation covers: the fixed subset built once, or the last evaluation's,
/// built as they are read.
#[derive(Clone, Copy)]
enum EvalSet<'a, 'w> {
    Fixed(&'a [Batch]),
    Windows(&'a data::Windows<'w>),
}

/// What the steps since the last evaluation measured, for its metrics record.
struct Record {
    /// Mean training loss over those steps (None before the first step).
    train_loss: Option<f64>,
    /// Learning rate of the last step.
    lr: f64,
    tokens_per_sec: Option<f64>,
    /// Wall-clock seconds of training so far, all sessions.
    elapsed: f64,
}

impl Setup {
    /// Evaluate on `batches`, append the metrics record and save a checkpoint into `out`: the
    /// validation CE, the targets it covered and the line to log. A non-finite validation figure saves nothing.
    fn checkpoint(&mut self, out: &std::path::Path, batches: EvalSet, r: &Record) -> Result<(f64, usize, String)> {
        let mut model = self.params.detached_model(&self.run.model)?;
        model.set_precision(self.run.train.precision);
        let ev = match batches {
            EvalSet::Fixed(b) => evaluate(&model, b, self.run.train.label_smoothing)?,
            EvalSet::Windows(w) => evaluate::evaluate_windows(&model, w, self.run.train.label_smoothing)?,
        };
        let val_ce = ev.ce;
        if !(val_ce.is_finite() && ev.loss.is_finite()) {
            bail!(
                "the validation cross-entropy is {val_ce} (smoothed loss {}) at step {}; nothing was saved, and any earlier checkpoint in {} is kept",
                ev.loss,
                self.state.step,
                out.display()
            );
        }
        self.state.val_ce = Some(val_ce);
        self.state.elapsed_secs = r.elapsed;
        self.state.rng_word_pos = self.batch_rng.get_word_pos().to_string();
        let m = Metrics {
            step: self.state.step,
            train_loss: r.train_loss,
            val_ce,
            val_ce_bos: ev.ce_bos,
            val_loss: ev.loss,
            val_tokens: ev.targets,
            lr: r.lr,
            tokens_per_sec: r.tokens_per_sec,
            elapsed_secs: r.elapsed,
        };
        append_metrics(out, &m)?;
        checkpoint::save(out, &self.run, &self.tok, &self.params, self.optimizer.state_tensors()?, &self.state)?;
        let line = format!(
            "step {:>5}: train loss {}, val CE {val_ce:.4} (with the BOS-only first token {:.4}) nats/token over {} targets, lr {:.2e}{}",
            self.state.step,
            r.train_loss.map_or("   -  ".into(), |l| format!("{l:.4}")),
            ev.ce_bos,
            ev.targets,
            r.lr,
            r.tokens_per_sec.map_or(String::new(), |t| format!(", {t:.0} tok/s")),
        );
        Ok((val_ce, ev.targets, line))
    }
}

fn fresh(req: &TrainRequest, dev: &Device) -> Result<Setup> {
    checkpoint::check_writable(&req.out, req.overwrite, "--resume to continue it or --overwrite to start again")?;
    let train = req.options.train_config();
    train.validate()?;
    // Shape errors before the (slow) tokenizer training; the memory bound again once the
    // vocabulary is known.
    let shape = req.options.model_config(2);
    shape.validate()?;
    memory::ensure_training_fits(dev, &shape, train.batch_size, train.optimizer.state_copies(), memory::SHAPE_HINT)?;
    let corpus = Corpus::open(&train.corpus, train.json_field())?;
    let tok = data::corpus_tokenizer(&corpus, &train, req.progress)?;
    let model_cfg = req.options.model_config(tok.vocab_size());
    model_cfg.validate()?;
    memory::ensure_training_fits(dev, &model_cfg, train.batch_size, train.optimizer.state_copies(), memory::SHAPE_HINT)?;
    // The corpus must fit the context before any memory goes to the model.
    let splits = Splits::new(tokens::tokenize(&corpus, &tok, req.progress)?, train.val_fraction, model_cfg.context, corpus.name())?;
    let (params, model) = Params::init(&model_cfg, train.init_std, train.seed, dev)?;
    let run = RunConfig { format_version: FORMAT_VERSION, model: model_cfg, train, imported_from: None };
    Setup::at_step_zero(run, tok, params, model, splits)
}

impl Setup {
    /// A run at step 0 over `params`: a fresh optimizer, the batch RNG at its start, and a state
    /// that records the fingerprint of the corpus text `splits` came from.
    fn at_step_zero(run: RunConfig, tok: Tok, params: Params, model: Gpt, splits: Splits) -> Result<Self> {
        let train = &run.train;
        let optimizer = match train.optimizer {
            OptimizerKind::AdamW => Optimizer::AdamW(AdamW::new(params.trainable(), adamw_config(train), model.kernels())?),
            OptimizerKind::Sgld => Optimizer::Sgld(Sgld::new(params.trainable(), sgld_config(train))),
        };
        let batch_rng = rng(train.seed, RngStream::Batches);
        let state = TrainState {
            step: 0,
            rng_seed: train.seed,
            rng_word_pos: batch_rng.get_word_pos().to_string(),
            tokens_seen: 0,
            elapsed_secs: 0.0,
            val_ce: None,
            corpus_hash: splits.text_hash().to_string(),
        };
        Ok(Setup { run, tok, params, model, optimizer, state, batch_rng, splits, resumed: false })
    }
}

/// A fine-tuning run: the weights and tokenizer of `source`, a fresh optimizer and schedule, on
/// the corpus of `req` (nanoGPT's `init_from`).
fn fine_tune(req: &TrainRequest, source: &std::path::Path, dev: &Device) -> Result<Setup> {
    if source.canonicalize().ok().is_some_and(|s| req.out.canonicalize().ok() == Some(s)) {
        return Err(UsageError(format!("--init-from and --out both name {}; fine-tune into another directory", source.display())).into());
    }
    checkpoint::check_writable(&req.out, req.overwrite, "--overwrite to replace it")?;
    let mut shaping = req.options.model_options_set();
    if req.options.tokenizer.is_some() {
        shaping.push("--tokenizer".into());
    }
    if req.options.vocab_size.is_some() {
        shaping.push("--vocab-size".into());
    }
    if !shaping.is_empty() {
        return Err(UsageError(format!("--init-from takes the model and its tokenizer from {}; drop {}", source.display(), shaping.join(", "))).into());
    }
    let src = checkpoint::load_source(source, dev)?;
    let mut train = req.options.train_config();
    train.tokenizer = src.tokenizer.kind();
    train.init_from = Some(source.to_path_buf());
    train.validate()?;
    memory::ensure_training_fits(dev, &src.config.model, train.batch_size, train.optimizer.state_copies(), "lower --batch-size")?;
    let corpus = Corpus::open(&train.corpus, train.json_field())?;
    let file = tokens::tokenize(&corpus, &src.tokenizer, req.progress)?;
    let splits = Splits::new(file, train.val_fraction, src.config.model.context, corpus.name())?;
    let run = RunConfig { format_version: FORMAT_VERSION, model: src.config.model, train, imported_from: src.config.imported_from };
    Setup::at_step_zero(run, src.tokenizer, src.params, src.model, splits)
}

fn resumed(req: &TrainRequest, dev: &Device) -> Result<Setup> {
    if !checkpoint::exists(&req.out) {
        return Err(UsageError(format!("--resume: {} holds no checkpoint to continue", req.out.display())).into());
    }
    let saved = checkpoint::load_resumable(&req.out, dev)?;
    if saved.config.imported_from.is_some() && saved.state.step == 0 {
        return Err(UsageError(format!("--resume: {} is an imported model with no training to continue; fine-tune it with --init-from {} --out NEW_DIR", req.out.display(), req.out.display())).into());
    }
    req.options.check_resumable(&saved.config)?;
    let train = req.options.apply_to(&saved.config.train);
    train.validate()?;
    memory::ensure_training_fits(dev, &saved.config.model, train.batch_size, train.optimizer.state_copies(), "lower --batch-size")?;
    let done = saved.state.step;
    let raise = if done >= train.steps {
        Some(format!("raise --steps (now {}) to train further", train.steps))
    } else {
        req.stop_after.filter(|&n| n <= done).map(|n| format!("raise --stop-after (now {n}) to train further"))
    };
    if let Some(raise) = raise {
        return Err(UsageError(format!("--resume: {} is already at step {done}; {raise}", req.out.display())).into());
    }
    let corpus = Corpus::open(&train.corpus, train.json_field())?;
    let file = tokens::tokenize(&corpus, &saved.tokenizer, req.progress)?;
    if file.header().text_hash != saved.state.corpus_hash {
        bail!(
            "--resume: corpus {} is not the text {} was trained on (its content changed); resume on the same text",
            corpus.name(),
            req.out.display()
        );
    }
    let splits = Splits::new(file, train.val_fraction, saved.config.model.context, corpus.name())?;
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
    let run = RunConfig { format_version: FORMAT_VERSION, model: saved.config.model, train, imported_from: saved.config.imported_from };
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
    train_with(req, dev, || Ok(()))
}

/// [`train`], calling `between_steps` before every step: an error from it (an interrupt, say)
/// stops the run there, checkpointed at the last step taken, and is returned.
pub fn train_with(req: &TrainRequest, dev: &Device, mut between_steps: impl FnMut() -> Result<()>) -> Result<TrainReport> {
    let session_start = Instant::now();
    let mut s = match (&req.init_from, req.resume) {
        (_, true) => resumed(req, dev)?,
        (Some(source), false) => fine_tune(req, source, dev)?,
        (None, false) => fresh(req, dev)?,
    };
    crate::kernels::bf16::require(s.run.train.precision)?;
    s.model.set_precision(s.run.train.precision);
    let (cfg, context, bos) = (s.run.train.clone(), s.run.model.context, s.tok.bos());
    let splits = s.splits.clone();
    let evals = data::tiled_batches(splits.val(), Some(cfg.eval_batches.saturating_mul(cfg.batch_size)), cfg.batch_size, context, bos, dev)?;
    // The last evaluation of a run covers up to --eval-tokens targets, its batches built as it goes.
    let final_eval = data::Windows::tiled(splits.val(), cfg.eval_tokens.windows(context), cfg.batch_size, context, bos, dev)?;
    fs::create_dir_all(&req.out).with_context(|| format!("creating run directory {}", req.out.display()))?;

    let pb = crate::progress::bar(cfg.steps, s.state.step, req.progress);
    let log = |line: String| pb.suspend(|| crate::progress::note(&line));
    log(format!(
        "{} {} parameters, {} layers x {} heads x {} wide, context {}, vocab {} ({}); {} train / {} val tokens; set up in {:.2} s",
        if s.resumed { format!("resuming {} at step {}:", req.out.display(), s.state.step) } else { "training".to_string() },
        s.params.count(),
        s.run.model.n_layer,
        s.run.model.n_head,
        s.run.model.d_model,
        context,
        s.tok.vocab_size(),
        crate::config::spelled(&s.tok.kind()),
        splits.train().len(),
        splits.val().len(),
        session_start.elapsed().as_secs_f64(),
    ));

    let elapsed_before = s.state.elapsed_secs;
    let mut last_val = s.state.val_ce;
    if !s.resumed {
        // A fresh run starts a fresh metrics file (after every input check has passed).
        let _ = fs::remove_file(req.out.join(checkpoint::METRICS));
        let (val_ce, _, line) = s.checkpoint(&req.out, EvalSet::Fixed(&evals), &Record { train_loss: None, lr: 0.0, tokens_per_sec: None, elapsed: 0.0 })?;
        log(line);
        last_val = Some(val_ce);
    }

    let tokens_per_step = (cfg.batch_size * context) as u64;
    let loop_start = Instant::now();
    let (mut step_secs, mut session_tokens) = (0f64, 0u64);
    let (mut window_loss, mut window_steps, mut window_secs) = (0f64, 0usize, 0f64);
    let mut last_train_loss = None;
    let mut last_targets = None;
    let stop_at = req.stop_after.map_or(cfg.steps, |n| n.min(cfg.steps));
    let mut saved_at = s.state.step;
    while s.state.step < stop_at {
        if let Err(e) = between_steps() {
            if s.state.step > saved_at {
                let mean_loss = (window_steps > 0).then(|| window_loss / window_steps as f64);
                let lr = optim::lr_at(s.state.step - 1, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps);
                let record = Record { train_loss: mean_loss, lr, tokens_per_sec: None, elapsed: elapsed_before + loop_start.elapsed().as_secs_f64() };
                let (_, _, line) = s.checkpoint(&req.out, EvalSet::Fixed(&evals), &record)?;
                log(line);
            }
            pb.finish_and_clear();
            crate::progress::note(format!("stopped at step {}: the checkpoint in {} is kept; --resume continues it", s.state.step, req.out.display()));
            return Err(e);
        }
        let t0 = Instant::now();
        let lr = optim::lr_at(s.state.step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps);
        let starts = data::random_starts(&mut s.batch_rng, splits.train().len(), context, cfg.batch_size)?;
        let batch = data::batch_at(splits.train(), &starts, context, bos, dev)?;
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
            let record = Record { train_loss: Some(mean_loss), lr, tokens_per_sec: Some(tok_s), elapsed };
            let (val_ce, targets, line) = s.checkpoint(&req.out, if last { EvalSet::Windows(&final_eval) } else { EvalSet::Fixed(&evals) }, &record)?;
            saved_at = s.state.step;
            log(line);
            last_val = Some(val_ce);
            last_targets = Some(targets);
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

    Ok(TrainReport {
        out: req.out.clone(),
        steps: s.state.step,
        params: s.params.count(),
        val_ce: last_val.unwrap_or(f64::NAN),
        val_tokens: last_targets,
        train_loss: last_train_loss,
        wall_secs: session_start.elapsed().as_secs_f64(),
        tokens_per_sec: if step_secs > 0.0 { session_tokens as f64 / step_secs } else { 0.0 },
    })
}
