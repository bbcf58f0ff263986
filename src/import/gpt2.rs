//! Hugging Face GPT-2-family directories: `config.json` (`model_type` gpt2), `model.safetensors`
//! (names with or without the `transformer.` prefix) and `tokenizer.json`. That covers gpt2,
//! distilgpt2, gpt2-medium/large/xl and anything saved in that layout by `save_pretrained`.
//!
//! GPT-2 writes its projections as `Conv1D`, whose weight is `(in, out)`: they are transposed to
//! the `(out, in)` of `nn.Linear` here. Its LM head is tied to `wte` unless `tie_word_embeddings`
//! is false; its MLP uses `activation_function` (`gelu_new`, the tanh approximation, by default).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::Deserialize;

use super::{head_is_tied, normalise_names, to_thermoformer, Imported};
use crate::config::{Activation, ModelConfig, Spelling, Positions, Start};
use crate::data::tokenizer::Tok;
use crate::error::UsageError;

/// The fields of GPT-2's `config.json` that shape the model (the rest are ignored).
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default = "default_true")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    add_cross_attention: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
}

fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// Read a GPT-2 directory; `tokenizer` replaces its `tokenizer.json`.
pub fn read(dir: &Path, tokenizer: Option<&Path>) -> Result<Imported> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{} has no config.json: import reads a Hugging Face GPT-2 directory or a nanoGPT ckpt.pt", dir.display()))?;
    let raw: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    match raw.get("model_type").and_then(|v| v.as_str()) {
        Some("gpt2") => {}
        Some(other) => return Err(UsageError(format!("{}: unknown model_type {other:?}; import reads GPT-2-family models (model_type \"gpt2\")", config_path.display())).into()),
        None => return Err(UsageError(format!("{} has no model_type; import reads GPT-2-family models (model_type \"gpt2\")", config_path.display())).into()),
    }
    let hf: HfConfig = serde_json::from_value(raw).with_context(|| format!("reading {}", config_path.display()))?;
    debug_assert_eq!(hf.model_type.as_deref(), Some("gpt2"));
    let unsupported = |what: &str| -> Result<Imported> { bail!("{}: {what}, which this model does not implement", config_path.display()) };
    if hf.scale_attn_by_inverse_layer_idx {
        return unsupported("scale_attn_by_inverse_layer_idx is true");
    }
    if !hf.scale_attn_weights {
        return unsupported("scale_attn_weights is false (scores not divided by sqrt(d_head))");
    }
    if hf.add_cross_attention {
        return unsupported("add_cross_attention is true");
    }
    if hf.n_inner.is_some_and(|n| n != 4 * hf.n_embd) {
        return unsupported(&format!("n_inner is {:?}, not 4 n_embd", hf.n_inner));
    }
    let activation = match hf.activation_function.as_str() {
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "gelu" => Activation::GeluErf,
        other => return unsupported(&format!("activation_function is {other:?} (gelu_new and gelu are)")),
    };

    let weights_path = dir.join("model.safetensors");
    let file = std::fs::File::open(&weights_path).with_context(|| format!("{} has no model.safetensors (the weights)", dir.display()))?;
    // SAFETY: the file is only read while mapped; import never writes its source.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", weights_path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| anyhow!("{} is not a valid safetensors file ({e})", weights_path.display()))?;
    let mut weights = normalise_names(tensors.into_iter().collect());
    // Conv1D (in, out) -> Linear (out, in).
    for l in 0..hf.n_layer {
        for m in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] {
            let name = format!("h.{l}.{m}.weight");
            if let Some(w) = weights.remove(&name) {
                if w.rank() != 2 {
                    bail!("tensor {name} has shape {:?}; a Conv1D weight is a matrix", w.dims());
                }
                weights.insert(name, w.t()?.contiguous()?);
            }
        }
    }
    let bias = weights.contains_key("h.0.attn.c_attn.bias") || weights.contains_key("ln_f.bias");
    let tied_head = hf.tie_word_embeddings || head_is_tied(&weights)?;

    let tok_path = tokenizer.map(Path::to_path_buf).unwrap_or_else(|| dir.join("tokenizer.json"));
    let json = std::fs::read_to_string(&tok_path).with_context(|| match tokenizer {
        Some(_) => format!("reading --tokenizer {}", tok_path.display()),
        None => format!("{} has no tokenizer.json; pass --tokenizer FILE", dir.display()),
    })?;
    // GPT-2 starts a text with its <|endoftext|> (bos_token_id, 50256), as minicons does with
    // bos_token=True.
    let inner = crate::data::tokenizer::parse_without_panics(&json).map_err(|e| anyhow!("parsing {}: {e}", tok_path.display()))?;
    let start = bos_token(&inner, hf.bos_token_id).ok_or_else(|| anyhow!("{} has no <|endoftext|> token to start sequences with", tok_path.display()))?;
    let tok = Tok::from_tokenizer_with_start(inner, &Start::Token(start.clone())).with_context(|| format!("reading {}", tok_path.display()))?;

    let model = ModelConfig {
        vocab_size: hf.vocab_size,
        context: hf.n_positions,
        n_layer: hf.n_layer,
        n_head: hf.n_head,
        d_model: hf.n_embd,
        positions: Positions::Learned,
        attn_temperature: 1.0,
        learn_temperature: false,
        bias,
        activation,
        ln_eps: hf.layer_norm_epsilon,
        tied_head,
        start: Start::Token(start),
        real_vocab_size: None,
        ..ModelConfig::nano_cpu(2)
    };
    let origin = format!("gpt2:{}", dir.display());
    let names = Spelling::file("`n_layer`", "`n_head`", "`n_embd`", "`n_head`", "`n_positions`", "`rope_theta`");
    model.validate_as(&names).with_context(|| format!("the model in {origin}"))?;
    let weights = to_thermoformer(&model, weights)?;
    Ok(Imported { model, tokenizer: tok, weights, origin })
}

/// The token GPT-2 starts sequences with: `bos_token_id`'s, else `<|endoftext|>`.
fn bos_token(tok: &tokenizers::Tokenizer, bos_id: Option<u32>) -> Option<String> {
    bos_id.and_then(|id| tok.id_to_token(id)).or_else(|| tok.token_to_id("<|endoftext|>").map(|_| "<|endoftext|>".to_string()))
}
