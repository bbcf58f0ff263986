//! Causal multi-head self-attention with a per-head inverse temperature.
//!
//! Attention of query head h at query i over the keys j it may see (j <= i, and within the
//! layer's local window where it has one):
//!
//!   s_ij = beta_0 q_i . k_j                  (the score; E_ij = -s_ij is the energy)
//!   alpha_ij = exp(beta_h s_ij) / Z_i,  Z_i = sum_j exp(beta_h s_ij),  beta_h = 1 / T_h
//!
//! beta_0 is the architecture's score scale (1/sqrt(d_head) for most families, 1 for GPT-Neo),
//! so T_h = 1 for every head is the model as trained. `ln beta_h` is stored per layer as
//! `blocks.L.attn.log_beta` `(n_head,)` and trained when `learn_temperature` is set. With
//! grouped-query attention (n_kv_head < n_head) a group of query heads reads one key/value head,
//! and each query head keeps its own beta.
//!
//! The projection `qkv` `(H D + 2 K D, d)` holds the queries' rows, then the keys', then the
//! values'. Queries and keys may pass a per-head RMSNorm (Qwen3) and then the rotary phases of
//! [`crate::model::rope`] (adjacent pairs; importers permute rotate-half models into this layout).
//!
//! The composed path below is the readable reference. For f32 on the CPU the same function runs
//! through the fused attention kernel ([`crate::kernels::attention`]), and for the GPT shape the
//! fused rotary kernel too.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::dense::{round_bf16, Dense};
use super::norm::Norm;
use super::residual_std;
use super::rope::Rope;
use crate::config::{ModelConfig, Norm as NormKind, Precision};
use crate::kernels::{self, Kernels};

/// Per-head Boltzmann statistics of one attention layer, for a batch of sequences.
///
/// `alpha` is what the attention applied; `ln_z` and `energy` come from scores recomputed apart
/// from it. So `alpha` is the Boltzmann distribution of `energy` at `beta` exactly when
/// `H(alpha) = beta <E>_alpha + ln Z`, the residual that [`crate::physics::thermo`] reports.
#[derive(Debug, Clone)]
pub struct AttnStats {
    /// Attention weights alpha_ij as the layer applied them (the fused kernel's own on the CPU in
    /// f32, the composed softmax elsewhere), `(B, H, T, T)`; zero where a key is not seen.
    pub alpha: Tensor,
    /// ln Z_i = ln sum_j exp(beta_h s_ij) of every query over the keys it sees, `(B, H, T)`, from
    /// the recomputed scores (not from alpha).
    pub ln_z: Tensor,
    /// Energies E_ij = -s_ij = -beta_0 q_i.k_j, `(B, H, T, T)`; +inf for keys a query may not see
    /// (the future, and outside a local window).
    pub energy: Tensor,
    /// Inverse temperature of every head, `(H,)` (0 for a head patched hot).
    pub beta: Tensor,
    /// Per query position, the factor of the length scaling beta_h(n) = beta_h (1 + s ln n)
    /// ([`crate::Gpt::set_log_n_scaling`]); all ones without it. Row i's inverse temperature
    /// is `beta_h * row_scale[i]`.
    pub row_scale: Vec<f64>,
}

/// A forward-only intervention on one head's attention weights, for whole-sequence passes
/// ([`crate::Gpt::patch_head`]).
#[derive(Debug, Clone)]
pub enum HeadPatch {
    /// T -> infinity: uniform weights over the keys each query may see (beta_h = 0).
    Hot,
    /// T -> 0: all weight on the allowed key of highest score, the first on a tie.
    Cold,
    /// These weights `(T, T)` `[query][key]`, the same for every sequence of the batch (the
    /// activation-patching hook; applied as given, masks and all).
    Weights(Tensor),
}

/// Causal multi-head self-attention with a per-head inverse temperature.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Dense,
    proj: Dense,
    /// Per-head RMSNorm of queries and keys (Qwen3), else None.
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    /// ln beta_h, `(H,)`.
    log_beta: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// beta_0.
    score_scale: f64,
    /// The local window of this layer, None where it is global.
    window: Option<usize>,
    /// Whether the fused kernels take the projection as it is (everything but Qwen3's q/k norm,
    /// which runs between the projection and the rotary phases).
    direct: bool,
    /// Rotary phases applied to queries and keys (`Positions::Rope`), else None.
    rope: Option<Rope>,
    pub(crate) kernels: Kernels,
    pub(crate) precision: Precision,
    /// Forward-only interventions on single heads, by head index.
    patches: Vec<(usize, HeadPatch)>,
    /// s of the length scaling beta_h(n) = beta_h (1 + s ln n), 0 for none.
    log_n_scaling: f64,
}

impl Attention {
    /// Layer `layer` of the model `cfg` describes, with the model's rotary tables (shared by
    /// every layer) where it has them.
    pub fn new(cfg: &ModelConfig, layer: usize, rope: Option<&Rope>, init_std: f64, kernels: Kernels, vb: VarBuilder) -> Result<Self> {
        let (d, h, kv, hd) = (cfg.d_model, cfg.n_head, cfg.kv_heads(), cfg.head_dim());
        let qkv = Dense::new(d, (h + 2 * kv) * hd, init_std, cfg.has_qkv_bias(), vb.pp("qkv"))?;
        let proj = Dense::new(h * hd, d, residual_std(cfg, init_std), cfg.bias, vb.pp("proj"))?;
        let head_norm = |name: &str| -> Result<Option<Norm>> {
            cfg.qk_norm.then(|| Norm::of_width(NormKind::RmsNorm, hd, false, cfg.ln_eps, kernels, vb.pp(name))).transpose()
        };
        let (q_norm, k_norm) = (head_norm("q_norm")?, head_norm("k_norm")?);
        let log_beta = vb.get_with_hints(h, "log_beta", Init::Const(-cfg.attn_temperature.ln()))?;
        let rope = rope.cloned();
        let window = cfg.window(layer);
        let direct = !cfg.qk_norm;
        Ok(Self {
            qkv,
            proj,
            q_norm,
            k_norm,
            log_beta,
            n_head: h,
            n_kv_head: kv,
            head_dim: hd,
            score_scale: cfg.score_scale(),
            window,
            direct,
            rope,
            kernels,
            precision: Precision::F32,
            patches: Vec::new(),
            log_n_scaling: 0.0,
        })
    }

    /// Patch head `head` (replacing an earlier patch of it).
    pub(crate) fn patch(&mut self, head: usize, patch: HeadPatch) {
        self.patches.retain(|(h, _)| *h != head);
        self.patches.push((head, patch));
    }

    /// Set s of the length scaling beta_h(n) = beta_h (1 + s ln n).
    pub(crate) fn set_log_n_scaling(&mut self, s: f64) {
        self.log_n_scaling = s;
    }

    /// Make ln beta a variable of its own (a copy), so that a backward pass gives d/d ln beta_h.
    pub(crate) fn temperature_var(&mut self) -> Result<candle_core::Var> {
        let var = candle_core::Var::from_tensor(&self.log_beta.detach())?;
        self.log_beta = var.as_tensor().clone();
        Ok(var)
    }

    /// Whether a patch replaces weights (Cold, Weights): those heads run the composed path.
    fn weights_patched(&self) -> bool {
        self.patches.iter().any(|(_, p)| !matches!(p, HeadPatch::Hot))
    }

    /// Per query at positions `offset..offset + t`, the factor 1 + s ln n of the length scaling,
    /// n the keys the query sees; None without scaling.
    fn row_factors(&self, offset: usize, t: usize) -> Option<Vec<f64>> {
        (self.log_n_scaling != 0.0).then(|| {
            (offset..offset + t)
                .map(|i| {
                    let n = (i + 1).min(self.window.unwrap_or(usize::MAX));
                    1.0 + self.log_n_scaling * (n as f64).ln()
                })
                .collect()
        })
    }

    /// Queries `(B, H, T, D)` at positions `offset..` times their row factors (unchanged without
    /// length scaling).
    fn scale_rows(&self, q: Tensor, offset: usize) -> Result<Tensor> {
        match self.row_factors(offset, q.dim(2)?) {
            Some(f) => q.broadcast_mul(&factors(&f, (1, 1, f.len(), 1), &q)?),
            None => Ok(q),
        }
    }

    /// The fused kernel's input `(B, T, (H + 2K) D)` with its query columns times their row
    /// factors (unchanged without length scaling).
    fn scale_packed_rows(&self, packed: Tensor) -> Result<Tensor> {
        let (_, t, w) = packed.dims3()?;
        match self.row_factors(0, t) {
            Some(f) => {
                let hd = self.n_head * self.head_dim;
                let q = packed.narrow(2, 0, hd)?.broadcast_mul(&factors(&f, (1, t, 1), &packed)?)?;
                Tensor::cat(&[q, packed.narrow(2, hd, w - hd)?], 2)
            }
            None => Ok(packed),
        }
    }

    /// The weights `(B, H, T, T)` of queries `q` (row factors applied) on keys `k` `(B, H, T, D)`
    /// under `mask`, with every patched head's replaced: Hot ones are already uniform
    /// (beta_h = 0 in `scale`), Cold ones one-hot on their first highest-scoring allowed key,
    /// Weights ones as given.
    fn patched_weights(&self, q: &Tensor, k: &Tensor, scale: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let alpha = scaled_weights(q, k, scale, Some(mask))?;
        let (b, h, t, tk) = alpha.dims4()?;
        let mut heads: Vec<Tensor> = (0..h).map(|i| alpha.narrow(1, i, 1)).collect::<Result<_>>()?;
        for (head, patch) in &self.patches {
            heads[*head] = match patch {
                HeadPatch::Hot => continue,
                HeadPatch::Weights(w) => {
                    if w.dims() != [t, tk] {
                        candle_core::bail!("patched weights of head {head} are {:?}, the pass needs ({t}, {tk})", w.dims())
                    }
                    w.to_dtype(alpha.dtype())?.reshape((1, 1, t, tk))?.broadcast_as((b, 1, t, tk))?.contiguous()?
                }
                HeadPatch::Cold => {
                    // Scores of this head with the mask: the order of beta_h beta_0 q.k for any
                    // positive factor (and any row factor).
                    let s = q.narrow(1, *head, 1)?.matmul(&k.narrow(1, *head, 1)?.t()?)?.broadcast_add(mask)?; // (B, 1, T, Tk)
                    let rows = s.to_dtype(DType::F32)?.flatten_to(2)?.to_vec2::<f32>()?; // (B*T, Tk)
                    let mut one_hot = vec![0f32; b * t * tk];
                    for (r, row) in rows.iter().enumerate() {
                        // The first maximum: a later key must be strictly higher to win.
                        let best = row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
                        one_hot[r * tk + best] = 1.0;
                    }
                    Tensor::from_vec(one_hot, (b, 1, t, tk), alpha.device())?.to_dtype(alpha.dtype())?
                }
            };
        }
        Tensor::cat(&heads, 1)
    }

    /// Pack the projections in bf16 now (forward-only use).
    pub(crate) fn prepare_bf16(&self) -> Result<()> {
        self.qkv.prepare_bf16()?;
        self.proj.prepare_bf16()
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

    /// Queries `(B, H, T, D)`, keys and values `(B, K, T, D)` of the projection `(B, T, (H + 2K) D)`
    /// of rows at positions `offset..`: queries and keys normalised (Qwen3) and rotated where
    /// the model does so.
    fn heads(&self, qkv: &Tensor, offset: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (mut q, mut k, v) = self.split_plain(qkv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            (q, k) = (qn.forward(&q)?, kn.forward(&k)?);
        }
        match &self.rope {
            Some(rope) => Ok((rope.apply_bhtd(&q, offset)?, rope.apply_bhtd(&k, offset)?, v)),
            None => Ok((q, k, v)),
        }
    }

    /// Queries `(B, H, T, D)`, keys and values `(B, K, T, D)`, split from the projection as they
    /// are (no norm, no rotary phases).
    fn split_plain(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = qkv.dims3()?;
        let (h, kv, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let part = |start: usize, heads: usize| qkv.narrow(2, start * d, heads * d)?.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
        Ok((part(0, h)?, part(h, kv)?, part(h + kv, kv)?))
    }

    /// Keys or values `(B, K, T, D)` read by every query head: `(B, H, T, D)`, query head h
    /// reading key head h / (H / K). Unchanged without grouping.
    fn expand_kv(&self, x: &Tensor) -> Result<Tensor> {
        let group = self.n_head / self.n_kv_head;
        if group == 1 {
            return Ok(x.clone());
        }
        let (b, kv, t, d) = x.dims4()?;
        x.unsqueeze(2)?.expand((b, kv, group, t, d))?.reshape((b, kv * group, t, d))
    }

    /// The projection `(B, T, (H + 2K) D)` of rows at positions `offset..` with its queries and
    /// keys rotated by the fused kernel (unchanged without rotary positions).
    fn rotate_fused(&self, qkv: Tensor, offset: usize) -> Result<Tensor> {
        match &self.rope {
            Some(rope) => kernels::rope::rotate_heads(&qkv, rope.tables(), offset, self.head_dim, self.n_head + self.n_kv_head),
            None => Ok(qkv),
        }
    }

    /// The fused attention kernel's input `(B, T, (H + 2K) D)`: queries and keys after their norm
    /// and rotary phases.
    fn packed(&self, qkv: Tensor) -> Result<Tensor> {
        if self.direct {
            return self.rotate_fused(qkv, 0);
        }
        let (q, k, v) = self.heads(&qkv, 0)?;
        Tensor::cat(&[Self::merge_heads(&q)?, Self::merge_heads(&k)?, Self::merge_heads(&v)?], 2)
    }

    /// The heads the fused kernel reads, and this layer's window.
    fn kernel_heads(&self) -> kernels::attention::Heads {
        kernels::attention::Heads { n_head: self.n_head, n_kv_head: self.n_kv_head, window: self.window }
    }

    /// Merge heads: `(B, H, T, D)` -> `(B, T, H D)`.
    fn merge_heads(y: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = y.dims4()?;
        y.transpose(1, 2)?.reshape((b, t, h * d))
    }

    /// beta_h, `(H,)`: exp(ln beta_h), and 0 for a head patched hot (T = infinity).
    fn betas(&self) -> Result<Tensor> {
        let beta = self.log_beta.exp()?;
        if !self.patches.iter().any(|(_, p)| matches!(p, HeadPatch::Hot)) {
            return Ok(beta);
        }
        let keep: Vec<f32> = (0..self.n_head).map(|h| if self.patches.iter().any(|(i, p)| *i == h && matches!(p, HeadPatch::Hot)) { 0.0 } else { 1.0 }).collect();
        beta.mul(&Tensor::from_vec(keep, self.n_head, beta.device())?.to_dtype(beta.dtype())?)
    }

    /// beta_h beta_0, `(H,)`: the factor folded into the queries.
    fn query_scale(&self) -> Result<Tensor> {
        self.betas()? * self.score_scale
    }

    /// The bf16 kernel of the fused attention's products, None in f32.
    fn bf16_kernel(&self) -> Result<Option<kernels::bf16::Kernel>> {
        if self.precision == Precision::Bf16 {
            Ok(Some(kernels::bf16::ops::kernel()?))
        } else {
            Ok(None)
        }
    }

    /// This layer's additive mask for queries whose causal mask is `causal` `(Tq, Tk)`: the
    /// same, with keys outside the local window masked too.
    fn layer_mask(&self, causal: Option<&Tensor>, tq: usize, tk: usize, like: &Tensor) -> Result<Option<Tensor>> {
        match self.window {
            Some(w) if tk > w => Ok(Some(causal_mask(tk - tq, tq, Some(w), like.dtype(), like.device())?)),
            _ => Ok(causal.cloned()),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (p, kern) = (self.precision, self.kernels);
        let projected = self.qkv.forward(x, kern, p)?; // (B, T, (H + 2K) D)
        let patched = self.weights_patched();
        if kern.fused_for(x) && !patched {
            // The same function in one op, from the queries, keys and values to the merged heads.
            let packed = self.scale_packed_rows(self.packed(projected)?)?;
            let y = kernels::attention::causal_attention_in(&packed, &self.query_scale()?, self.kernel_heads(), self.bf16_kernel()?)?; // (B, T, H D)
            return self.proj.forward(&y, kern, p);
        }
        // The readable reference: queries, keys and values (B, H, T, D) each, the Boltzmann
        // weights over the allowed keys, the heads merged and projected back.
        let (b, t, _) = x.dims3()?;
        let (q, k, v) = self.heads(&projected, 0)?;
        let q = self.scale_rows(q, 0)?;
        let (k, v) = (self.expand_kv(&k)?, self.expand_kv(&v)?);
        let mask = self.layer_mask(Some(mask), t, t, x)?.expect("a causal mask was given");
        let scale = self.query_scale()?;
        let y = match p {
            // Patched heads run in f32 arithmetic whatever the precision.
            _ if patched => self.patched_weights(&q, &k, &scale, &mask)?.matmul(&v)?,
            Precision::F32 => scaled_attention(&q, &k, &v, &scale, Some(&mask))?, // (B, H, T, D)
            Precision::Bf16 => rounded_attention(&q, &k, &v, &scale, &mask)?,
        };
        debug_assert_eq!(y.dims4()?.0, b);
        self.proj.forward(&Self::merge_heads(&y)?, kern, p) // (B, T, d)
    }

    /// Forward only, for a pre-norm block: `x + attention(norm(x))`, with the norm made on the
    /// way into the q|k|v product and the residual added by the output projection's pass (the
    /// same values as [`Attention::forward`] composed with the norm and the add). None where
    /// that does not apply (the caller composes).
    pub(crate) fn forward_residual(&self, norm: &Norm, x: &Tensor) -> Result<Option<Tensor>> {
        let (p, kern) = (self.precision, self.kernels);
        let Some(rows) = norm.rows(x) else { return Ok(None) };
        if !kern.fused_for(x) || self.weights_patched() {
            return Ok(None);
        }
        let Some(projected) = self.qkv.forward_rows(x, Some(rows), None, kern, p)? else { return Ok(None) };
        let packed = self.scale_packed_rows(self.packed(projected)?)?;
        let y = kernels::attention::causal_attention_in(&packed, &self.query_scale()?, self.kernel_heads(), self.bf16_kernel()?)?; // (B, T, H D)
        match self.proj.forward_rows(&y, None, Some(x), kern, p)? {
            Some(out) => Ok(Some(out)),
            None => Ok(Some((x + self.proj.forward(&y, kern, p)?)?)),
        }
    }

    /// Forward pass for new positions only, appending their keys and values to `cache`
    /// (preallocated for the whole context, so appending copies only the new positions).
    pub(crate) fn forward_cached(&self, x: &Tensor, mask: Option<&Tensor>, cache: &mut candle_nn::kv_cache::KvCache) -> Result<Tensor> {
        let past = cache.current_seq_len();
        if self.weights_patched() {
            candle_core::bail!("a head patched cold or with given weights runs only in whole-sequence passes, not with a key/value cache")
        }
        let qkv = self.qkv.forward_only(x, self.kernels, self.precision)?; // (B, Tnew, (H + 2K) D)
        let (q, k, v) = if self.direct && self.kernels.fused_for(&qkv) {
            self.split_plain(&self.rotate_fused(qkv, past)?)?
        } else {
            self.heads(&qkv, past)?
        }; // (B, H, Tnew, D), (B, K, Tnew, D) twice
        let q = self.scale_rows(q, past)?;
        // Views of the cache, (B, K, Tpast+Tnew, D): strided only along T, so B and H still fold
        // into one batch dimension of the matmuls and no copy is needed.
        let (k, v) = cache.append(&k.contiguous()?, &v.contiguous()?)?;
        let (tq, tk) = (q.dim(2)?, k.dim(2)?);
        let mask = self.layer_mask(mask, tq, tk, x)?;
        let y = Self::merge_heads(&self.grouped_attention(&q, &k, &v, mask.as_ref())?)?;
        self.proj.forward_only(&y, self.kernels, self.precision)
    }

    /// [`scaled_attention`] of queries `(B, H, Tq, D)` on grouped keys and values
    /// `(B, K, Tk, D)` without copying them out to every query head: a group's G query heads are
    /// consecutive, so the queries read as `(B, K, G Tq, D)`, one batch of rows per key head.
    /// The same numbers as expanding the keys (each score is the same dot product); what the
    /// cached path runs, where the keys are the whole cache and a copy per token would cost more
    /// than the token's products.
    fn grouped_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if mask.is_none() && self.kernels.fused_for(q) {
            return kernels::decode::cached_attention(q, k, v, &self.query_scale()?);
        }
        let group = self.n_head / self.n_kv_head;
        if group == 1 {
            return scaled_attention(q, k, v, &self.query_scale()?, mask);
        }
        let (b, h, tq, d) = q.dims4()?;
        let kv = self.n_kv_head;
        let q = q.broadcast_mul(&self.query_scale()?.reshape((1, h, 1, 1))?)?.reshape((b, kv, group * tq, d))?;
        let mut logits = q.matmul(&k.t()?)?; // beta_h s_ij: (B, K, G Tq, Tk)
        if let Some(mask) = mask {
            logits = logits.broadcast_add(&mask.repeat((group, 1))?)?; // the same mask for every head of the group
        }
        let alpha = candle_nn::ops::softmax_last_dim(&logits)?;
        alpha.matmul(v)?.reshape((b, h, tq, d)) // (B, H, Tq, D)
    }

    /// Forward pass that also returns, for every head, the weights alpha the attention actually
    /// applied (the fused kernel's own where it runs, else the composed softmax) and, computed
    /// apart from them, the energies E_ij = -s_ij and ln Z_i = logsumexp_j(beta_h s_ij) of scores
    /// recomputed from q and k by the composed path. Forward-only.
    pub(crate) fn forward_with_stats(&self, x: &Tensor, mask: &Tensor) -> Result<(Tensor, AttnStats)> {
        let (p, kern) = (self.precision, self.kernels);
        let t = x.dim(1)?;
        let projected = self.qkv.forward(x, kern, p)?; // (B, T, (H + 2K) D)
        let (q, k, v) = self.heads(&projected, 0)?; // composed norm and rotary phases
        let (k, v) = (self.expand_kv(&k)?, self.expand_kv(&v)?); // (B, H, T, D)
        let mask = self.layer_mask(Some(mask), t, t, x)?.expect("a causal mask was given");
        let beta = self.betas()?; // (H,)
        let (y, alpha) = if kern.fused_for(x) && !self.weights_patched() {
            let bf16 = self.bf16_kernel()?;
            let packed = self.scale_packed_rows(self.packed(projected)?)?;
            let (y, alpha) = kernels::attention::causal_attention_with_weights_in(&packed, &self.query_scale()?, self.kernel_heads(), bf16)?;
            (self.proj.forward(&y, kern, p)?, alpha)
        } else {
            let alpha = self.patched_weights(&self.scale_rows(q.clone(), 0)?, &k, &self.query_scale()?, &mask)?;
            (self.proj.forward(&Self::merge_heads(&alpha.matmul(&v)?)?, kern, p)?, alpha)
        };
        // The reported side, independent of alpha: s_ij = beta_0 q_i.k_j and its log-sum-exp at
        // each row's inverse temperature beta_h (1 + s ln n_i).
        let row_scale = self.row_factors(0, t).unwrap_or_else(|| vec![1.0; t]);
        let s = (q.matmul(&k.t()?)? * self.score_scale)?; // (B, H, T, T)
        let rows = factors(&row_scale, (1, 1, t, 1), &s)?;
        // Masked after the product, so that a hot head's beta = 0 meets no infinity.
        let bs = s.broadcast_mul(&beta.reshape((1, self.n_head, 1, 1))?)?.broadcast_mul(&rows)?.broadcast_add(&mask)?; // beta_h f_i s_ij
        let s = s.broadcast_add(&mask)?; // -inf masked
        let max = bs.max_keepdim(D::Minus1)?; // (B, H, T, 1), finite: the diagonal is always allowed
        let ln_z = (bs.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?; // (B, H, T, 1)
        let stats = AttnStats { alpha, ln_z: ln_z.squeeze(D::Minus1)?, energy: s.neg()?, beta, row_scale };
        Ok((y, stats))
    }
}

/// Per-row factors as a tensor of `shape` in `like`'s dtype and device, for broadcasting.
fn factors(values: &[f64], shape: impl Into<candle_core::Shape>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(values.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape, like.device())?.to_dtype(like.dtype())
}

/// Additive mask `(T, past + T)` in `dtype` for T queries that follow `past` cached positions:
/// query i (absolute position past + i) may see keys j <= past + i, and with a local `window`
/// w only those with j > past + i - w; 0 where it may, -inf elsewhere. With past = 0 and no
/// window, the usual lower-triangular `(T, T)` mask.
pub fn causal_mask(past: usize, t: usize, window: Option<usize>, dtype: DType, dev: &Device) -> Result<Tensor> {
    let w = window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..past + t).map(move |j| if j <= past + i && past + i - j < w { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, past + t), dev)?.to_dtype(dtype)
}

/// Boltzmann attention on explicit queries, keys and values:
///
///   alpha_ij = exp(beta_h q_i.k_j / sqrt(D) + b_ij) / Z_i,   out_i = sum_j alpha_ij v_j
///
/// q `(B, H, Tq, D)`, k `(B, H, Tk, D)`, v `(B, H, Tk, Dv)`, beta `(H,)`, and an additive bias
/// `(Tq, Tk)` (the causal mask's 0 / -inf, or any per-key energy shift; None: 0) ->
/// `(B, H, Tq, Dv)`. Any float dtype; differentiable.
pub fn boltzmann_attention(q: &Tensor, k: &Tensor, v: &Tensor, beta: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    boltzmann_weights(q, k, beta, bias)?.matmul(v) // (B, H, Tq, Dv)
}

/// The weights of [`boltzmann_attention`]: alpha `(B, H, Tq, Tk)`, each row summing to 1.
pub fn boltzmann_weights(q: &Tensor, k: &Tensor, beta: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let d = q.dim(3)?;
    scaled_weights(q, k, &(beta / (d as f64).sqrt())?, bias)
}

/// [`boltzmann_attention`] with the whole per-head factor `scale` `(H,)` = beta_h beta_0 given.
fn scaled_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    scaled_weights(q, k, scale, bias)?.matmul(v) // (B, H, Tq, Dv)
}

/// Softmax over keys of `scale_h q_i.k_j + bias_ij`: `(B, H, Tq, Tk)`.
fn scaled_weights(q: &Tensor, k: &Tensor, scale: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let h = q.dim(1)?;
    // The factor folded into q: cheaper than scaling the (Tq, Tk) scores, same numbers.
    let q = q.broadcast_mul(&scale.reshape((1, h, 1, 1))?)?;
    let mut logits = q.matmul(&k.t()?)?; // beta_h s_ij: (B, H, Tq, Tk)
    if let Some(bias) = bias {
        logits = logits.broadcast_add(bias)?; // e.g. -inf where a key is in the future
    }
    candle_nn::ops::softmax(&logits, D::Minus1) // (B, H, Tq, Tk)
}

/// [`scaled_attention`] with every product's operands rounded to bf16 (the scaled queries, the
/// keys, the weights and the values): the composed reference of the fused kernel's bf16 path.
fn rounded_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let h = q.dim(1)?;
    let q = round_bf16(&q.broadcast_mul(&scale.reshape((1, h, 1, 1))?)?)?;
    let logits = q.matmul(&round_bf16(k)?.t()?)?.broadcast_add(mask)?; // beta_h s_ij: (B, H, Tq, Tk)
    let alpha = candle_nn::ops::softmax(&logits, D::Minus1)?;
    round_bf16(&alpha)?.matmul(&round_bf16(v)?) // (B, H, Tq, Dv)
}
