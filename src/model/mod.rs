//! A decoder-only transformer whose attention is a Boltzmann distribution per head.
//!
//! Token embedding (+ learned positions, or rotary phases on q and k), `n_layer` pre-norm blocks
//! of causal multi-head self-attention and an MLP, a final norm, and an LM head (tied to the
//! token embedding unless untied). One model for every family: the fields of [`ModelConfig`]
//! choose LayerNorm or RMSNorm, a GELU MLP or SwiGLU, grouped kv heads, rotary theta, width and
//! scaling, q/k norms, the parallel residual, the score scale beta_0 and local windows. Models
//! trained here have no biases (as nanoGPT with `bias=False`); imported ones may.
//!
//! The parts, smallest first: [`norm`], [`mlp`], [`attention`] (with the Boltzmann weights and
//! the statistics read from them), [`block`], and [`Gpt`] here. Each is written as a composition
//! of candle primitives, the readable reference; for f32 on the CPU, `forward` runs the same
//! functions as the fused kernels of [`crate::kernels`] unless [`Gpt::set_kernels`] asks for
//! [`Kernels::Composed`].
//!
//! `forward` is the training path. `forward_with_stats` is a forward-only path through the same
//! attention that also returns, per layer, the weights that attention applied, and ln Z and the
//! energies from scores recomputed apart from them ([`AttnStats`]).

pub mod attention;
pub mod block;
pub mod dense;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod rope;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};

pub use attention::{boltzmann_attention, boltzmann_weights, causal_mask, AttnStats, Attention, HeadPatch};
pub use block::Block;
pub use mlp::Mlp;
pub use norm::Norm;

use crate::config::{ModelConfig, Positions, Precision};
use crate::kernels::bf16::ops::WeightCache;
use crate::kernels::{self, Kernels};
use crate::model::dense::head_product;

/// Standard deviation of the residual-branch output projections: GPT-2 scales them by
/// 1/sqrt(2 n_layer) so that the residual stream's variance does not grow with depth.
pub(crate) fn residual_std(cfg: &ModelConfig, init_std: f64) -> f64 {
    init_std / (2.0 * cfg.n_layer as f64).sqrt()
}

/// The whole language model.
#[derive(Debug, Clone)]
pub struct Gpt {
    tok_emb: Embedding,
    /// Learned absolute positions `(context, C)`; None with rotary positions.
    pos_emb: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// An untied LM head `(V, C)`; None when the head is the token embedding.
    lm_head: Option<Tensor>,
    /// The head's weight packed in bf16 for forward-only use.
    head_packed: WeightCache,
    precision: Precision,
    cfg: ModelConfig,
}

impl Gpt {
    /// Build the model, taking (or, with an initialising backend, creating) every tensor from `vb`.
    /// `init_std` is the standard deviation of the normal init of matrices (GPT-2: 0.02), None
    /// when `vb` loads saved tensors; `kernels` is the implementation every layer runs
    /// ([`Gpt::set_kernels`] changes it later).
    pub fn new(cfg: &ModelConfig, init_std: Option<f64>, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        // A load takes every tensor from its file, so no init hint is read; NaN would show at
        // once if one were.
        let init_std = init_std.unwrap_or(f64::NAN);
        let normal = Init::Randn { mean: 0.0, stdev: init_std };
        let tok = vb.pp("tok_emb").get_with_hints((cfg.vocab_size, cfg.d_model), "weight", normal)?;
        let pos_emb = match cfg.positions {
            Positions::Learned => Some(vb.pp("pos_emb").get_with_hints((cfg.context, cfg.d_model), "weight", normal)?),
            Positions::Rope => None, // positions enter as phases of q and k, inside attention
        };
        // One table of rotary phases for every layer.
        let rope = match cfg.positions {
            Positions::Learned => None,
            Positions::Rope => Some(rope::Rope::for_model(cfg, vb.dtype(), vb.device())?),
        };
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, i, rope.as_ref(), init_std, kernels, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = Norm::new(cfg, kernels, vb.pp("ln_f"))?;
        let lm_head = if cfg.tied_head {
            None
        } else {
            Some(vb.pp("lm_head").get_with_hints((cfg.vocab_size, cfg.d_model), "weight", normal)?)
        };
        Ok(Self {
            tok_emb: Embedding::new(tok, cfg.d_model),
            pos_emb,
            blocks,
            ln_f,
            lm_head,
            head_packed: WeightCache::default(),
            precision: Precision::F32,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The implementation `forward` uses: the one the model was built with unless set.
    pub fn kernels(&self) -> Kernels {
        self.ln_f.kernels
    }

    /// Choose the fused kernels or the composed reference for every layer.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.ln_f.kernels = kernels;
        for b in &mut self.blocks {
            b.ln1.kernels = kernels;
            b.ln2.kernels = kernels;
            b.attn.kernels = kernels;
            b.mlp.kernels = kernels;
        }
    }

    /// The arithmetic of the products: f32 unless set.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Run the products (Linear layers, the LM head, attention's q.k and alpha.v) in f32 or
    /// with bf16 operands and f32 accumulation.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        for b in &mut self.blocks {
            b.attn.precision = precision;
            b.mlp.precision = precision;
        }
    }

    /// Make what a forward-only model in bf16 keeps: every weight packed in bf16, once, now
    /// rather than on the first token. Nothing in f32; weights that train are never packed.
    pub fn prepare(&self) -> Result<()> {
        if self.precision != Precision::Bf16 {
            return Ok(());
        }
        for b in &self.blocks {
            b.attn.prepare_bf16()?;
            b.mlp.prepare_bf16()?;
        }
        self.head_packed.prepare(self.head_weight())
    }

    pub fn device(&self) -> &Device {
        self.tok_emb.embeddings().device()
    }

    /// Token embeddings of `ids` `(B, T)` at positions `past..past + T`, plus the learned
    /// position embeddings if the model has them: `(B, T, C)`.
    fn embed_at(&self, ids: &Tensor, past: usize) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let x = self.tok_emb.forward(ids)?; // (B, T, C)
        match &self.pos_emb {
            Some(pos) => x.broadcast_add(&pos.narrow(0, past, t)?),
            None => Ok(x),
        }
    }

    /// Embeddings of `ids` `(B, T)` at positions 0..T -> `(B, T, C)`, with the causal mask.
    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, t) = ids.dims2()?;
        if t > self.cfg.context {
            candle_core::bail!("input of {t} tokens is longer than the model's context of {}", self.cfg.context)
        }
        let x = self.embed_at(ids, 0)?; // (B, T, C)
        let mask = causal_mask(0, t, None, x.dtype(), ids.device())?;
        Ok((x, mask))
    }

    /// The LM head's weight `(V, C)`: its own, or the token embedding.
    fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(self.tok_emb.embeddings())
    }

    /// [`Gpt::head`] for the few rows of KV-cached generation, through the matrix-vector kernel
    /// where it applies (the head is the largest matrix of a GPT-2-sized model).
    fn head_cached(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        if self.kernels().fused_for(x) && b * t <= kernels::matvec::MAX_ROWS && self.precision == Precision::F32 {
            let x = self.ln_f.forward(x)?.reshape((b * t, c))?; // (B*T, C)
            return kernels::matvec::matvec(&x, self.head_weight())?.reshape((b, t, self.cfg.vocab_size));
        }
        self.head(x)
    }

    /// LM head, the token embedding's transpose unless untied: `(B, T, C)` -> logits `(B, T, V)`.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln_f.forward(x)?; // (B, T, C)
        if self.kernels().fused_for(&x) {
            // The fused products take (B, T, C) as B*T rows: no reshape in the graph.
            return head_product(&x, self.head_weight(), self.kernels(), self.precision, &self.head_packed); // (B, T, V)
        }
        let (b, t, c) = x.dims3()?;
        head_product(&x.reshape((b * t, c))?, self.head_weight(), self.kernels(), self.precision, &self.head_packed)?.reshape((b, t, self.cfg.vocab_size)) // (B, T, V)
    }

    /// Logits `(B, T, V)` of the next token at every position of `ids` `(B, T)`, T <= context.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.head(&self.hidden(ids)?)
    }

    /// The residual stream after the last block, `(B, T, C)`: what the head reads.
    fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (mut x, mask) = self.embed(ids)?;
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        Ok(x)
    }

    /// Per-token energies -ln p_T(target | prefix) `(B*T,)` of `ids` `(B, T)` for `targets`
    /// `(B*T,)`, with the logits divided by `temperature`: the LM head and the cross-entropy run
    /// over chunks of rows, so the logits of a large vocabulary (Qwen's 151,936) are never all in
    /// memory at once. Forward-only; the same numbers as [`Gpt::forward`] then
    /// [`loss::token_energies`].
    pub fn token_energies(&self, ids: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
        let x = self.hidden(ids)?;
        let (b, t, c) = x.dims3()?;
        let x = x.reshape((1, b * t, c))?; // every position as one row of a batch of one
        let rows = (ENERGY_CHUNK_BYTES / 4 / self.cfg.vocab_size.max(1)).max(64);
        let mut parts = Vec::with_capacity((b * t).div_ceil(rows));
        for start in (0..b * t).step_by(rows) {
            let n = rows.min(b * t - start);
            let logits = self.head(&x.narrow(1, start, n)?)?.squeeze(0)?; // (n, V)
            let logits = if temperature == 1.0 { logits } else { (logits / temperature)? };
            parts.push(loss::token_energies(&logits, &targets.narrow(0, start, n)?)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// Logits and every layer's attention statistics. Forward-only: call it on a model whose
    /// weights are plain tensors (loaded, or [`crate::model::params::Params::detached_model`]).
    pub fn forward_with_stats(&self, ids: &Tensor) -> Result<(Tensor, Vec<AttnStats>)> {
        let (mut x, mask) = self.embed(ids)?;
        let mut stats = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, s) = block.forward_with_stats(&x, &mask)?;
            x = y;
            stats.push(s);
        }
        Ok((self.head(&x)?, stats))
    }

    /// Logits `(B, Tnew, V)` for `ids` `(B, Tnew)` that continue the sequence whose keys and
    /// values are in `cache`, which grows by Tnew. The result equals the last Tnew rows of
    /// [`Gpt::forward`] on the whole sequence. Forward-only.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let past = cache.len;
        if past + t > self.cfg.context {
            candle_core::bail!("{} cached + {t} new tokens exceed the model's context of {}", past, self.cfg.context)
        }
        cache.reserve(self.blocks.len(), past + t, self.cfg.context)?;
        let mut x = self.embed_at(ids, past)?; // (B, Tnew, C)
        // One new token sees every cached key: no mask.
        let mask = if t > 1 { Some(causal_mask(past, t, None, x.dtype(), ids.device())?) } else { None };
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward_cached(&x, mask.as_ref(), kv)?;
        }
        cache.len = past + t;
        self.head_cached(&x)
    }

    /// T_h of every head, `[layer][head]`.
    pub fn temperatures(&self) -> Result<Vec<Vec<f64>>> {
        self.blocks.iter().map(|b| b.attn.temperatures()).collect()
    }

    /// Override head temperatures for forward-only use, `[layer][head]`.
    pub fn set_temperatures(&mut self, temps: &[Vec<f64>]) -> Result<()> {
        if temps.len() != self.blocks.len() {
            candle_core::bail!("need temperatures for {} layers, got {}", self.blocks.len(), temps.len())
        }
        for (block, t) in self.blocks.iter_mut().zip(temps) {
            block.attn.set_temperatures(t)?;
        }
        Ok(())
    }
}

/// Keys and values of the positions seen so far, per layer: each `(B, K, T, D)` (K key/value
/// heads), in buffers that grow by doubling up to the context (a model with a context of 32,768
/// does not hold 32,768 positions for a reply of 50).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

/// Bytes of logits [`Gpt::token_energies`] holds at once.
const ENERGY_CHUNK_BYTES: usize = 128 << 20;

/// Positions the first buffers hold.
const KV_FIRST_CAPACITY: usize = 256;

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `needed` positions in each of `layers` layers (at most `context`), moving what is
    /// cached into larger buffers where it must.
    fn reserve(&mut self, layers: usize, needed: usize, context: usize) -> Result<()> {
        let capacity = self.layers.first().map(|c| c.k_cache().max_seq_len());
        if self.layers.len() == layers && capacity.is_some_and(|c| c >= needed) {
            return Ok(());
        }
        let grown = needed.max(capacity.unwrap_or(0) * 2).max(KV_FIRST_CAPACITY).min(context);
        let mut layers_out = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut cache = candle_nn::kv_cache::KvCache::new(2, grown);
            if let Some(old) = self.layers.get(l) {
                if let (Some(k), Some(v)) = (old.k()?, old.v()?) {
                    cache.append(&k.contiguous()?, &v.contiguous()?)?;
                }
            }
            layers_out.push(cache);
        }
        self.layers = layers_out;
        Ok(())
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One head's temperature override (layer L, head H, 0-based); `--head-temperature L.H=T` on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadTemperature {
    pub layer: usize,
    pub head: usize,
    pub temperature: f64,
}

impl Gpt {
    /// Set every head to `all` (if given), then apply the per-head overrides. Forward-only use.
    pub fn override_temperatures(&mut self, all: Option<f64>, heads: &[HeadTemperature]) -> Result<()> {
        let mut temps = self.temperatures()?;
        if let Some(t) = all {
            temps.iter_mut().flatten().for_each(|x| *x = t); // checked by set_temperatures
        }
        for o in heads {
            let (n_layer, n_head) = (self.cfg.n_layer, self.cfg.n_head);
            let slot = temps.get_mut(o.layer).and_then(|l| l.get_mut(o.head)).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "head temperature {}.{}={} names no head: the model has layers 0..{} and heads 0..{}",
                    o.layer,
                    o.head,
                    o.temperature,
                    n_layer - 1,
                    n_head - 1
                ))
            })?;
            *slot = o.temperature;
        }
        self.set_temperatures(&temps)
    }
}

impl Gpt {
    /// Patch head `head` of layer `layer` for forward-only, whole-sequence passes (replacing an
    /// earlier patch of that head): T = infinity, T -> 0, or given weights ([`HeadPatch`]).
    pub fn patch_head(&mut self, layer: usize, head: usize, patch: HeadPatch) -> Result<()> {
        let (n_layer, n_head) = (self.cfg.n_layer, self.cfg.n_head);
        if layer >= n_layer || head >= n_head {
            candle_core::bail!("head {layer}.{head} names no head: the model has layers 0..{} and heads 0..{}", n_layer - 1, n_head - 1)
        }
        self.blocks[layer].attn.patch(head, patch);
        Ok(())
    }

    /// Scale every head's inverse temperature with the number of keys n a query sees:
    /// beta_h(n) = beta_h (1 + s ln n), the length-generalisation intervention (s = 0: none).
    /// The factor must stay positive up to the context.
    pub fn set_log_n_scaling(&mut self, s: f64) -> Result<()> {
        let at_context = 1.0 + s * (self.cfg.context as f64).ln();
        if !s.is_finite() || at_context <= 0.0 {
            candle_core::bail!("log-n scaling s = {s} gives beta_h (1 + s ln n) <= 0 at n = {} (the context); s must be finite and above {}", self.cfg.context, -1.0 / (self.cfg.context as f64).ln())
        }
        for block in &mut self.blocks {
            block.attn.set_log_n_scaling(s);
        }
        Ok(())
    }

    /// Make every layer's ln beta `(H,)` a variable of its own (copies; the other weights stay
    /// constants), so one backward pass gives the derivative of anything the model computes
    /// with respect to every head's ln beta. Layer-major.
    pub fn temperature_vars(&mut self) -> Result<Vec<candle_core::Var>> {
        self.blocks.iter_mut().map(|b| b.attn.temperature_var()).collect()
    }
}
