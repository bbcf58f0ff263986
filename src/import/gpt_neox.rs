//! GPT-NeoX folders (`model_type` "gpt_neox": Pythia, with its training checkpoints as
//! `pytorch_model.bin` on the step branches).
//!
//! LayerNorms and Linear layers with biases, GELU, rotary phases on the first `rotary_pct` of
//! each head (rotate-half, permuted into adjacent pairs here), the parallel residual or not, an
//! untied `embed_out`, and an embedding padded past the tokenizer (50304 rows for 50277 tokens).
//!
//! The fused `query_key_value` weight is laid out per head: rows [q_h; k_h; v_h] for head 0, then
//! head 1, ... A plain three-way split of it would give fluent text from scrambled attention; it
//! is regrouped here into [q; k; v], each head-major.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

use super::hf::{self, to_adjacent_pairs, HfConfig};
use super::take;
use super::Imported;
use crate::config::{Activation, ModelConfig, Spelling, Positions};

pub const MODEL_TYPE: &str = "gpt_neox";

/// Read a GPT-NeoX folder; `tokenizer` replaces its `tokenizer.json`.
pub fn read(dir: &Path, cfg: &HfConfig, tokenizer: Option<&Path>) -> Result<Imported> {
    let activation = match cfg.str_or("hidden_act", "gelu")? {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        other => return cfg.unsupported(&format!("hidden_act is {other:?} (gelu and gelu_new are)")),
    };
    if !cfg.bool_or("attention_bias", true)? {
        return cfg.unsupported("attention_bias is false");
    }
    let (d, n_head) = (cfg.usize("hidden_size")?, cfg.usize("num_attention_heads")?);
    let head_dim = d / n_head.max(1);
    let (theta, fraction, scaling) = cfg.rope(10_000.0)?;
    if scaling.is_some() {
        return cfg.unsupported("rope scaling in a GPT-NeoX model");
    }
    // transformers: rotary_ndims = int(head_size * rotary_pct).
    let rope_dims = (head_dim as f64 * fraction) as usize;
    let start = hf::start_id(cfg)?;
    let (tok, start) = hf::read_tokenizer(dir, tokenizer, start)?;
    let model = ModelConfig {
        vocab_size: cfg.usize("vocab_size")?,
        context: cfg.usize("max_position_embeddings")?,
        n_layer: cfg.usize("num_hidden_layers")?,
        n_head,
        d_model: d,
        positions: Positions::Rope,
        bias: true,
        activation,
        ln_eps: cfg.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        tied_head: cfg.bool_or("tie_word_embeddings", false)?,
        start,
        d_ff: Some(cfg.usize("intermediate_size")?),
        rope_theta: theta,
        rope_dims: (rope_dims != head_dim).then_some(rope_dims),
        parallel_residual: cfg.bool_or("use_parallel_residual", true)?,
        score_scale: Some(1.0 / (head_dim as f64).sqrt()),
        ..ModelConfig::nano_cpu(2)
    };
    let names = Spelling::file("`num_hidden_layers`", "`num_attention_heads`", "`hidden_size`", "`num_attention_heads`", "`max_position_embeddings`", "`rotary_emb_base`");
    hf::finish(dir, cfg, "gpt_neox", names, model, tok, tensors)
}

/// `query_key_value` `(H * 3D, ...)`, per head [q_h; k_h; v_h], as `[q; k; v]` with q and k in
/// adjacent rotary pairs over their first `r` dimensions.
pub fn regroup_qkv(t: &Tensor, h: usize, d: usize, r: usize) -> Result<Tensor> {
    let rest: Vec<usize> = t.dims()[1..].to_vec();
    let mut shape = vec![h, 3, d];
    shape.extend(&rest);
    let per_head = t.reshape(shape)?; // (H, 3, D, ...)
    let part = |i: usize| -> Result<Tensor> {
        let mut flat = vec![h * d];
        flat.extend(&rest);
        Ok(per_head.narrow(1, i, 1)?.contiguous()?.reshape(flat)?) // (H D, ...)
    };
    let q = to_adjacent_pairs(&part(0)?, h, d, r)?;
    let k = to_adjacent_pairs(&part(1)?, h, d, r)?;
    Ok(Tensor::cat(&[q, k, part(2)?], 0)?)
}

fn tensors(cfg: &ModelConfig, w: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut w: HashMap<String, Tensor> = w.into_iter().map(|(k, t)| (k.strip_prefix("gpt_neox.").map(str::to_string).unwrap_or(k), t)).collect();
    let (d, v, h, hd, f, r) = (cfg.d_model, cfg.vocab_size, cfg.n_head, cfg.head_dim(), cfg.ff_width(), cfg.rotary_dims());
    let mut out = HashMap::new();
    out.insert("tok_emb.weight".to_string(), take(&mut w, "embed_in.weight", &[v, d])?);
    out.insert("ln_f.weight".to_string(), take(&mut w, "final_layer_norm.weight", &[d])?);
    out.insert("ln_f.bias".to_string(), take(&mut w, "final_layer_norm.bias", &[d])?);
    if cfg.tied_head {
        w.remove("embed_out.weight");
    } else {
        out.insert("lm_head.weight".to_string(), take(&mut w, "embed_out.weight", &[v, d])?);
    }
    // (theirs, ours, weight shape); every one has a bias of the weight's first dimension.
    let table: [(&str, &str, [usize; 2]); 3] = [
        ("attention.dense", "attn.proj", [d, d]),
        ("mlp.dense_h_to_4h", "mlp.fc", [f, d]),
        ("mlp.dense_4h_to_h", "mlp.proj", [d, f]),
    ];
    for l in 0..cfg.n_layer {
        let (theirs, ours) = (format!("layers.{l}"), format!("blocks.{l}"));
        for (src, dst) in [("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")] {
            for p in ["weight", "bias"] {
                out.insert(format!("{ours}.{dst}.{p}"), take(&mut w, &format!("{theirs}.{src}.{p}"), &[d])?);
            }
        }
        for (src, dst, shape) in table {
            out.insert(format!("{ours}.{dst}.weight"), take(&mut w, &format!("{theirs}.{src}.weight"), &shape)?);
            out.insert(format!("{ours}.{dst}.bias"), take(&mut w, &format!("{theirs}.{src}.bias"), &shape[..1])?);
        }
        let qkv = take(&mut w, &format!("{theirs}.attention.query_key_value.weight"), &[3 * d, d])?;
        out.insert(format!("{ours}.attn.qkv.weight"), regroup_qkv(&qkv, h, hd, r)?);
        let qkv_b = take(&mut w, &format!("{theirs}.attention.query_key_value.bias"), &[3 * d])?;
        out.insert(format!("{ours}.attn.qkv.bias"), regroup_qkv(&qkv_b, h, hd, r)?);
        out.insert(format!("{ours}.attn.log_beta"), super::unit_temperatures(h)?);
    }
    hf::no_leftovers(&w)?;
    Ok(out)
}
