//! `thermoformer import`: models trained elsewhere as ordinary run directories.
//!
//! One module per family, each reading its format into an [`Imported`] (the model config, the
//! tokenizer, and the weights under this crate's tensor names), which [`write_run`] saves like a
//! trained run. A family is a table of names and transforms onto the one model, not a model of
//! its own:
//!
//! - [`gpt2`]: Hugging Face GPT-2 folders, whose Conv1D weights are stored `(in, out)`;
//! - [`llama`]: Llama, Qwen2 and Qwen3 folders (RMSNorm, SwiGLU, grouped-query attention);
//! - [`gpt_neox`]: GPT-NeoX (Pythia) folders (partial rotary, parallel residual);
//! - [`gpt_neo`]: GPT-Neo (TinyStories) folders (local layers, unscaled scores);
//! - [`nanogpt`]: a nanoGPT `ckpt.pt` (a torch zip pickle), with its char `meta.pkl` or a
//!   `tokenizer.json`.
//!
//! [`hf`] holds what the Hugging Face folders share (config fields, safetensors, shards and
//! `pytorch_model.bin`, the tokenizer and start token). GPT-2 and nanoGPT name their modules
//! alike (`wte`, `h.L.attn.c_attn`, ...), so their mapping is [`to_thermoformer`]. Every head
//! starts at T = 1 (`log_beta` = 0), which is the model as trained.

pub mod gpt2;
pub mod guard;
pub mod gpt_neo;
pub mod gpt_neox;
pub mod hf;
pub mod llama;
pub mod nanogpt;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::config::{ModelConfig, RunConfig, TrainConfig, FORMAT_VERSION};
use crate::data::tokenizer::Tok;
use crate::error::UsageError;
use crate::model::params::Params;

/// What to import and where.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// A Hugging Face GPT-2 directory or a nanoGPT `ckpt.pt`.
    pub source: PathBuf,
    /// The run directory to write.
    pub out: PathBuf,
    /// nanoGPT's char vocabulary (`meta.pkl`).
    pub meta: Option<PathBuf>,
    /// A `tokenizer.json` to use instead of the source's own.
    pub tokenizer: Option<PathBuf>,
    /// Replace what is in `out`.
    pub overwrite: bool,
}

/// A source model read into memory: its config, tokenizer, and weights under this crate's tensor
/// names, every matrix `(out, in)` (as `nn.Linear` stores it).
pub struct Imported {
    pub model: ModelConfig,
    pub tokenizer: Tok,
    pub weights: HashMap<String, Tensor>,
    /// `FAMILY:PATH` (`gpt2:`, `llama:`, `qwen2:`, `gpt_neox:`, `nanogpt:`, ...), saved as the
    /// run's `imported_from`.
    pub origin: String,
}

/// What `import` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub out: PathBuf,
    pub origin: String,
    pub params: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub d_model: usize,
    pub context: usize,
    pub vocab_size: usize,
    pub tokenizer_vocab_size: usize,
    pub bias: bool,
    pub tied_head: bool,
    pub start: String,
}

/// Import `req.source` into the run directory `req.out`.
pub fn import(req: &ImportRequest) -> Result<ImportReport> {
    let source_dir = if req.source.is_dir() { Some(req.source.clone()) } else { req.source.parent().map(Path::to_path_buf) };
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if source_dir.as_deref().is_some_and(|d| same(d, &req.out)) {
        return Err(UsageError(format!("--out {} is where the source is; import into another directory", req.out.display())).into());
    }
    check_out(&req.out, req.overwrite)?;
    let imported = if req.source.is_dir() {
        if req.meta.is_some() {
            return Err(UsageError("--meta is nanoGPT's char vocabulary; a Hugging Face directory has its own tokenizer.json".into()).into());
        }
        read_folder(&req.source, req.tokenizer.as_deref())?
    } else if req.source.is_file() {
        nanogpt::read(&req.source, req.meta.as_deref(), req.tokenizer.as_deref())?
    } else {
        return Err(crate::error::not_found(format!("{} does not exist (import reads a Hugging Face model folder or a nanoGPT ckpt.pt)", req.source.display())));
    };
    write_run(&req.out, imported)
}

/// The `model_type`s import reads from a Hugging Face folder.
pub const MODEL_TYPES: [&str; 6] = ["gpt2", "llama", "qwen2", "qwen3", "gpt_neox", "gpt_neo"];

/// A Hugging Face folder, by its config's `model_type`.
fn read_folder(dir: &Path, tokenizer: Option<&Path>) -> Result<Imported> {
    let cfg = hf::HfConfig::read(dir)?;
    let supported = MODEL_TYPES.join(", ");
    match cfg.model_type() {
        Some("gpt2") => gpt2::read(dir, tokenizer),
        Some(t) if llama::MODEL_TYPES.contains(&t) => llama::read(dir, &cfg, tokenizer),
        Some(gpt_neox::MODEL_TYPE) => gpt_neox::read(dir, &cfg, tokenizer),
        Some(gpt_neo::MODEL_TYPE) => gpt_neo::read(dir, &cfg, tokenizer),
        Some(other) => Err(UsageError(format!("{}: unknown model_type {other:?}; import reads {supported}", cfg.path.display())).into()),
        None => Err(UsageError(format!("{} has no model_type; import reads {supported}", cfg.path.display())).into()),
    }
}

/// ln beta = 0 for `heads` heads: T = 1, the model as trained.
pub(crate) fn unit_temperatures(heads: usize) -> Result<Tensor> {
    Ok(Tensor::zeros(heads, DType::F32, &Device::Cpu)?)
}

/// Refuse an existing, non-empty `out` unless it may be replaced: a checkpoint, as any run
/// refuses one ([`checkpoint::check_writable`]), and any other files too.
fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    checkpoint::check_writable(out, overwrite, "--overwrite to replace it")?;
    let non_empty = out.is_dir() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && !overwrite {
        return Err(UsageError(format!("--out {} already exists and is not empty; pass --overwrite to replace it", out.display())).into());
    }
    Ok(())
}

/// The tokenizer must fit the embedding: every id it produces needs a row.
pub fn check_vocab_fits(tok: &Tok, model: &ModelConfig, what: &str) -> Result<()> {
    if tok.vocab_size() > model.vocab_size {
        bail!(
            "the tokenizer ({what}) has {} tokens but the model's embedding has {} rows: they are not from the same model",
            tok.vocab_size(),
            model.vocab_size
        );
    }
    Ok(())
}

/// A tensor of `weights` with the shape the config implies, or an error naming it.
pub(crate) fn take(weights: &mut HashMap<String, Tensor>, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = weights.remove(name).with_context(|| format!("tensor {name} is missing"))?;
    if t.dims() != shape {
        bail!("tensor {name} has shape {:?} (matrices as (out, in)), but the model's config needs {shape:?}", t.dims());
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// Map GPT-2 module names onto this crate's, check every shape, add T = 1 temperatures.
pub fn to_thermoformer(cfg: &ModelConfig, mut w: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let (d, v, t) = (cfg.d_model, cfg.vocab_size, cfg.context);
    let mut out = HashMap::new();
    out.insert("tok_emb.weight".into(), take(&mut w, "wte.weight", &[v, d])?);
    out.insert("pos_emb.weight".into(), take(&mut w, "wpe.weight", &[t, d])?);
    // Per block: GPT-2's module, ours, and the weight's shape, (out, in) for matrices, (d,) for
    // LayerNorm gains.
    let layers: [(&str, &str, Vec<usize>); 6] = [
        ("ln_1", "ln1", vec![d]),
        ("attn.c_attn", "attn.qkv", vec![3 * d, d]),
        ("attn.c_proj", "attn.proj", vec![d, d]),
        ("ln_2", "ln2", vec![d]),
        ("mlp.c_fc", "mlp.fc", vec![4 * d, d]),
        ("mlp.c_proj", "mlp.proj", vec![d, 4 * d]),
    ];
    for l in 0..cfg.n_layer {
        for (theirs, ours, weight_shape) in &layers {
            let (src, dst) = (format!("h.{l}.{theirs}"), format!("blocks.{l}.{ours}"));
            let bias_len = weight_shape[0];
            out.insert(format!("{dst}.weight"), take(&mut w, &format!("{src}.weight"), weight_shape)?);
            if cfg.bias {
                out.insert(format!("{dst}.bias"), take(&mut w, &format!("{src}.bias"), &[bias_len])?);
            }
        }
        out.insert(format!("blocks.{l}.attn.log_beta"), unit_temperatures(cfg.n_head)?);
    }
    out.insert("ln_f.weight".into(), take(&mut w, "ln_f.weight", &[d])?);
    if cfg.bias {
        out.insert("ln_f.bias".into(), take(&mut w, "ln_f.bias", &[d])?);
    }
    if !cfg.tied_head {
        out.insert("lm_head.weight".into(), take(&mut w, "lm_head.weight", &[v, d])?);
    }
    w.remove("lm_head.weight"); // a tied copy
    hf::no_leftovers(&w)?;
    Ok(out)
}

/// Whether a source's `lm_head.weight` is the token embedding (absent, or equal to it).
pub fn head_is_tied(weights: &HashMap<String, Tensor>) -> Result<bool> {
    let (Some(head), Some(wte)) = (weights.get("lm_head.weight"), weights.get("wte.weight")) else {
        return Ok(true);
    };
    if head.dims() != wte.dims() {
        return Ok(false);
    }
    let diff = (head.to_dtype(DType::F32)? - wte.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff == 0.0)
}

/// Strip the prefixes a source may carry (`_orig_mod.` from torch.compile, `transformer.` from
/// the LM-head wrapper) and drop the causal-mask buffers GPT-2 code registers as `attn.bias` /
/// `attn.masked_bias` (not weights).
pub fn normalise_names(weights: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    weights
        .into_iter()
        .map(|(name, t)| {
            let name = name.strip_prefix("_orig_mod.").unwrap_or(&name);
            let name = name.strip_prefix("transformer.").unwrap_or(name);
            (name.to_string(), t)
        })
        .filter(|(name, _)| !(name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")))
        .collect()
}

/// Save an imported model as a run directory: the same files and format version as a trained
/// run, with no optimizer state and step 0.
pub fn write_run(out: &Path, imported: Imported) -> Result<ImportReport> {
    let Imported { model, tokenizer, weights, origin } = imported;
    model.validate_as(&crate::config::Spelling::RUN).with_context(|| format!("the model in {origin}"))?;
    check_vocab_fits(&tokenizer, &model, &origin)?;
    let (params, _) = Params::from_tensors(&model, weights, &Device::Cpu)?;
    let train = TrainConfig { tokenizer: tokenizer.kind(), ..TrainConfig::default() };
    // Rows past the tokenizer's are padding: never produced by it, never sampled.
    let model = ModelConfig { real_vocab_size: (tokenizer.vocab_size() < model.vocab_size).then_some(tokenizer.vocab_size()), ..model };
    let run = RunConfig { format_version: FORMAT_VERSION, model: model.clone(), train, imported_from: Some(origin.clone()) };
    let state = TrainState {
        step: 0,
        rng_seed: run.train.seed,
        rng_word_pos: "0".into(),
        tokens_seen: 0,
        elapsed_secs: 0.0,
        val_ce: None,
        corpus_hash: String::new(),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating run directory {}", out.display()))?;
    checkpoint::save(out, &run, &tokenizer, &params, HashMap::new(), &state)?;
    // A replaced run's metrics do not describe this model.
    let _ = std::fs::remove_file(out.join(checkpoint::METRICS));
    Ok(ImportReport {
        out: out.to_path_buf(),
        origin,
        params: params.count(),
        n_layer: model.n_layer,
        n_head: model.n_head,
        n_kv_head: model.kv_heads(),
        d_model: model.d_model,
        context: model.context,
        vocab_size: model.vocab_size,
        tokenizer_vocab_size: tokenizer.vocab_size(),
        bias: model.bias,
        tied_head: model.tied_head,
        start: model.start.describe(),
    })
}
