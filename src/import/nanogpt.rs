//! nanoGPT checkpoints: `ckpt.pt` is a torch zip pickle holding `model` (the state dict, names
//! perhaps prefixed `_orig_mod.` by torch.compile), `model_args` (n_layer, n_head, n_embd,
//! block_size, bias, vocab_size), and the optimizer and run config, which are not needed.
//!
//! The tensors are read by candle's torch reader; `model_args` by walking the same pickle with
//! candle's pickle machine. nanoGPT's LayerNorm epsilon is torch's 1e-5, its GELU the exact one,
//! its head tied to `wte`. Its char models come with `meta.pkl` (`stoi` / `itos`), a plain
//! protocol-4 pickle, read with `serde-pickle`; they are conditioned on a newline, as nanoGPT's
//! sample.py starts from "\n".

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack};

use super::{head_is_tied, normalise_names, to_thermoformer, Imported};
use crate::config::{Activation, ModelConfig, Spelling, Positions, Start};
use crate::data::tokenizer::Tok;
use crate::error::UsageError;

/// What nanoGPT conditions its samples on: sample.py's `start = "\n"`.
pub const START_TEXT: &str = "\n";

/// Read a nanoGPT `ckpt.pt`, with its char `meta.pkl` or a `tokenizer.json`.
pub fn read(path: &Path, meta: Option<&Path>, tokenizer: Option<&Path>) -> Result<Imported> {
    super::guard::check_torch_zip(path)?;
    let args = model_args(path)?;
    let int = |key: &str| -> Result<usize> {
        match args.get(key) {
            Some(Object::Int(v)) if *v >= 0 => Ok(*v as usize),
            Some(Object::Long(v)) if *v >= 0 => Ok(*v as usize),
            Some(other) => bail!("{}: model_args[{key:?}] is {other:?}, not a count", path.display()),
            None => bail!("{}: model_args has no {key:?}; it is not a nanoGPT checkpoint", path.display()),
        }
    };
    let bias = match args.get("bias") {
        Some(Object::Bool(b)) => *b,
        None => true, // nanoGPT's GPTConfig default
        Some(other) => bail!("{}: model_args[\"bias\"] is {other:?}, not a bool", path.display()),
    };
    let start = Start::Text(START_TEXT.into());
    let tok = match (meta, tokenizer) {
        (Some(_), Some(_)) => return Err(UsageError("pass --meta (a char vocabulary) or --tokenizer, not both".into()).into()),
        (Some(meta), None) => char_tokenizer(meta, &start)?,
        (None, Some(file)) => {
            let json = std::fs::read_to_string(file).with_context(|| format!("reading --tokenizer {}", file.display()))?;
            Tok::from_json_with_start(&json, &start).with_context(|| format!("reading --tokenizer {}", file.display()))?
        }
        (None, None) => {
            return Err(UsageError(format!(
                "{} carries no tokenizer: pass --meta meta.pkl (nanoGPT's char vocabulary, e.g. data/shakespeare_char/meta.pkl) or --tokenizer tokenizer.json (GPT-2's BPE)",
                path.display()
            ))
            .into())
        }
    };
    super::guard::check_tensor_ranges(path, Some("model"))?;
    let tensors = candle_core::pickle::read_all_with_key(path, Some("model"))
        .map_err(|e| anyhow!("reading the weights of {}: {e}", path.display()))?;
    if tensors.is_empty() {
        bail!("{} holds no tensors under \"model\": it is not a nanoGPT checkpoint", path.display());
    }
    let weights = normalise_names(tensors);
    let tied_head = head_is_tied(&weights)?;

    let model = ModelConfig {
        vocab_size: int("vocab_size")?,
        context: int("block_size")?,
        n_layer: int("n_layer")?,
        n_head: int("n_head")?,
        d_model: int("n_embd")?,
        positions: Positions::Learned,
        attn_temperature: 1.0,
        learn_temperature: false,
        bias,
        activation: Activation::GeluErf,
        ln_eps: 1e-5,
        tied_head,
        start,
        real_vocab_size: None,
        ..ModelConfig::nano_cpu(2)
    };
    let origin = format!("nanogpt:{}", path.display());
    let names = Spelling::file("`n_layer`", "`n_head`", "`n_embd`", "`n_head`", "`block_size`", "`rope_theta`");
    model.validate_as(&names).with_context(|| format!("the model in {origin}"))?;
    let weights = to_thermoformer(&model, weights)?;
    Ok(Imported { model, tokenizer: tok, weights, origin })
}

/// The `model_args` dict of a torch checkpoint, or an error saying the file is not one of nanoGPT's.
fn model_args(path: &Path) -> Result<HashMap<String, Object>> {
    let not_nanogpt = |why: &str| anyhow!("{} is not a nanoGPT checkpoint: {why}", path.display());
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|_| not_nanogpt("it is not a torch zip archive (torch.save's format)"))?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().and_then(|f| f.name().ok().map(|n| n.to_string())))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| not_nanogpt("the archive has no data.pkl"))?;
    let mut reader = BufReader::new(zip.by_name(&pkl).map_err(|e| anyhow!("reading {pkl} in {}: {e}", path.display()))?);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).map_err(|e| not_nanogpt(&format!("its pickle does not parse ({e})")))?;
    let top = stack.finalize().map_err(|e| not_nanogpt(&format!("its pickle does not parse ({e})")))?;
    let Object::Dict(entries) = top else {
        return Err(not_nanogpt("its top level is not a dict"));
    };
    let mut has_model = false;
    let mut args = None;
    for (k, v) in entries {
        match (k, v) {
            (Object::Unicode(k), Object::Dict(d)) if k == "model_args" => args = Some(d),
            (Object::Unicode(k), _) if k == "model" => has_model = true,
            _ => {}
        }
    }
    let args = args.ok_or_else(|| not_nanogpt("it has no model_args"))?;
    if !has_model {
        return Err(not_nanogpt("it has no model (the state dict)"));
    }
    Ok(args.into_iter().filter_map(|(k, v)| if let Object::Unicode(k) = k { Some((k, v)) } else { None }).collect())
}

/// nanoGPT's char vocabulary (`meta.pkl`: `itos`, id -> character) as a char tokenizer.
fn char_tokenizer(meta: &Path, start: &Start) -> Result<Tok> {
    let data = super::guard::read_pickle_file(meta).with_context(|| format!("reading --meta {}", meta.display()))?;
    char_vocabulary(&data, &format!("--meta {}", meta.display()), start)
}

/// The char tokenizer of `meta.pkl`'s bytes, `what` naming them in errors; the pickle passes
/// [`super::guard::check_pickle`] first.
pub fn char_vocabulary(data: &[u8], what: &str, start: &Start) -> Result<Tok> {
    use serde_pickle::{HashableValue, Value};
    super::guard::check_pickle(data, what)?;
    let bad = |why: &str| anyhow!("{what} is not nanoGPT's meta.pkl: {why}");
    let value = serde_pickle::value_from_reader(data, serde_pickle::DeOptions::new())
        .map_err(|e| bad(&format!("it does not parse as a pickle ({e})")))?;
    let Value::Dict(top) = value else { return Err(bad("its top level is not a dict")) };
    let Some(Value::Dict(itos)) = top.get(&HashableValue::String("itos".into())) else {
        return Err(bad("it has no itos dict"));
    };
    let mut chars = vec![None; itos.len()];
    for (k, v) in itos {
        let (HashableValue::I64(id), Value::String(s)) = (k, v) else { return Err(bad("itos maps something other than ids to strings")) };
        let mut cs = s.chars();
        let (Some(c), None) = (cs.next(), cs.next()) else { return Err(bad(&format!("itos[{id}] is {s:?}, not one character"))) };
        let slot = usize::try_from(*id).ok().and_then(|i| chars.get_mut(i)).ok_or_else(|| bad(&format!("itos has id {id}, outside 0..{}", itos.len())))?;
        *slot = Some(c);
    }
    let chars: Vec<char> = chars.into_iter().collect::<Option<_>>().ok_or_else(|| bad("itos ids are not 0..n"))?;
    Tok::from_chars(&chars, start).with_context(|| format!("the vocabulary in {what}"))
}
