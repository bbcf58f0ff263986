//! Benchmarks of the hot paths on named shapes: training steps, batched scoring, KV-cached
//! generation. Random weights and tokens (speed does not depend on them); times are medians over
//! the measured iterations after warm-up. `scripts/bench_torch.py` runs the same shapes in PyTorch.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::{ModelConfig, Positions, Precision};
use crate::data::Batch;
use crate::physics::generate::{Generator, SampleOptions};
use crate::train::optim::{AdamW, Optimizer};
use crate::model::params::Params;
use crate::physics::score::{self, ScoreOptions};
use crate::train;

/// A model and batch shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Shape {
    pub name: &'static str,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    /// Positions per sequence (BOS included).
    pub context: usize,
    /// Sequences per training step or scoring batch.
    pub batch: usize,
    pub vocab: usize,
}

/// nanoGPT's CPU recipe: 4 layers x 4 heads x 128, context 64, batch 12, Tiny Shakespeare's 65
/// characters (+ BOS).
pub const SMALL: Shape = Shape { name: "small", n_layer: 4, n_head: 4, d_model: 128, context: 64, batch: 12, vocab: 66 };
/// The larger shape: 6 layers x 6 heads x 384, context 256, batch 64.
pub const LARGE: Shape = Shape { name: "large", n_layer: 6, n_head: 6, d_model: 384, context: 256, batch: 64, vocab: 66 };
/// Batch of the scoring benchmark (32 sequences of the shape's context).
pub const SCORE_BATCH: usize = 32;
/// Prompt of the generation benchmark, BOS included; new tokens then fill the context.
pub const PROMPT: usize = 16;

/// A named shape, as `--shape` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShapeName {
    /// nanoGPT's CPU recipe: 4 layers x 4 heads x 128, context 64, batch 12.
    Small,
    /// 6 x 6 x 384, context 256, batch 64; slow on 2 cores.
    Large,
}

impl ShapeName {
    pub fn shape(self) -> Shape {
        match self {
            ShapeName::Small => SMALL,
            ShapeName::Large => LARGE,
        }
    }
}

/// A workload, as `--work` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Work {
    /// Training steps: forward, backward, AdamW.
    Train,
    /// Scoring: 32 sequences filling the context, one forward pass.
    Score,
    /// Generation: KV cache, batch 1, a 16-token prompt, then new tokens until the context is full.
    Generate,
}

/// Measure `work` on `shape`: `iters` timed iterations after warm-up.
pub fn bench(work: Work, shape: &Shape, iters: usize, precision: Precision, ceiling: f64, dev: &Device) -> Result<Measurement> {
    match work {
        Work::Train => bench_train(shape, iters, precision, ceiling, dev),
        Work::Score => bench_score(shape, iters, precision, ceiling, dev),
        Work::Generate => bench_generate(shape, iters, precision, ceiling, dev),
    }
}

impl Shape {
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            vocab_size: self.vocab,
            context: self.context,
            n_layer: self.n_layer,
            n_head: self.n_head,
            d_model: self.d_model,
            ..ModelConfig::nano_cpu(self.vocab)
        }
    }

    /// Parameters without the position embedding (nanoGPT's N for its FLOP estimate).
    fn flop_params(&self) -> f64 {
        let cfg = self.config();
        let positions = if cfg.positions == Positions::Learned { cfg.context * cfg.d_model } else { 0 };
        (cfg.param_count() - positions as u64) as f64
    }

    /// Training FLOPs per token, nanoGPT's estimate: 6N + 12 L d T (forward + backward).
    pub fn train_flops_per_token(&self) -> f64 {
        6.0 * self.flop_params() + 12.0 * self.n_layer as f64 * self.d_model as f64 * self.context as f64
    }
}

/// One measured workload.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub shape: &'static str,
    pub work: &'static str,
    /// The arithmetic of the products.
    pub precision: Precision,
    /// Median milliseconds per iteration (a training step, a scoring batch, a whole generation).
    pub ms_per_iter: f64,
    /// Tokens per second (new tokens only for generation).
    pub tokens_per_sec: f64,
    /// Achieved GFLOP/s (nanoGPT's estimate; forward-only work counts a third of training's).
    pub gflops: f64,
    /// gflops / the measured matmul ceiling of this precision.
    pub mfu: f64,
    /// Peak resident set of the process so far, MiB (None off Linux).
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident set size of this process, MiB (Linux: VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Time `f` `iters` times after `warmup` untimed calls; each call's seconds.
fn times(warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::new();
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(ts)
}

/// The median of `times`, in seconds: what a workload takes.
fn time(warmup: usize, iters: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(median(times(warmup, iters, f)?))
}

/// The fastest of `times`, in seconds: a ceiling is the best the machine gives, and a median of a
/// few 10 ms products falls with a moment of a shared VM's contention (MFU above 100% then).
fn best_time(warmup: usize, iters: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(times(warmup, iters, f)?.into_iter().fold(f64::INFINITY, f64::min))
}

/// The matmul ceiling of a precision: GFLOP/s of a 1024 x 1024 x 1024 product (best of 9),
/// through candle in f32, through the bf16 GEMM (its process kernel) in bf16.
pub fn ceiling(precision: Precision, dev: &Device) -> Result<f64> {
    match precision {
        Precision::F32 => matmul_ceiling(dev),
        Precision::Bf16 => bf16_ceiling(),
    }
}

/// GFLOP/s of a 1024^3 product through the bf16 GEMM with both operands packed per call, as the
/// model's products are.
pub fn bf16_ceiling() -> Result<f64> {
    use crate::kernels::bf16::{gemm, Kernel};
    let kernel = Kernel::from_env().map_err(anyhow::Error::msg)?;
    let n = 1024;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let a: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0f32; n * n];
    let secs = best_time(1, 9, || {
        // SAFETY: a, b and c are n x n, row-major.
        unsafe { gemm::gemm(kernel, n, n, n, gemm::Src::f32_rows(&a, n), gemm::Src::f32_rows(&b, n), c.as_mut_ptr(), n, true) };
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

/// The matmul ceiling: GFLOP/s of a 1024 x 1024 x 1024 f32 matmul (best of 9).
pub fn matmul_ceiling(dev: &Device) -> Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let secs = best_time(1, 9, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

fn random_ids(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32 - 1)).collect()
}

fn measurement(shape: &Shape, work: &'static str, precision: Precision, secs: f64, tokens: usize, flops: f64, ceiling: f64) -> Measurement {
    let gflops = flops / secs / 1e9;
    Measurement {
        shape: shape.name,
        work,
        precision,
        ms_per_iter: secs * 1e3,
        tokens_per_sec: tokens as f64 / secs,
        gflops,
        mfu: gflops / ceiling,
        peak_rss_mib: peak_rss_mib(),
    }
}

/// Training steps (forward, loss, backward, clipping, AdamW) on random batches.
pub fn bench_train(shape: &Shape, iters: usize, precision: Precision, ceiling: f64, dev: &Device) -> Result<Measurement> {
    let cfg = shape.config();
    let (params, mut model) = Params::init(&cfg, 0.02, 1, dev)?;
    model.set_precision(precision);
    let mut opt = Optimizer::AdamW(AdamW::new(params.trainable(), crate::train::adamw_config(&crate::TrainConfig::default()), model.kernels())?);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (b, t) = (shape.batch, shape.context);
    let secs = time(2, iters, || {
        let batch = Batch {
            inputs: Tensor::from_vec(random_ids(&mut rng, b * t, shape.vocab), (b, t), dev)?,
            targets: Tensor::from_vec(random_ids(&mut rng, b * t, shape.vocab), (b, t), dev)?,
        };
        train::train_step(&model, &params, &mut opt, &batch, 0.0, 1e-4, 1.0)?;
        Ok(())
    })?;
    Ok(measurement(shape, "train", precision, secs, b * t, shape.train_flops_per_token() * (b * t) as f64, ceiling))
}

/// Scoring: energies of SCORE_BATCH sequences filling the context, one forward pass.
pub fn bench_score(shape: &Shape, iters: usize, precision: Precision, ceiling: f64, dev: &Device) -> Result<Measurement> {
    let cfg = shape.config();
    let mut model = Params::init(&cfg, 0.02, 1, dev)?.0.detached_model(&cfg)?; // forward-only
    model.set_precision(precision);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let seqs: Vec<Vec<u32>> = (0..SCORE_BATCH).map(|_| random_ids(&mut rng, shape.context, shape.vocab)).collect();
    let opts = ScoreOptions { batch_size: SCORE_BATCH, ..ScoreOptions::default() };
    let bos = shape.vocab as u32 - 1;
    let secs = time(2, iters, || {
        score::score_ids(&model, &seqs, bos, &opts)?;
        Ok(())
    })?;
    let tokens = SCORE_BATCH * shape.context;
    Ok(measurement(shape, "score", precision, secs, tokens, shape.train_flops_per_token() / 3.0 * tokens as f64, ceiling))
}

/// Generation on the KV cache: batch 1, a PROMPT-token prompt, then new tokens until the context
/// is full; tokens/s of the new tokens.
pub fn bench_generate(shape: &Shape, iters: usize, precision: Precision, ceiling: f64, dev: &Device) -> Result<Measurement> {
    let cfg = shape.config();
    let mut model = Params::init(&cfg, 0.02, 1, dev)?.0.detached_model(&cfg)?;
    model.set_precision(precision);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let prompt = random_ids(&mut rng, PROMPT - 1, shape.vocab);
    let bos = shape.vocab as u32 - 1;
    let n_new = shape.context - PROMPT;
    let secs = time(1, iters, || {
        let mut g = Generator::new(&model, bos, &prompt)?;
        g.generate(n_new, SampleOptions::with_temperature(1.0), &mut rng, |_, _| Ok(()))?;
        Ok(())
    })?;
    Ok(measurement(shape, "generate", precision, secs, n_new, shape.train_flops_per_token() / 3.0 * n_new as f64, ceiling))
}
