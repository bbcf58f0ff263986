//! Llama-architecture folders (`model_type` "llama": SmolLM2, SimpleStories, TinyLlama,
//! Llama 3.2) and the Qwen families built on it: "qwen2" (Qwen2.5: q/k/v biases) and "qwen3"
//! (per-head RMSNorm of queries and keys, an explicit `head_dim`).
//!
//! RMSNorm, SwiGLU, grouped-query attention, rotary phases on every dimension with `rope_theta`
//! and Llama 3's `rope_scaling`, tied or untied head. The rotary layout is rotate-half; the q and
//! k rows (and Qwen3's q/k norm gains) are permuted into adjacent pairs here, as llama.cpp's
//! converter does, so the model runs one rotary kernel for every family.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

use super::hf::{self, to_adjacent_pairs, HfConfig};
use super::take;
use super::Imported;
use crate::config::{MlpKind, ModelConfig, Spelling, Norm, Positions};

/// The three `model_type`s read here.
pub const MODEL_TYPES: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// Read a Llama, Qwen2 or Qwen3 folder; `tokenizer` replaces its `tokenizer.json`.
pub fn read(dir: &Path, cfg: &HfConfig, tokenizer: Option<&Path>) -> Result<Imported> {
    let kind = cfg.model_type().unwrap_or("llama").to_string();
    let act = cfg.str_or("hidden_act", "silu")?;
    if act != "silu" {
        return cfg.unsupported(&format!("hidden_act is {act:?} (SwiGLU's gate is silu)"));
    }
    if cfg.bool_or("mlp_bias", false)? {
        return cfg.unsupported("mlp_bias is true");
    }
    if cfg.bool_or("use_sliding_window", false)? {
        return cfg.unsupported("use_sliding_window is true (sliding-window Qwen)");
    }
    if let Some(types) = cfg.get("layer_types").and_then(|v| v.as_array()) {
        if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
            return cfg.unsupported(&format!("layer_types has {t} (only full_attention is)"));
        }
    }
    if cfg.opt_usize("pretraining_tp")?.is_some_and(|tp| tp != 1) {
        return cfg.unsupported("pretraining_tp is not 1");
    }
    let attention_bias = cfg.bool_or("attention_bias", false)?;
    let qkv_bias = match kind.as_str() {
        "qwen2" => true, // Qwen2's q, k and v always have biases, its o_proj none
        _ if attention_bias => return cfg.unsupported("attention_bias is true (biases on q, k, v and o)"),
        _ => false,
    };
    let qk_norm = kind == "qwen3";
    let (d, n_head) = (cfg.usize("hidden_size")?, cfg.usize("num_attention_heads")?);
    let n_kv = cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(d / n_head.max(1));
    let (theta, fraction, scaling) = cfg.rope(10_000.0)?;
    if fraction != 1.0 {
        return cfg.unsupported(&format!("partial rotary ({fraction} of each head) in a {kind} model"));
    }
    let start = hf::start_id(cfg)?;
    let (tok, start) = hf::read_tokenizer(dir, tokenizer, start)?;
    let model = ModelConfig {
        vocab_size: cfg.usize("vocab_size")?,
        context: cfg.usize("max_position_embeddings")?,
        n_layer: cfg.usize("num_hidden_layers")?,
        n_head,
        d_model: d,
        positions: Positions::Rope,
        bias: false,
        ln_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        tied_head: cfg.bool_or("tie_word_embeddings", false)?,
        start,
        norm: Norm::RmsNorm,
        mlp: MlpKind::SwiGlu,
        d_ff: Some(cfg.usize("intermediate_size")?),
        n_kv_head: (n_kv != n_head).then_some(n_kv),
        d_head: (head_dim * n_head != d).then_some(head_dim),
        rope_theta: theta,
        rope_scaling: scaling,
        qkv_bias: qkv_bias.then_some(true),
        qk_norm,
        score_scale: Some(1.0 / (head_dim as f64).sqrt()),
        ..ModelConfig::nano_cpu(2)
    };
    let names = Spelling::file("`num_hidden_layers`", "`num_attention_heads`", "`hidden_size`", "`num_key_value_heads`", "`max_position_embeddings`", "`rope_theta`");
    hf::finish(dir, cfg, kind.as_str(), names, model, tok, tensors)
}

/// Their tensors as this crate's: the table of names, and q/k/v and gate/up fused.
fn tensors(cfg: &ModelConfig, mut w: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    // Older exports and some fine-tunes drop the `model.` prefix.
    w = w.into_iter().map(|(k, t)| (k.strip_prefix("model.").map(str::to_string).unwrap_or(k), t)).collect();
    let (d, v, h, kv, hd, f) = (cfg.d_model, cfg.vocab_size, cfg.n_head, cfg.kv_heads(), cfg.head_dim(), cfg.ff_width());
    let mut out = HashMap::new();
    out.insert("tok_emb.weight".to_string(), take(&mut w, "embed_tokens.weight", &[v, d])?);
    out.insert("ln_f.weight".to_string(), take(&mut w, "norm.weight", &[d])?);
    if cfg.tied_head {
        w.remove("lm_head.weight");
    } else {
        out.insert("lm_head.weight".to_string(), take(&mut w, "lm_head.weight", &[v, d])?);
    }
    for l in 0..cfg.n_layer {
        let (theirs, ours) = (format!("layers.{l}"), format!("blocks.{l}"));
        let mut one = |src: &str, dst: &str, shape: &[usize]| -> Result<()> {
            out.insert(format!("{ours}.{dst}"), take(&mut w, &format!("{theirs}.{src}"), shape)?);
            Ok(())
        };
        // (theirs, ours, shape): matrices (out, in) as nn.Linear stores them.
        one("input_layernorm.weight", "ln1.weight", &[d])?;
        one("post_attention_layernorm.weight", "ln2.weight", &[d])?;
        one("self_attn.o_proj.weight", "attn.proj.weight", &[d, h * hd])?;
        one("mlp.down_proj.weight", "mlp.proj.weight", &[d, f])?;
        let mut part = |name: &str, shape: &[usize]| take(&mut w, &format!("{theirs}.{name}"), shape);
        // q and k rows into adjacent rotary pairs, then [q; k; v] as one projection.
        let q = to_adjacent_pairs(&part("self_attn.q_proj.weight", &[h * hd, d])?, h, hd, hd)?;
        let k = to_adjacent_pairs(&part("self_attn.k_proj.weight", &[kv * hd, d])?, kv, hd, hd)?;
        let vv = part("self_attn.v_proj.weight", &[kv * hd, d])?;
        out.insert(format!("{ours}.attn.qkv.weight"), Tensor::cat(&[q, k, vv], 0)?);
        if cfg.has_qkv_bias() {
            let q = to_adjacent_pairs(&part("self_attn.q_proj.bias", &[h * hd])?, h, hd, hd)?;
            let k = to_adjacent_pairs(&part("self_attn.k_proj.bias", &[kv * hd])?, kv, hd, hd)?;
            let vv = part("self_attn.v_proj.bias", &[kv * hd])?;
            out.insert(format!("{ours}.attn.qkv.bias"), Tensor::cat(&[q, k, vv], 0)?);
        }
        if cfg.qk_norm {
            for (src, dst) in [("q_norm", "q_norm"), ("k_norm", "k_norm")] {
                let g = to_adjacent_pairs(&part(&format!("self_attn.{src}.weight"), &[hd])?, 1, hd, hd)?;
                out.insert(format!("{ours}.attn.{dst}.weight"), g);
            }
        }
        // SwiGLU's gate rows, then the up projection's, as one matrix.
        let gate = part("mlp.gate_proj.weight", &[f, d])?;
        let up = part("mlp.up_proj.weight", &[f, d])?;
        out.insert(format!("{ours}.mlp.fc.weight"), Tensor::cat(&[gate, up], 0)?);
        out.insert(format!("{ours}.attn.log_beta"), super::unit_temperatures(h)?);
    }
    hf::no_leftovers(&w)?;
    Ok(out)
}
