//! What every Hugging Face folder shares, whatever its family: `config.json`, the weights (one
//! `model.safetensors`, shards listed by `model.safetensors.index.json`, or a torch
//! `pytorch_model.bin`), `tokenizer.json`, the token sequences start with, and the rotary fields
//! in both the current (`rope_parameters`) and the older spellings (`rope_theta`, `rope_scaling`,
//! `rotary_pct`, `rotary_emb_base`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::Imported;
use crate::config::{ModelConfig, Spelling, RopeScaling, Start};
use crate::data::tokenizer::Tok;
use crate::error::UsageError;

/// A folder's `config.json`, with the path for messages.
pub struct HfConfig {
    pub path: PathBuf,
    pub raw: Value,
}

impl HfConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{} has no config.json: import reads a Hugging Face model folder or a nanoGPT ckpt.pt", dir.display())
        })?;
        let raw: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        if !raw.is_object() {
            bail!("{} is not a JSON object", path.display());
        }
        Ok(Self { path, raw })
    }

    pub fn model_type(&self) -> Option<&str> {
        self.raw.get("model_type").and_then(Value::as_str)
    }

    /// A field, None where absent or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// A required count.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| anyhow!("{}: {key} is missing or not a count", self.path.display()))
    }

    /// An optional count.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| anyhow!("{}: {key} is {v}, not a count", self.path.display())),
        }
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("{}: {key} is {v}, not a number", self.path.display())),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| anyhow!("{}: {key} is {v}, not true or false", self.path.display())),
        }
    }

    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| anyhow!("{}: {key} is {v}, not a string", self.path.display())),
        }
    }

    /// A one-line refusal of a field the model does not implement.
    pub fn unsupported<T>(&self, what: &str) -> Result<T> {
        Err(UsageError(format!("{}: {what}, which this model does not implement", self.path.display())).into())
    }

    /// The rotary fields: theta, the fraction of each head that rotates, and Llama 3's scaling.
    /// `default_theta` is the family's own default.
    pub fn rope(&self, default_theta: f64) -> Result<(f64, f64, Option<RopeScaling>)> {
        // transformers 5 writes `rope_parameters`; the Hub's configs mostly have the older keys.
        let params = self.get("rope_parameters").or_else(|| self.get("rope_scaling"));
        let param = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_f64);
        let theta = param("rope_theta").or(self.opt_f64("rope_theta")?).or(self.opt_f64("rotary_emb_base")?).unwrap_or(default_theta);
        let fraction = param("partial_rotary_factor").or(self.opt_f64("partial_rotary_factor")?).or(self.opt_f64("rotary_pct")?).unwrap_or(1.0);
        let kind = params.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))).and_then(Value::as_str).unwrap_or("default");
        let scaling = match kind {
            "default" => None,
            "llama3" => {
                let need = |key: &str| param(key).ok_or_else(|| anyhow!("{}: the llama3 rope scaling has no {key}", self.path.display()));
                let original = need("original_max_position_embeddings")?;
                Some(RopeScaling {
                    factor: need("factor")?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_context: original as usize,
                })
            }
            other => return self.unsupported(&format!("rope scaling of type {other:?} (only llama3's is)")),
        };
        Ok((theta, fraction, scaling))
    }
}

/// The weights of a folder, by their own names, in f32: `model.safetensors`, the shards that
/// `model.safetensors.index.json` lists, or `pytorch_model.bin`. Safetensors files are memory-
/// mapped while they are read.
pub fn read_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let bin = dir.join("pytorch_model.bin");
    let mut out = HashMap::new();
    if single.is_file() {
        read_safetensors(&single, &mut out)?;
    } else if index.is_file() {
        for shard in shards(&index)? {
            let path = dir.join(&shard);
            if !path.is_file() {
                bail!("shard {shard} listed by {} is missing", index.display());
            }
            read_safetensors(&path, &mut out)?;
        }
    } else if bin.is_file() {
        super::guard::check_torch_zip(&bin)?;
        super::guard::check_tensor_ranges(&bin, None)?;
        let tensors = candle_core::pickle::read_all_with_key(&bin, None)
            .map_err(|e| anyhow!("{} is not a torch state dict ({e})", bin.display()))?;
        if tensors.is_empty() {
            bail!("{} holds no tensors: it is not a torch state dict", bin.display());
        }
        out.extend(tensors);
    } else {
        bail!("{} has no weights: no model.safetensors, model.safetensors.index.json or pytorch_model.bin", dir.display());
    }
    out.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?))).collect()
}

/// The shard files an index names, each once, in order.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?;
    let mut files: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| anyhow!("{}: weight_map names a file that is not a string", index.display()))?;
        if file.contains('/') || file.contains("..") {
            bail!("{}: shard {file:?} is not a file in the folder", index.display());
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    Ok(files)
}

fn read_safetensors(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is only read while mapped; import never writes its source.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| anyhow!("{} is not a valid safetensors file ({e})", path.display()))?;
    out.extend(tensors);
    Ok(())
}

/// The folder's tokenizer (or `override_path`'s), for sequences that start with the token
/// `start_id`.
pub fn read_tokenizer(dir: &Path, override_path: Option<&Path>, start_id: u32) -> Result<(Tok, Start)> {
    let path = override_path.map(Path::to_path_buf).unwrap_or_else(|| dir.join("tokenizer.json"));
    let json = std::fs::read_to_string(&path).with_context(|| match override_path {
        Some(_) => format!("reading --tokenizer {}", path.display()),
        None => format!("{} has no tokenizer.json; pass --tokenizer FILE", dir.display()),
    })?;
    let inner = crate::data::tokenizer::parse_without_panics(&json).map_err(|e| anyhow!("parsing {}: {e}", path.display()))?;
    let token = inner
        .id_to_token(start_id)
        .ok_or_else(|| anyhow!("{} has no token with the start id {start_id} that config.json names", path.display()))?;
    let start = Start::Token(token);
    let tok = Tok::from_tokenizer_with_start(inner, &start).with_context(|| format!("reading {}", path.display()))?;
    Ok((tok, start))
}

/// The id sequences start with: `bos_token_id`, else (Qwen has none) `eos_token_id`, the
/// end-of-text token that separates documents in training, as GPT-2's does.
pub fn start_id(cfg: &HfConfig) -> Result<u32> {
    let id = |key: &str| -> Option<u32> {
        match cfg.get(key)? {
            Value::Array(ids) => ids.first().and_then(Value::as_u64).map(|v| v as u32),
            v => v.as_u64().map(|v| v as u32),
        }
    };
    id("bos_token_id")
        .or_else(|| id("eos_token_id"))
        .ok_or_else(|| anyhow!("{} names neither a bos_token_id nor an eos_token_id to start sequences with", cfg.path.display()))
}

/// Drop the buffers older checkpoints save beside the weights (rotary `inv_freq`, causal-mask
/// `attn.bias` / `masked_bias`), which are not parameters.
pub fn drop_buffers(weights: &mut HashMap<String, Tensor>) {
    weights.retain(|name, _| !(name.ends_with(".inv_freq") || name.ends_with(".masked_bias") || name.ends_with(".attention.bias") || name.ends_with(".attn.bias")));
}

/// Rows of `t` (dim 0: `heads` heads of `d` rows) reordered from the rotate-half layout of
/// Llama and GPT-NeoX, where dimension m of a head's first `r` pairs with m + r/2, to the
/// adjacent pairs (2m, 2m + 1) of this crate's rotary phases; the head's rows past `r` (not
/// rotated) stay in place. q.k is a sum over a head's dimensions, so permuting queries and keys
/// alike leaves every score as it was, with the pairs where the rotation expects them.
pub fn to_adjacent_pairs(t: &Tensor, heads: usize, d: usize, r: usize) -> Result<Tensor> {
    let half = r / 2;
    let order: Vec<u32> = (0..heads)
        .flat_map(|h| (0..half).flat_map(move |m| [h * d + m, h * d + m + half]).chain(h * d + r..(h + 1) * d))
        .map(|i| i as u32)
        .collect();
    let idx = Tensor::from_vec(order, heads * d, t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// The end of every family's read: the config validated, the tokenizer checked against the
/// embedding, the folder's weights read (older checkpoints' buffers dropped) and mapped onto this
/// crate's names by the family's `tensors`.
pub fn finish(
    dir: &Path,
    cfg: &HfConfig,
    family: &str,
    names: Spelling,
    model: ModelConfig,
    tok: Tok,
    tensors: impl FnOnce(&ModelConfig, HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>>,
) -> Result<Imported> {
    model.validate_as(&names).map_err(|e| anyhow!("{}: {e:#}", cfg.path.display()))?;
    super::check_vocab_fits(&tok, &model, "tokenizer.json")?;
    let mut w = read_weights(dir)?;
    drop_buffers(&mut w);
    let weights = tensors(&model, w)?;
    Ok(Imported { model, tokenizer: tok, weights, origin: format!("{family}:{}", dir.display()) })
}

/// Fail on tensors nothing took: they mean the weights are not what the config describes.
pub fn no_leftovers(weights: &HashMap<String, Tensor>) -> Result<()> {
    let mut extra: Vec<&String> = weights.keys().collect();
    extra.sort();
    if let Some(name) = extra.first() {
        bail!("unexpected tensor {name} (and {} more): the weights do not match the model's config", extra.len() - 1);
    }
    Ok(())
}
