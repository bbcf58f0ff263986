//! Reinforcement learning on the language model: the model is a policy over tokens, fine-tuned
//! toward a reward while a KL term keeps it near the frozen starting model pi_ref.
//!
//! The objective, per continuation y of a prompt x (its tokens sampled from pi):
//!
//!   J = E[R(y)] + alpha H(pi) - beta KL(pi || pi_ref)
//!     = E_pi[ R(y) - (alpha + beta) ln pi(y) + beta ln pi_ref(y) ]
//!
//! (ln pi(y) = sum_t ln pi(y_t | x, y_<t)). Its maximiser is a Boltzmann law over continuations,
//! pi*(y) proportional to pi_ref(y)^(beta/(alpha+beta)) exp(R(y)/(alpha+beta)): with beta = 0, softmax(R/alpha),
//! the maximum-entropy policy at temperature alpha.
//!
//! - [`Algo::MaxEntPg`]: REINFORCE on the "soft" return R - (alpha+beta) ln pi + beta ln pi_ref with a
//!   leave-one-out baseline: unbiased for grad J, since E[grad ln pi] = 0.
//! - [`Algo::Ppo`]: PPO's clipped surrogate min(r A, clip(r, 1-eps, 1+eps) A) per token, r = pi/pi_old,
//!   over several epochs of minibatches of one batch of samples; the KL to pi_ref enters the return
//!   (as in RLHF), the entropy as a bonus alpha H on the loss; `target_kl` stops the epochs.
//!
//! With `target_entropy`, alpha is tuned as in SAC: ln alpha <- ln alpha - lr_alpha (H - H_target)
//! after each update, H the mean per-token entropy of the batch.
//!
//! BOS is never sampled (it marks the start of a sequence), so the policy at each step is the
//! model's softmax over the other tokens.

pub mod rewards;
pub mod run;

pub use rewards::{parse_reward, ContainsReward, EnergyReward, LengthReward, RegexReward, Reward};
pub use run::{run, RlReport, RlRequest, RL_CONFIG, RL_METRICS};

use anyhow::{bail, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::tokenizer::Tok;
use crate::error::UsageError;
use crate::model::params::Params;
use crate::model::{Gpt, KvCache};
use crate::physics::generate::{self, SampleOptions};
use crate::train::optim::{self, AdamW, AdamWConfig};
use crate::ModelConfig;

/// The policy-gradient algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Algo {
    /// REINFORCE with a leave-one-out baseline on J = E(R) + alpha H(pi) - beta KL(pi || pi_ref).
    #[serde(rename = "maxent-pg")] // as `--algo` spells it
    #[value(name = "maxent-pg")]
    MaxEntPg,
    /// PPO's clipped surrogate over epochs of minibatches, with the KL to pi_ref in the return and
    /// an entropy bonus alpha H.
    Ppo,
}

/// AdamW's settings for the policy: PyTorch's betas as nanoGPT sets them, and no weight decay (the
/// KL term is what keeps the policy near its start).
pub const RL_ADAMW: AdamWConfig = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };

/// Rollouts drawn to measure the reward, entropy and KL before and after a run (at least the batch).
pub const EVAL_ROLLOUTS: usize = 64;

/// Options of an RL run: `rl`'s flags too (clap), so each is written once, with its default from
/// [`RlConfig::DEFAULT`].
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct RlConfig {
    /// Policy-gradient algorithm.
    #[arg(long, value_enum, default_value_t = RlConfig::DEFAULT.algo)]
    pub algo: Algo,
    /// Policy updates.
    #[arg(long, default_value_t = RlConfig::DEFAULT.steps)]
    pub steps: usize,
    /// Continuations sampled per update.
    #[arg(long, default_value_t = RlConfig::DEFAULT.batch_size)]
    pub batch_size: usize,
    /// Tokens per continuation (BOS + prompt + tokens must fit the context).
    #[arg(long, default_value_t = RlConfig::DEFAULT.tokens)]
    pub tokens: usize,
    /// AdamW learning rate of the policy (no weight decay).
    #[arg(long, default_value_t = RlConfig::DEFAULT.lr)]
    pub lr: f64,
    /// Entropy weight alpha >= 0 (the starting value with --target-entropy).
    #[arg(long, default_value_t = RlConfig::DEFAULT.alpha)]
    pub alpha: f64,
    /// KL weight beta >= 0 on KL(pi || pi_ref).
    #[arg(long, default_value_t = RlConfig::DEFAULT.kl_coef)]
    pub kl_coef: f64,
    /// Tune alpha (SAC-style: ln alpha -= alpha-lr x (H - H_target) per update) toward this mean
    /// per-token entropy, in nats; needs --alpha > 0 to start from.
    #[arg(long, value_name = "H")]
    pub target_entropy: Option<f64>,
    /// Step size on ln alpha for --target-entropy.
    #[arg(long, default_value_t = RlConfig::DEFAULT.alpha_lr)]
    pub alpha_lr: f64,
    /// PPO clip epsilon: ratios pi/pi_old are clipped to [1 - eps, 1 + eps].
    #[arg(long, default_value_t = RlConfig::DEFAULT.clip)]
    pub clip: f64,
    /// PPO epochs over each batch.
    #[arg(long, default_value_t = RlConfig::DEFAULT.epochs)]
    pub epochs: usize,
    /// PPO minibatches per epoch.
    #[arg(long, default_value_t = RlConfig::DEFAULT.minibatches)]
    pub minibatches: usize,
    /// PPO: stop a batch's epochs once approx_kl (KL(pi_old || pi), k3) exceeds this.
    #[arg(long)]
    pub target_kl: Option<f64>,
    /// Clip the global gradient norm to this; 0 disables.
    #[arg(long, default_value_t = RlConfig::DEFAULT.grad_clip)]
    pub grad_clip: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = RlConfig::DEFAULT.seed)]
    pub seed: u64,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl RlConfig {
    /// The defaults, as a constant so the CLI's flags can show them.
    pub const DEFAULT: RlConfig = RlConfig {
        algo: Algo::MaxEntPg,
        steps: 100,
        batch_size: 32,
        tokens: 32,
        lr: 3e-4,
        alpha: 0.0,
        kl_coef: 0.05,
        target_entropy: None,
        alpha_lr: 0.05,
        clip: 0.2,
        epochs: 4,
        minibatches: 4,
        target_kl: None,
        grad_clip: 1.0,
        seed: 1337,
    };

    /// Check ranges; the message names the flag.
    pub fn validate(&self, context: usize, longest_prompt: usize) -> Result<()> {
        let usage = |m: String| -> Result<()> { Err(UsageError(m).into()) };
        for (flag, n) in [("--steps", self.steps), ("--batch-size", self.batch_size), ("--tokens", self.tokens), ("--epochs", self.epochs), ("--minibatches", self.minibatches)] {
            if n == 0 {
                return usage(format!("{flag} must be at least 1"));
            }
        }
        for (flag, v) in [("--lr", self.lr), ("--alpha-lr", self.alpha_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return usage(format!("{flag} must be a finite number > 0, got {v:?}"));
            }
        }
        for (flag, v) in [("--alpha", self.alpha), ("--kl-coef", self.kl_coef), ("--grad-clip", self.grad_clip)] {
            if !(v.is_finite() && v >= 0.0) {
                return usage(format!("{flag} must be a finite number >= 0, got {v:?}"));
            }
        }
        if self.target_entropy.is_some() && self.alpha <= 0.0 {
            return usage("--target-entropy tunes alpha multiplicatively: give a starting --alpha > 0".into());
        }
        if self.target_entropy.is_some_and(|h| !(h.is_finite() && h >= 0.0)) {
            return usage("--target-entropy must be a finite number >= 0 (nats per token)".into());
        }
        if !(self.clip.is_finite() && self.clip > 0.0 && self.clip < 1.0) {
            return usage(format!("--clip must lie in (0, 1), got {:?}", self.clip));
        }
        if self.target_kl.is_some_and(|k| !(k.is_finite() && k > 0.0)) {
            return usage("--target-kl must be a finite number > 0".into());
        }
        if self.algo == Algo::MaxEntPg && self.batch_size < 2 {
            return usage("--algo maxent-pg needs --batch-size 2 or more: its leave-one-out baseline compares each continuation with the others, so one alone has no advantage".into());
        }
        if self.algo == Algo::Ppo && self.minibatches > self.batch_size {
            return usage(format!("--minibatches {} exceeds --batch-size {}", self.minibatches, self.batch_size));
        }
        if self.tokens.saturating_add(longest_prompt).saturating_add(1) > context {
            return usage(format!(
                "BOS + a {longest_prompt}-token prompt + {} tokens exceeds the model's context of {context}; lower --tokens or shorten the prompt",
                self.tokens
            ));
        }
        Ok(())
    }
}

/// Additive logit mask `(V,)` that removes BOS from the policy: a large negative number rather
/// than -inf, so that p ln p stays 0 at BOS.
/// (Only padding rows where the start is text, which the policy may produce.)
fn bos_mask(model: &Gpt, vocab: usize, bos: u32, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; vocab];
    for id in model.config().unsampled(bos) {
        m[id as usize] = -1e9;
    }
    Ok(Tensor::from_vec(m, vocab, dev)?)
}

/// Sample `b` continuations of `tokens` tokens of BOS + `prompt` from `model` (BOS never sampled),
/// all rows in one batch on a KV cache: `(b, tokens)` ids.
pub fn sample_batch(model: &Gpt, bos: u32, prompt: &[u32], b: usize, tokens: usize, rng: &mut ChaCha8Rng) -> Result<Vec<Vec<u32>>> {
    let dev = model.device();
    let mut start = vec![bos];
    start.extend_from_slice(prompt);
    let input = Tensor::new(start.as_slice(), dev)?.unsqueeze(0)?.repeat((b, 1))?; // (B, 1+P)
    let mut cache = KvCache::new();
    let mut logits = model.forward_cached(&input, &mut cache)?.i((.., start.len() - 1))?; // (B, V)
    let mut out = vec![Vec::with_capacity(tokens); b];
    let opts = SampleOptions::with_temperature(1.0);
    for t in 0..tokens {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        for (row, seq) in rows.into_iter().zip(out.iter_mut()) {
            let mut row = row;
            for id in model.config().unsampled(bos) {
                row[id as usize] = f32::NEG_INFINITY;
            }
            let id = generate::sample_token(&row, opts, rng) as u32;
            seq.push(id);
            next.push(id);
        }
        if t + 1 < tokens {
            let step = Tensor::from_vec(next, (b, 1), dev)?;
            logits = model.forward_cached(&step, &mut cache)?.i((.., 0))?; // (B, V)
        }
    }
    Ok(out)
}

/// Per-token log-probabilities `(B, T)` of continuations `conts` of BOS + `prompt` under `model`
/// (BOS masked out of the policy), and the entropy `(B, T)` of each step's distribution.
/// Differentiable through `model`'s parameters.
pub fn continuation_logprobs(model: &Gpt, bos: u32, prompt: &[u32], conts: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
    let dev = model.device();
    let (b, t, p) = (conts.len(), conts[0].len(), prompt.len());
    let mut inputs = Vec::with_capacity(b * (p + t));
    for c in conts {
        inputs.push(bos);
        inputs.extend_from_slice(prompt);
        inputs.extend_from_slice(&c[..t - 1]);
    }
    let inputs = Tensor::from_vec(inputs, (b, p + t), dev)?;
    let logits = model.forward(&inputs)?.narrow(1, p, t)?; // the positions that predict the continuation: (B, T, V)
    let vocab = logits.dim(2)?;
    let logits = logits.broadcast_add(&bos_mask(model, vocab, bos, dev)?.to_dtype(logits.dtype())?)?;
    let logp_all = candle_nn::ops::log_softmax(&logits, D::Minus1)?; // (B, T, V)
    let targets = Tensor::from_vec(conts.concat(), (b, t, 1), dev)?;
    let logp = logp_all.gather(&targets, 2)?.squeeze(2)?; // (B, T)
    let entropy = (logp_all.exp()? * &logp_all)?.sum(D::Minus1)?.neg()?; // (B, T)
    Ok((logp, entropy))
}

/// PPO's clipped surrogate, to be maximised: the mean over every element of
/// min(r A, clip(r, 1 - eps, 1 + eps) A) with r = exp(logp - old_logp). `logp` `(B, T)` carries the
/// gradient; `old_logp` `(B, T)` and `advantages` (broadcastable, e.g. `(B, 1)`) are constants.
/// Where r has left [1 - eps, 1 + eps] in the direction that A rewards, the clipped term is the
/// smaller one and constant, so those elements contribute no gradient.
pub fn ppo_surrogate(logp: &Tensor, old_logp: &Tensor, advantages: &Tensor, clip: f64) -> Result<Tensor> {
    let ratio = (logp - old_logp)?.exp()?;
    let unclipped = ratio.broadcast_mul(advantages)?;
    let clipped = ratio.clamp(1.0 - clip, 1.0 + clip)?.broadcast_mul(advantages)?;
    Ok(unclipped.minimum(&clipped)?.mean_all()?)
}

/// What one update measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateStats {
    /// Updates completed.
    pub step: usize,
    /// Mean reward of the batch (before any entropy or KL term).
    pub reward: f64,
    /// Mean per-token entropy of the policy's distributions along the samples, nats.
    pub entropy: f64,
    /// KL(pi || pi_ref) per continuation (sum over its tokens), the k3 estimator
    /// mean[(rho - 1) - ln rho] with rho = pi_ref / pi on the sampled tokens.
    pub kl: f64,
    /// The entropy weight used in this update.
    pub alpha: f64,
    /// PPO: fraction of token ratios outside [1 - eps, 1 + eps] (mean over minibatches).
    pub clip_fraction: Option<f64>,
    /// PPO: the k3 estimate of KL(pi_old || pi) at the last minibatch.
    pub approx_kl: Option<f64>,
    /// Optimizer steps taken on this batch (PPO: fewer than epochs x minibatches if target_kl stopped it).
    pub optimizer_steps: usize,
    /// Continuations sampled per second (sampling and updating).
    pub samples_per_sec: f64,
}

/// A policy being fine-tuned, its frozen reference and its optimizer.
pub struct Trainer {
    params: Params,
    policy: Gpt,
    reference: Gpt,
    optimizer: AdamW,
    cfg: RlConfig,
    log_alpha: f64,
    rng: ChaCha8Rng,
    step: usize,
    bos: u32,
}

impl Trainer {
    /// Fine-tune `params` (built with `model_cfg`); the reference is a frozen copy of their values now.
    pub fn new(params: Params, policy: Gpt, model_cfg: &ModelConfig, bos: u32, cfg: RlConfig) -> Result<Self> {
        cfg.validate(model_cfg.context, 0)?;
        // A deep copy: a detached model shares storage with the Vars, which AdamW updates in place.
        let frozen = params.tensors().into_iter().map(|(n, t)| Ok((n, t.copy()?))).collect::<Result<_>>()?;
        let reference = Params::model_from_tensors(model_cfg, frozen, policy.device())?;
        let optimizer = AdamW::new(params.trainable(), RL_ADAMW, policy.kernels())?;
        let log_alpha = if cfg.alpha > 0.0 { cfg.alpha.ln() } else { f64::NEG_INFINITY };
        let rng = crate::rng::rng(cfg.seed, crate::rng::RngStream::Sample);
        Ok(Self { params, policy, reference, optimizer, cfg, log_alpha, rng, step: 0, bos })
    }

    /// Run the policy, the reference and the sampler's copies in `precision`.
    pub fn set_precision(&mut self, precision: crate::config::Precision) {
        self.policy.set_precision(precision);
        self.reference.set_precision(precision);
    }

    /// The current entropy weight.
    pub fn alpha(&self) -> f64 {
        self.log_alpha.exp()
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn policy(&self) -> &Gpt {
        &self.policy
    }

    /// The frozen starting model.
    pub fn reference(&self) -> &Gpt {
        &self.reference
    }

    /// Sample `b` continuations of `prompt` from the current policy and measure them; with
    /// `for_update`, ln pi is computed through the policy's graph for the loss, else through a
    /// detached copy (no graph is built).
    fn rollout(&mut self, prompt: &[u32], reward: &dyn Reward, tok: &Tok, b: usize, for_update: bool) -> Result<Rollout> {
        let mut sampler = self.params.detached_model(self.policy.config())?;
        sampler.set_precision(self.policy.precision());
        let conts = sample_batch(&sampler, self.bos, prompt, b, self.cfg.tokens, &mut self.rng)?;
        let texts = conts.iter().map(|c| tok.decode(c)).collect::<Result<Vec<String>>>()?;
        let batch: Vec<(&str, &[u32])> = texts.iter().zip(&conts).map(|(t, c)| (t.as_str(), c.as_slice())).collect();
        let rewards = reward.rewards(&batch)?;
        if rewards.len() != batch.len() {
            bail!("the reward returned {} values for {} continuations", rewards.len(), batch.len());
        }
        if let Some(r) = rewards.iter().find(|r| !r.is_finite()) {
            bail!("the reward returned {r}; rewards must be finite");
        }
        // For an update, through the policy itself (the sampler's weights, with the graph), so
        // that maxent-pg's loss reuses this forward pass.
        let scorer = if for_update { &self.policy } else { &sampler };
        let (logp_graph, entropy) = continuation_logprobs(scorer, self.bos, prompt, &conts)?;
        let (ref_logp, _) = continuation_logprobs(&self.reference, self.bos, prompt, &conts)?;
        let (logp, ref_logp) = (rows(&logp_graph)?, rows(&ref_logp)?);
        let entropy = mean(&rows(&entropy)?.concat());
        let kl = logp
            .iter()
            .zip(&ref_logp)
            .map(|(o, r)| o.iter().zip(r).map(|(o, r)| (r - o).exp() - 1.0 - (r - o)).sum::<f64>())
            .sum::<f64>()
            / b as f64;
        Ok(Rollout { conts, texts, rewards, logp_graph, logp, ref_logp, entropy, kl })
    }

    /// Measure the current policy on `n` fresh continuations shared out over `prompts` (as evenly
    /// as they go, at least one each), without updating it. The figures are means over every
    /// continuation; `per_prompt` has each prompt's own.
    pub fn evaluate(&mut self, prompts: &[Vec<u32>], reward: &dyn Reward, tok: &Tok, n: usize) -> Result<Evaluation> {
        if prompts.is_empty() {
            bail!("the evaluation needs at least one prompt");
        }
        let n = n.max(prompts.len());
        let (mut samples, mut per_prompt) = (Vec::new(), Vec::with_capacity(prompts.len()));
        let (mut reward_sum, mut entropy_sum, mut kl_sum) = (0.0, 0.0, 0.0);
        for (prompt, b) in prompts.iter().zip(even_split(n, prompts.len())) {
            let r = self.rollout(prompt, reward, tok, b, false)?;
            let e = PromptEvaluation { continuations: b, reward: mean(&r.rewards), entropy: r.entropy, kl: r.kl };
            (reward_sum, entropy_sum, kl_sum) = (reward_sum + e.reward * b as f64, entropy_sum + e.entropy * b as f64, kl_sum + e.kl * b as f64);
            per_prompt.push(e);
            samples.extend(r.texts);
        }
        let n = n as f64;
        Ok(Evaluation { reward: reward_sum / n, entropy: entropy_sum / n, kl: kl_sum / n, per_prompt, samples })
    }

    /// Sample a batch of continuations of `prompt`, score them with `reward` and update the policy.
    pub fn update(&mut self, prompt: &[u32], reward: &dyn Reward, tok: &Tok) -> Result<UpdateStats> {
        let t0 = std::time::Instant::now();
        let (b, alpha, beta) = (self.cfg.batch_size, self.alpha(), self.cfg.kl_coef);
        let Rollout { conts, rewards, logp_graph, logp: old, ref_logp: refp, entropy, kl, .. } = self.rollout(prompt, reward, tok, b, true)?;
        let sum = |v: &[f64]| v.iter().sum::<f64>();
        let dev = self.policy.device().clone();
        let (mut clip_fracs, mut approx_kl, mut optimizer_steps) = (Vec::new(), None, 0);
        match self.cfg.algo {
            Algo::MaxEntPg => {
                // Soft return R - (alpha + beta) ln pi(y) + beta ln pi_ref(y), leave-one-out baseline.
                let soft: Vec<f64> = (0..b).map(|i| rewards[i] - (alpha + beta) * sum(&old[i]) + beta * sum(&refp[i])).collect();
                let total = sum(&soft);
                let adv: Vec<f32> = soft.iter().map(|s| if b > 1 { (s - (total - s) / (b - 1) as f64) as f32 } else { 0.0 }).collect();
                let adv = Tensor::from_vec(adv, (b, 1), &dev)?;
                let loss = logp_graph.broadcast_mul(&adv)?.sum(1)?.mean_all()?.neg()?;
                self.apply(&loss)?;
                optimizer_steps = 1;
            }
            Algo::Ppo => {
                drop(logp_graph); // PPO recomputes ln pi per minibatch: free the rollout's graph now
                // KL to the reference in the return; normalised advantages, one per continuation.
                let ret: Vec<f64> = (0..b).map(|i| rewards[i] - beta * (sum(&old[i]) - sum(&refp[i]))).collect();
                let m = mean(&ret);
                let sd = (ret.iter().map(|r| (r - m).powi(2)).sum::<f64>() / b as f64).sqrt();
                let adv: Vec<f32> = ret.iter().map(|r| ((r - m) / (sd + 1e-8)) as f32).collect();
                let mut order: Vec<usize> = (0..b).collect();
                let sizes = even_split(b, self.cfg.minibatches);
                'epochs: for _ in 0..self.cfg.epochs {
                    order.shuffle(&mut self.rng);
                    let mut rest = order.as_slice();
                    for &size in &sizes {
                        let (mb, tail) = rest.split_at(size);
                        rest = tail;
                        let c: Vec<Vec<u32>> = mb.iter().map(|&i| conts[i].clone()).collect();
                        let o: Vec<f32> = mb.iter().flat_map(|&i| old[i].iter().map(|&x| x as f32)).collect();
                        let o = Tensor::from_vec(o, (mb.len(), self.cfg.tokens), &dev)?;
                        let a = Tensor::from_vec(mb.iter().map(|&i| adv[i]).collect::<Vec<_>>(), (mb.len(), 1), &dev)?;
                        let (logp, ent) = continuation_logprobs(&self.policy, self.bos, prompt, &c)?;
                        let surrogate = ppo_surrogate(&logp, &o, &a, self.cfg.clip)?;
                        let loss = (surrogate.neg()? - (ent.mean_all()? * alpha)?)?;
                        // Diagnostics of this minibatch, before the step.
                        let log_ratio = (logp.detach() - &o)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                        let clipped = log_ratio.iter().filter(|l| (l.exp() - 1.0).abs() > self.cfg.clip).count();
                        clip_fracs.push(clipped as f64 / log_ratio.len() as f64);
                        let akl = mean(&log_ratio.iter().map(|l| l.exp() - 1.0 - l).collect::<Vec<_>>());
                        approx_kl = Some(akl);
                        if self.cfg.target_kl.is_some_and(|k| akl > k) {
                            break 'epochs;
                        }
                        self.apply(&loss)?;
                        optimizer_steps += 1;
                    }
                }
            }
        }
        if let Some(target) = self.cfg.target_entropy {
            self.log_alpha -= self.cfg.alpha_lr * (entropy - target);
        }
        self.step += 1;
        Ok(UpdateStats {
            step: self.step,
            reward: mean(&rewards),
            entropy,
            kl,
            alpha,
            clip_fraction: (!clip_fracs.is_empty()).then(|| mean(&clip_fracs)),
            approx_kl,
            optimizer_steps,
            samples_per_sec: b as f64 / t0.elapsed().as_secs_f64(),
        })
    }

    /// Backward, clip, AdamW step at the configured learning rate.
    fn apply(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        let norm = optim::grad_norm(self.params.trainable(), &grads, self.policy.kernels())?;
        if !norm.is_finite() {
            bail!("the policy gradient norm is {norm} at update {}; lower --lr or --alpha", self.step + 1);
        }
        self.optimizer.step(&grads, self.cfg.lr, optim::clip_scale(norm, self.cfg.grad_clip))?;
        for p in self.params.trainable() {
            // x - x is 0 where x is finite and NaN elsewhere: one reduction on the device, one scalar back.
            let w = p.var.as_tensor();
            #[allow(clippy::eq_op)] // deliberate: the difference is the finiteness mask
            let zeros = (w - w)?;
            if !zeros.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.is_finite() {
                bail!("the weight {} is no longer finite after update {}; lower --lr", p.name, self.step + 1);
            }
        }
        Ok(())
    }
}

/// One batch of samples and what was measured on them.
struct Rollout {
    conts: Vec<Vec<u32>>,
    texts: Vec<String>,
    rewards: Vec<f64>,
    /// ln pi of every sampled token `(B, T)`, differentiable through the policy.
    logp_graph: Tensor,
    /// ln pi and ln pi_ref of every sampled token, `[sample][token]`.
    logp: Vec<Vec<f64>>,
    ref_logp: Vec<Vec<f64>>,
    entropy: f64,
    kl: f64,
}

/// The policy measured on fresh samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean reward over every continuation.
    pub reward: f64,
    /// Mean per-token entropy, nats.
    pub entropy: f64,
    /// KL(pi || pi_ref) per continuation (k3 estimator).
    pub kl: f64,
    /// The same figures for each prompt, in order.
    pub per_prompt: Vec<PromptEvaluation>,
    /// The continuations' text, prompt by prompt.
    pub samples: Vec<String>,
}

/// One prompt's share of an [`Evaluation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptEvaluation {
    /// Continuations drawn for this prompt.
    pub continuations: usize,
    pub reward: f64,
    pub entropy: f64,
    pub kl: f64,
}

/// `n` items shared out over `k` groups as evenly as they go (the first `n % k` get one more):
/// `k` sizes that sum to `n`.
pub fn even_split(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Zero;
    impl Reward for Zero {
        fn reward(&self, _: &str, _: &[u32]) -> Result<f64> {
            Ok(0.0)
        }
    }

    #[test]
    fn only_an_update_builds_an_autograd_graph() {
        let tok = Tok::train_char("abcdefgh ijklmnop\n").unwrap();
        let cfg = ModelConfig { n_layer: 1, ..ModelConfig::tiny(tok.vocab_size()) };
        let (params, policy) = Params::init(&cfg, 0.02, 1, &Device::Cpu).unwrap();
        let mut trainer = Trainer::new(params, policy, &cfg, tok.bos(), RlConfig { batch_size: 2, tokens: 3, ..RlConfig::default() }).unwrap();
        let evaluation = trainer.rollout(&[], &Zero, &tok, 8, false).unwrap();
        assert!(!evaluation.logp_graph.track_op(), "an evaluation's log-probabilities carry a graph");
        let update = trainer.rollout(&[], &Zero, &tok, 2, true).unwrap();
        assert!(update.logp_graph.track_op(), "an update's log-probabilities must reach the weights");
    }
}
