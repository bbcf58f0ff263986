//! GPT-Neo folders (`model_type` "gpt_neo": the TinyStories models, GPT-Neo 125M).
//!
//! GPT-2's block (LayerNorms with biases, learned positions, `gelu_new`, tied head) with
//! separate q, k, v projections without biases, scores **not** divided by sqrt(d_head)
//! (beta_0 = 1), and layers alternating global and local attention (`attention_layers`, or
//! `attention_types` expanded; a local layer sees `window_size` keys: itself and those before).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use candle_core::Tensor;
use serde_json::Value;

use super::hf::{self, HfConfig};
use super::take;
use super::Imported;
use crate::config::{Activation, ModelConfig, Spelling, Positions};

pub const MODEL_TYPE: &str = "gpt_neo";

/// Read a GPT-Neo folder; `tokenizer` replaces its `tokenizer.json`.
pub fn read(dir: &Path, cfg: &HfConfig, tokenizer: Option<&Path>) -> Result<Imported> {
    let activation = match cfg.str_or("activation_function", "gelu_new")? {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "gelu" => Activation::GeluErf,
        other => return cfg.unsupported(&format!("activation_function is {other:?} (gelu_new and gelu are)")),
    };
    let (d, n_layer) = (cfg.usize("hidden_size")?, cfg.usize("num_layers")?);
    let window = cfg.usize("window_size")?;
    let windows = layer_kinds(cfg, n_layer)?
        .into_iter()
        .map(|kind| match kind.as_str() {
            "global" => Ok(None),
            "local" => Ok(Some(window)),
            other => Err(anyhow!("{}: attention type {other:?} is neither global nor local", cfg.path.display())),
        })
        .collect::<Result<Vec<_>>>()?;
    let start = hf::start_id(cfg)?;
    let (tok, start) = hf::read_tokenizer(dir, tokenizer, start)?;
    let model = ModelConfig {
        vocab_size: cfg.usize("vocab_size")?,
        context: cfg.usize("max_position_embeddings")?,
        n_layer,
        n_head: cfg.usize("num_heads")?,
        d_model: d,
        positions: Positions::Learned,
        bias: true,
        activation,
        ln_eps: cfg.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        tied_head: cfg.bool_or("tie_word_embeddings", true)?,
        start,
        d_ff: cfg.opt_usize("intermediate_size")?,
        qkv_bias: Some(false),
        score_scale: Some(1.0),
        windows,
        ..ModelConfig::nano_cpu(2)
    };
    let names = Spelling::file("`num_layers`", "`num_heads`", "`hidden_size`", "`num_heads`", "`max_position_embeddings`", "`rope_theta`");
    hf::finish(dir, cfg, "gpt_neo", names, model, tok, tensors)
}

/// "global" or "local" per layer: `attention_layers`, else `attention_types` ([[kinds], repeat]
/// pairs) expanded as transformers does.
fn layer_kinds(cfg: &HfConfig, n_layer: usize) -> Result<Vec<String>> {
    let bad = || anyhow!("{}: attention_types is not a list of [[kinds], repeat] pairs", cfg.path.display());
    let kinds: Vec<String> = if let Some(Value::Array(layers)) = cfg.get("attention_layers") {
        layers.iter().map(|k| k.as_str().map(str::to_string).ok_or_else(bad)).collect::<Result<_>>()?
    } else if let Some(Value::Array(types)) = cfg.get("attention_types") {
        let mut out = Vec::new();
        for pair in types {
            let (Some(kinds), Some(times)) = (pair.get(0).and_then(Value::as_array), pair.get(1).and_then(Value::as_u64)) else {
                return Err(bad());
            };
            for _ in 0..times {
                for k in kinds {
                    out.push(k.as_str().ok_or_else(bad)?.to_string());
                }
            }
        }
        out
    } else {
        vec!["global".to_string(); n_layer]
    };
    if kinds.len() != n_layer {
        anyhow::bail!("{}: the attention types name {} layers but num_layers is {n_layer}", cfg.path.display(), kinds.len());
    }
    Ok(kinds)
}

fn tensors(cfg: &ModelConfig, w: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut w: HashMap<String, Tensor> = w.into_iter().map(|(k, t)| (k.strip_prefix("transformer.").map(str::to_string).unwrap_or(k), t)).collect();
    let (d, v, t, h, f) = (cfg.d_model, cfg.vocab_size, cfg.context, cfg.n_head, cfg.ff_width());
    let mut out = HashMap::new();
    out.insert("tok_emb.weight".to_string(), take(&mut w, "wte.weight", &[v, d])?);
    out.insert("pos_emb.weight".to_string(), take(&mut w, "wpe.weight", &[t, d])?);
    for p in ["weight", "bias"] {
        out.insert(format!("ln_f.{p}"), take(&mut w, &format!("ln_f.{p}"), &[d])?);
    }
    if cfg.tied_head {
        w.remove("lm_head.weight");
    } else {
        out.insert("lm_head.weight".to_string(), take(&mut w, "lm_head.weight", &[v, d])?);
    }
    // (theirs, ours, weight shape), each with a bias of the weight's first dimension.
    let table: [(&str, &str, Vec<usize>); 5] = [
        ("ln_1", "ln1", vec![d]),
        ("ln_2", "ln2", vec![d]),
        ("attn.attention.out_proj", "attn.proj", vec![d, d]),
        ("mlp.c_fc", "mlp.fc", vec![f, d]),
        ("mlp.c_proj", "mlp.proj", vec![d, f]),
    ];
    for l in 0..cfg.n_layer {
        let (theirs, ours) = (format!("h.{l}"), format!("blocks.{l}"));
        for (src, dst, shape) in &table {
            out.insert(format!("{ours}.{dst}.weight"), take(&mut w, &format!("{theirs}.{src}.weight"), shape)?);
            out.insert(format!("{ours}.{dst}.bias"), take(&mut w, &format!("{theirs}.{src}.bias"), &shape[..1])?);
        }
        let mut proj = |x: &str| take(&mut w, &format!("{theirs}.attn.attention.{x}_proj.weight"), &[d, d]);
        let qkv = Tensor::cat(&[proj("q")?, proj("k")?, proj("v")?], 0)?;
        out.insert(format!("{ours}.attn.qkv.weight"), qkv);
        out.insert(format!("{ours}.attn.log_beta"), super::unit_temperatures(h)?);
    }
    hf::no_leftovers(&w)?;
    Ok(out)
}
