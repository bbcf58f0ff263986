//! Golden values of a checkpoint, for cross-checking against an independent implementation
//! (`scripts/crosscheck_torch.py` builds the same architecture in plain PyTorch and computes the
//! same [`Golden`] from the same files; `tests/crosscheck.rs` compares against its output).
//!
//! The protocol, fixed so both sides compute the same thing: every text is BOS + tokens; logits and
//! sequence energies at the checkpoint's temperatures; attention weights of the first text with
//! every head at [`ATTN_TEMPERATURE`] and head 0 of layer 0 at [`HEAD_TEMPERATURE`]; and the
//! label-smoothed ([`LABEL_SMOOTHING`]) loss and its gradient for every trainable tensor on one
//! batch made of each text's first [`STEP_LEN`] + 1 tokens (inputs BOS + STEP_LEN - 1 tokens).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::model::loss;
use crate::model::HeadTemperature;
use crate::model::params::Params;
use crate::physics::score::{self, ScoreOptions};

/// Temperature given to every head for the attention weights.
pub const ATTN_TEMPERATURE: f64 = 0.5;
/// ... and then to layer 0, head 0.
pub const HEAD_TEMPERATURE: f64 = 2.0;
/// Label smoothing of the training step.
pub const LABEL_SMOOTHING: f64 = 0.1;
/// Positions per sequence of the training step.
pub const STEP_LEN: usize = 12;

/// Everything compared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Golden {
    pub texts: Vec<String>,
    /// BOS + token ids of every text.
    pub ids: Vec<Vec<u32>>,
    /// Logits `[text][position][vocab]`.
    pub logits: Vec<Vec<Vec<f64>>>,
    /// Sequence energy E = -ln p(text) of every text, nats.
    pub energies: Vec<f64>,
    /// Attention weights of the first text `[layer][head][query][key]` at the overridden temperatures.
    pub attention: Vec<Vec<Vec<Vec<f64>>>>,
    /// The label-smoothed loss of the training step.
    pub loss: f64,
    /// Gradient of that loss for every trainable tensor, flattened, by name.
    pub grads: BTreeMap<String, Vec<f64>>,
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Compute the golden values of the checkpoint in `dir` on `texts`.
pub fn compute(dir: &Path, texts: &[String]) -> Result<Golden> {
    let dev = Device::Cpu;
    let loaded = checkpoint::load(dir, &dev)?;
    let (tok, model) = (&loaded.tokenizer, &loaded.model);
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode_with_bos(t)).collect::<Result<_>>()?;
    if ids.iter().any(|i| i.len() < STEP_LEN + 1 || i.len() > model.config().context) {
        bail!("every golden text needs {} to {} tokens with BOS", STEP_LEN + 1, model.config().context);
    }

    let mut logits = Vec::new();
    for seq in &ids {
        let l = model.forward(&Tensor::new(seq.as_slice(), &dev)?.unsqueeze(0)?)?.i(0)?; // (T, V)
        logits.push(l.to_dtype(DType::F64)?.to_vec2::<f64>()?);
    }
    let bodies: Vec<Vec<u32>> = ids.iter().map(|s| s[1..].to_vec()).collect();
    let energies = score::score_ids(model, &bodies, tok.bos(), &ScoreOptions::default())?.iter().map(|s| s.energy()).collect();

    let mut hot = model.clone();
    hot.override_temperatures(Some(ATTN_TEMPERATURE), &[HeadTemperature { layer: 0, head: 0, temperature: HEAD_TEMPERATURE }])?;
    let (_, stats) = hot.forward_with_stats(&Tensor::new(ids[0].as_slice(), &dev)?.unsqueeze(0)?)?;
    let attention = stats
        .iter()
        .map(|s| {
            (0..s.alpha.dim(1)?).map(|h| Ok(s.alpha.i((0, h))?.to_dtype(DType::F64)?.to_vec2::<f64>()?)).collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;

    // One training step's loss and gradients, through the training path (Vars).
    let tensors = checkpoint::read_model_tensors(dir, &dev)?;
    let (params, train_model) = Params::from_tensors(&loaded.config.model, tensors, &dev)?;
    let inputs: Vec<u32> = ids.iter().flat_map(|s| s[..STEP_LEN].to_vec()).collect();
    let targets: Vec<u32> = ids.iter().flat_map(|s| s[1..=STEP_LEN].to_vec()).collect();
    let b = ids.len();
    let x = Tensor::from_vec(inputs, (b, STEP_LEN), &dev)?;
    let y = Tensor::from_vec(targets, b * STEP_LEN, &dev)?;
    let l = loss::cross_entropy_with(&train_model.forward(&x)?.flatten_to(1)?, &y, LABEL_SMOOTHING, train_model.kernels())?.loss;
    let grad_store = l.backward()?;
    let mut grads = BTreeMap::new();
    for p in params.trainable() {
        let g = grad_store.get(p.var.as_tensor()).with_context(|| format!("no gradient for {}", p.name))?;
        grads.insert(p.name.clone(), to_f64(g)?);
    }
    Ok(Golden {
        texts: texts.to_vec(),
        ids,
        logits,
        energies,
        attention,
        loss: l.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        grads,
    })
}

/// Largest absolute difference between two nested arrays of numbers (serialised to JSON values),
/// or None when their shapes differ.
pub fn max_abs_diff(a: &serde_json::Value, b: &serde_json::Value) -> Option<f64> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some((x.as_f64()? - y.as_f64()?).abs()),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).try_fold(0.0f64, |m, (p, q)| Some(m.max(max_abs_diff(p, q)?)))
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            x.iter().try_fold(0.0f64, |m, (k, p)| Some(m.max(max_abs_diff(p, y.get(k)?)?)))
        }
        _ => None,
    }
}
