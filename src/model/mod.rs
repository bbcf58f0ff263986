//! A GPT-style decoder-only transformer whose attention is a Boltzmann distribution per head.
//!
//! Token embedding (+ learned positions, or rotary phases on q and k), `n_layer` pre-LayerNorm blocks of causal multi-head
//! self-attention and a GELU MLP, a final LayerNorm, and an LM head tied to the token embedding.
//! Models trained here have no biases in Linear layers and LayerNorms (as nanoGPT with
//! `bias=False`); imported GPT-2 and nanoGPT models may have biases, GPT-2's tanh GELU, their own
//! LayerNorm epsilon and an untied head, all fields of [`ModelConfig`].
//!
//! Attention of head h at query i over keys j <= i:
//!
//!   s_ij = q_i . k_j / sqrt(d_head)          (the score; E_ij = -s_ij is the energy)
//!   alpha_ij = exp(beta_h s_ij) / Z_i,  Z_i = sum_{j<=i} exp(beta_h s_ij),  beta_h = 1 / T_h
//!
//! T_h = 1 for every head is standard attention. `ln beta_h` is stored per layer as the tensor
//! `blocks.L.attn.log_beta` (shape `(n_head,)`) and is trained when `learn_temperature` is set.
//!
//! `forward` is the training path. `forward_with_stats` is a forward-only path through the same
//! attention (the fused kernel where `forward` uses it) that also returns, per layer, the weights
//! that attention applied, and ln Z and the energies from scores recomputed apart from them.
//!
//! Attention and LayerNorm are written here as compositions of candle primitives: the readable
//! reference. For f32 on the CPU, `forward` runs the same functions as the fused kernels of
//! [`crate::kernels`] unless [`Gpt::set_kernels`] asks for [`Kernels::Composed`].

pub mod dense;
pub mod loss;
pub mod params;
pub mod rope;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Init, VarBuilder};

use crate::config::{Activation, ModelConfig, Positions, Precision};
use crate::kernels::bf16::ops::WeightCache;
use crate::kernels::{self, Kernels};
use crate::model::dense::{head_product, round_bf16, Dense};
use crate::model::rope::Rope;

/// LayerNorm (with a bias where the model has them), written out of differentiable primitives
/// (candle's fused layer norm has no backward pass).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
    kernels: Kernels,
}

impl LayerNorm {
    pub fn new(cfg: &ModelConfig, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(cfg.d_model, "weight", Init::Const(1.0))?;
        let bias = if cfg.bias { Some(vb.get_with_hints(cfg.d_model, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, eps: cfg.ln_eps, kernels })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let scaled = if self.kernels.fused_for(x) {
            kernels::layer_norm::layer_norm(x, &self.weight, self.eps)?
        } else {
            let mean = x.mean_keepdim(D::Minus1)?; // (..., 1)
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?; // biased variance, as torch
            let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            normed.broadcast_mul(&self.weight)?
        };
        match &self.bias {
            Some(b) => scaled.broadcast_add(b),
            None => Ok(scaled),
        }
    }
}

/// Standard deviation of the residual-branch output projections: GPT-2 scales them by
/// 1/sqrt(2 n_layer) so that the residual stream's variance does not grow with depth.
fn residual_std(cfg: &ModelConfig, init_std: f64) -> f64 {
    init_std / (2.0 * cfg.n_layer as f64).sqrt()
}

/// Position-wise feed-forward network: d -> 4d -> GELU -> d.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc: Dense,
    proj: Dense,
    activation: Activation,
    kernels: Kernels,
    precision: Precision,
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, init_std: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let fc = Dense::new(d, 4 * d, init_std, cfg, vb.pp("fc"))?;
        let proj = Dense::new(4 * d, d, residual_std(cfg, init_std), cfg, vb.pp("proj"))?;
        Ok(Self { fc, proj, activation: cfg.activation, kernels, precision: Precision::F32 })
    }

    fn gelu(&self, h: &Tensor) -> Result<Tensor> {
        match (self.activation, self.kernels.fused_for(h)) {
            (Activation::GeluErf, true) => kernels::gelu::gelu(h),
            (Activation::GeluErf, false) => h.gelu_erf(), // exact (erf) GELU, as torch's default
            (Activation::GeluTanh, true) => kernels::gelu::gelu_tanh(h),
            (Activation::GeluTanh, false) => gelu_tanh(h),
        }
    }

    /// Forward-only, for the few rows of KV-cached generation.
    fn forward_cached(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.gelu(&self.fc.forward_only(x, self.kernels, self.precision)?)?;
        self.proj.forward_only(&h, self.kernels, self.precision)
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc.forward(x, self.kernels, self.precision)?; // (..., 4C)
        self.proj.forward(&self.gelu(&h)?, self.kernels, self.precision)
    }
}

/// GPT-2's `gelu_new`, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), composed of primitives:
/// the reference for the fused kernel.
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    ((inner.tanh()? + 1.0)? * 0.5)?.mul(x)
}

/// Per-head Boltzmann statistics of one attention layer, for a batch of sequences.
///
/// `alpha` is what the attention applied; `ln_z` and `energy` come from scores recomputed apart
/// from it. So `alpha` is the Boltzmann distribution of `energy` at `beta` exactly when
/// `H(alpha) = beta <E>_alpha + ln Z`, the residual that [`crate::physics::thermo`] reports.
#[derive(Debug, Clone)]
pub struct AttnStats {
    /// Attention weights alpha_ij as the layer applied them (the fused kernel's own on the CPU in
    /// f32, the composed softmax elsewhere), `(B, H, T, T)`; zero above the diagonal.
    pub alpha: Tensor,
    /// ln Z_i = ln sum_{j<=i} exp(beta_h s_ij) of every query, `(B, H, T)`, from the recomputed
    /// scores (not from alpha).
    pub ln_z: Tensor,
    /// Energies E_ij = -s_ij = -q_i.k_j/sqrt(d_head), `(B, H, T, T)`; +inf above the diagonal
    /// (keys a query may not see).
    pub energy: Tensor,
    /// Inverse temperature of every head, `(H,)`.
    pub beta: Tensor,
}

/// Causal multi-head self-attention with a per-head inverse temperature.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Dense,
    proj: Dense,
    /// ln beta_h, `(H,)`.
    log_beta: Tensor,
    n_head: usize,
    head_dim: usize,
    /// Rotary phases applied to queries and keys (`Positions::Rope`), else None.
    rope: Option<Rope>,
    kernels: Kernels,
    precision: Precision,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, init_std: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let qkv = Dense::new(d, 3 * d, init_std, cfg, vb.pp("qkv"))?;
        let proj = Dense::new(d, d, residual_std(cfg, init_std), cfg, vb.pp("proj"))?;
        let log_beta = vb.get_with_hints(cfg.n_head, "log_beta", Init::Const(-cfg.attn_temperature.ln()))?;
        let rope = match cfg.positions {
            Positions::Learned => None,
            Positions::Rope => Some(Rope::new(cfg.head_dim(), cfg.context, vb.dtype(), vb.device())?),
        };
        Ok(Self { qkv, proj, log_beta, n_head: cfg.n_head, head_dim: cfg.head_dim(), rope, kernels, precision: Precision::F32 })
    }

    /// The temperature T_h = 1/beta_h of every head.
    pub fn temperatures(&self) -> Result<Vec<f64>> {
        Ok(self.log_beta.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(|lb| (-lb).exp()).collect())
    }

    /// Replace every head's temperature (forward-only use: the new values are constants).
    pub fn set_temperatures(&mut self, temps: &[f64]) -> Result<()> {
        if temps.len() != self.n_head || !temps.iter().all(|&t| crate::config::valid_temperature(t)) {
            candle_core::bail!(
                "need {} temperatures, each finite and at least {:?}, got {temps:?}",
                self.n_head,
                crate::config::MIN_TEMPERATURE
            )
        }
        let log_beta: Vec<f32> = temps.iter().map(|t| -(t.ln()) as f32).collect();
        self.log_beta = Tensor::from_vec(log_beta, self.n_head, self.log_beta.device())?.to_dtype(self.log_beta.dtype())?;
        Ok(())
    }

    /// Queries, keys and values, each `(B, H, T, D)`, from the fused projection `(B, T, 3C)` of
    /// rows at positions `offset..`; queries and keys carry their rotary phases if any.
    fn split_heads(&self, qkv: &Tensor, offset: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = self.split_plain(qkv)?;
        match &self.rope {
            Some(rope) => Ok((rope.apply_bhtd(&q, offset)?, rope.apply_bhtd(&k, offset)?, v)),
            None => Ok((q, k, v)),
        }
    }

    /// Queries, keys and values, each `(B, H, T, D)`, split from the fused projection as they are
    /// (no rotary phases applied here).
    fn split_plain(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = qkv.dims3()?;
        let qkv = qkv.reshape((b, t, 3, self.n_head, self.head_dim))?; // (B, T, 3, H, D)
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous(); // (B, H, T, D)
        Ok((part(0)?, part(1)?, part(2)?))
    }

    /// The fused projection `(B, T, 3C)` of rows at positions `offset..` with its q and k thirds
    /// rotated by the fused kernel (unchanged without rotary positions).
    fn rotate_fused(&self, qkv: Tensor, offset: usize) -> Result<Tensor> {
        match &self.rope {
            Some(rope) => kernels::rope::rotate_qk(&qkv, rope.tables(), offset),
            None => Ok(qkv),
        }
    }

    /// Merge heads: `(B, H, T, D)` -> `(B, T, C)`.
    fn merge_heads(y: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = y.dims4()?;
        y.transpose(1, 2)?.reshape((b, t, h * d)) // (B, T, C)
    }

    /// beta_h / sqrt(d_head), `(H,)`: the factor folded into the queries.
    fn query_scale(&self) -> Result<Tensor> {
        self.log_beta.exp()? / (self.head_dim as f64).sqrt()
    }

    /// The bf16 kernel of the fused attention's products, None in f32.
    fn bf16_kernel(&self) -> Result<Option<kernels::bf16::Kernel>> {
        if self.precision == Precision::Bf16 {
            Ok(Some(kernels::bf16::ops::kernel()?))
        } else {
            Ok(None)
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (p, kern) = (self.precision, self.kernels);
        if kern.fused_for(x) {
            // The same function in one op, from the fused projection to the merged heads.
            let qkv = self.rotate_fused(self.qkv.forward(x, kern, p)?, 0)?; // (B, T, 3C)
            let y = kernels::attention::causal_attention_in(&qkv, &self.query_scale()?, self.n_head, self.bf16_kernel()?)?; // (B, T, C)
            return self.proj.forward(&y, kern, p);
        }
        // The readable reference: queries, keys and values (B, H, T, D) each, the Boltzmann
        // weights over the allowed keys, the heads merged and projected back.
        let (q, k, v) = self.split_heads(&self.qkv.forward(x, kern, p)?, 0)?;
        let y = match p {
            Precision::F32 => boltzmann_attention(&q, &k, &v, &self.log_beta.exp()?, Some(mask))?, // (B, H, T, D)
            Precision::Bf16 => rounded_attention(&q, &k, &v, &self.log_beta.exp()?, mask)?,
        };
        self.proj.forward(&Self::merge_heads(&y)?, kern, p) // (B, T, C)
    }

    /// Forward pass for new positions only, appending their keys and values to `cache`
    /// (preallocated for the whole context, so appending copies only the new positions).
    fn forward_cached(&self, x: &Tensor, mask: Option<&Tensor>, cache: &mut candle_nn::kv_cache::KvCache) -> Result<Tensor> {
        let past = cache.current_seq_len();
        let qkv = self.qkv.forward_only(x, self.kernels, self.precision)?; // (B, Tnew, 3C)
        let (q, k, v) = if self.kernels.fused_for(&qkv) {
            self.split_plain(&self.rotate_fused(qkv, past)?)?
        } else {
            self.split_heads(&qkv, past)?
        }; // (B, H, Tnew, D) each
        // Views of the cache, (B, H, Tpast+Tnew, D): strided only along T, so B and H still fold
        // into one batch dimension of the matmuls and no copy is needed.
        let (k, v) = cache.append(&k, &v)?;
        let y = Self::merge_heads(&boltzmann_attention(&q, &k, &v, &self.log_beta.exp()?, mask)?)?;
        self.proj.forward_only(&y, self.kernels, self.precision)
    }

    /// Forward pass that also returns, for every head, the weights alpha the attention actually
    /// applied (the fused kernel's own where it runs, else the composed softmax) and, computed
    /// apart from them, the energies E_ij = -s_ij and ln Z_i = logsumexp_j(beta_h s_ij) of scores
    /// recomputed from q and k by the composed path. Forward-only.
    fn forward_with_stats(&self, x: &Tensor, mask: &Tensor) -> Result<(Tensor, AttnStats)> {
        let (p, kern) = (self.precision, self.kernels);
        let projected = self.qkv.forward(x, kern, p)?; // (B, T, 3C)
        let (q, k, v) = self.split_heads(&projected, 0)?; // (B, H, T, D) each, composed rotary phases
        let beta = self.log_beta.exp()?; // (H,)
        let (y, alpha) = if self.kernels.fused_for(x) {
            let qkv = self.rotate_fused(projected, 0)?;
            let bf16 = self.bf16_kernel()?;
            let (y, alpha) = kernels::attention::causal_attention_with_weights_in(&qkv, &self.query_scale()?, self.n_head, bf16)?;
            (self.proj.forward(&y, kern, p)?, alpha)
        } else {
            let alpha = boltzmann_weights(&q, &k, &beta, Some(mask))?;
            (self.proj.forward(&Self::merge_heads(&alpha.matmul(&v)?)?, kern, p)?, alpha)
        };
        // The reported side, independent of alpha: s_ij = q_i.k_j / sqrt(d) and its log-sum-exp.
        let s = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?.broadcast_add(mask)?; // -inf masked: (B, H, T, T)
        let bs = s.broadcast_mul(&beta.reshape((1, self.n_head, 1, 1))?)?; // beta_h s_ij
        let max = bs.max_keepdim(D::Minus1)?; // (B, H, T, 1), finite: the diagonal is always allowed
        let ln_z = (bs.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?; // (B, H, T, 1)
        let stats = AttnStats { alpha, ln_z: ln_z.squeeze(D::Minus1)?, energy: s.neg()?, beta };
        Ok((y, stats))
    }
}

/// Boltzmann attention on explicit queries, keys and values, the core of [`Attention`]:
///
///   alpha_ij = exp(beta_h q_i.k_j / sqrt(D) + b_ij) / Z_i,   out_i = sum_j alpha_ij v_j
///
/// q `(B, H, Tq, D)`, k `(B, H, Tk, D)`, v `(B, H, Tk, Dv)`, beta `(H,)`, and an additive bias
/// `(Tq, Tk)` (the causal mask's 0 / -inf, or any per-key energy shift; None: 0) ->
/// `(B, H, Tq, Dv)`. Any float dtype; differentiable.
pub fn boltzmann_attention(q: &Tensor, k: &Tensor, v: &Tensor, beta: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    boltzmann_weights(q, k, beta, bias)?.matmul(v) // (B, H, Tq, Dv)
}

/// [`boltzmann_attention`] with causal `mask` and every product's operands rounded to bf16 (the
/// scaled queries, the keys, the weights and the values): the composed reference of the fused
/// kernel's bf16 path.
fn rounded_attention(q: &Tensor, k: &Tensor, v: &Tensor, beta: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (_, h, _, d) = q.dims4()?;
    let scale = (beta / (d as f64).sqrt())?.reshape((1, h, 1, 1))?;
    let q = round_bf16(&q.broadcast_mul(&scale)?)?;
    let logits = q.matmul(&round_bf16(k)?.t()?)?.broadcast_add(mask)?; // beta_h s_ij: (B, H, Tq, Tk)
    let alpha = candle_nn::ops::softmax(&logits, D::Minus1)?;
    round_bf16(&alpha)?.matmul(&round_bf16(v)?) // (B, H, Tq, Dv)
}

/// The weights of [`boltzmann_attention`]: alpha `(B, H, Tq, Tk)`, each row summing to 1.
pub fn boltzmann_weights(q: &Tensor, k: &Tensor, beta: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, h, _, d) = q.dims4()?;
    // beta_h / sqrt(d) folded into q: cheaper than scaling the (Tq, Tk) scores, same numbers.
    let scale = (beta / (d as f64).sqrt())?.reshape((1, h, 1, 1))?;
    let q = q.broadcast_mul(&scale)?;
    let mut logits = q.matmul(&k.t()?)?; // beta_h s_ij: (B, H, Tq, Tk)
    if let Some(bias) = bias {
        logits = logits.broadcast_add(bias)?; // e.g. -inf where a key is in the future
    }
    candle_nn::ops::softmax(&logits, D::Minus1) // (B, H, Tq, Tk)
}

/// One pre-LayerNorm transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(cfg: &ModelConfig, init_std: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: LayerNorm::new(cfg, kernels, vb.pp("ln1"))?,
            attn: Attention::new(cfg, init_std, kernels, vb.pp("attn"))?,
            ln2: LayerNorm::new(cfg, kernels, vb.pp("ln2"))?,
            mlp: Mlp::new(cfg, init_std, kernels, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        // Attention is the only layer that mixes information across positions.
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        &x + self.mlp.forward(&self.ln2.forward(&x)?)?
    }

    fn forward_cached(&self, x: &Tensor, mask: Option<&Tensor>, cache: &mut candle_nn::kv_cache::KvCache) -> Result<Tensor> {
        let x = (x + self.attn.forward_cached(&self.ln1.forward(x)?, mask, cache)?)?;
        &x + self.mlp.forward_cached(&self.ln2.forward(&x)?)?
    }

    fn forward_with_stats(&self, x: &Tensor, mask: &Tensor) -> Result<(Tensor, AttnStats)> {
        let (a, stats) = self.attn.forward_with_stats(&self.ln1.forward(x)?, mask)?;
        let x = (x + a)?;
        let x = (&x + self.mlp.forward(&self.ln2.forward(&x)?)?)?;
        Ok((x, stats))
    }
}

/// The whole language model.
#[derive(Debug, Clone)]
pub struct Gpt {
    tok_emb: Embedding,
    /// Learned absolute positions `(context, C)`; None with rotary positions.
    pos_emb: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
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
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, init_std, kernels, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(cfg, kernels, vb.pp("ln_f"))?;
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

    /// Additive causal mask `(T, past + T)` in `dtype` for T queries that follow `past` cached
    /// positions: query i (absolute position past + i) may see keys 0..=past + i, so 0 there and
    /// -inf beyond. With past = 0, the usual lower-triangular `(T, T)` mask.
    fn causal_mask(past: usize, t: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..past + t).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Tensor::from_vec(mask, (t, past + t), dev)?.to_dtype(dtype)
    }

    /// Embeddings of `ids` `(B, T)` at positions 0..T -> `(B, T, C)`, with the causal mask.
    fn embed(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, t) = ids.dims2()?;
        if t > self.cfg.context {
            candle_core::bail!("input of {t} tokens is longer than the model's context of {}", self.cfg.context)
        }
        let x = self.embed_at(ids, 0)?; // (B, T, C)
        let mask = Self::causal_mask(0, t, x.dtype(), ids.device())?;
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
        let (mut x, mask) = self.embed(ids)?;
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        self.head(&x)
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
        if cache.layers.len() != self.blocks.len() {
            cache.layers = (0..self.blocks.len()).map(|_| candle_nn::kv_cache::KvCache::new(2, self.cfg.context)).collect();
        }
        let mut x = self.embed_at(ids, past)?; // (B, Tnew, C)
        // One new token sees every cached key: no mask.
        let mask = if t > 1 { Some(Self::causal_mask(past, t, x.dtype(), ids.device())?) } else { None };
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

/// Keys and values of the positions seen so far, per layer: each `(B, H, T, D)`, in buffers
/// allocated for the whole context on first use.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
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
