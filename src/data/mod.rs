//! Corpus -> tokens -> train/val split -> batches of windows.
//!
//! A training window is `BOS` followed by `context - 1` corpus tokens, and its targets are the next
//! `context` tokens: the model always learns (and later scores) sequences that start with BOS,
//! so the first token of a window is predicted from BOS alone.

pub mod tokenizer;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::RunConfig;
use crate::data::tokenizer::Tok;

/// FNV-1a 64-bit hash of `text`, hex: a cheap fingerprint of the training corpus, kept in a run's
/// `state.json`.
pub fn corpus_hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{h:016x}")
}

/// A run's validation split, as every command that measures on it reads it.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The corpus it came from, for messages and reports.
    pub corpus: String,
    /// The held-out tail's tokens.
    pub tokens: Vec<u32>,
}

/// The validation split of a run: `corpus` if given, else the run's own training corpus, split as
/// training split it. The run's own corpus is refused when its text no longer hashes to
/// `trained_hash` (what `state.json` recorded), since its tail would no longer be held out; a
/// corpus named explicitly is the caller's choice and is not checked.
pub fn validation_split(run: &RunConfig, tok: &Tok, trained_hash: Option<&str>, corpus: Option<&Path>) -> Result<Validation> {
    if corpus.is_none() && run.imported_from.is_some() && run.train.init_from.is_none() {
        bail!("the model was imported ({}) and has no training corpus here", run.imported_from.as_deref().unwrap_or_default());
    }
    let path = corpus.unwrap_or(&run.train.corpus);
    let text = read_corpus(path)?;
    if corpus.is_none() {
        if let Some(hash) = trained_hash.filter(|h| *h != corpus_hash(&text)) {
            bail!(
                "{} has changed since the run was trained (its hash is no longer {hash}), so its tail is not the held-out split; restore it",
                path.display()
            );
        }
    }
    let name = path.display().to_string();
    let splits = Splits::new(&text, tok, run.train.val_fraction, run.model.context, &name)?;
    Ok(Validation { corpus: name, tokens: splits.val })
}

/// Read a UTF-8 corpus; missing, unreadable, non-UTF-8 and empty files are errors that name the file.
pub fn read_corpus(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading corpus {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("corpus {} is not UTF-8 text (bad byte at offset {})", path.display(), e.utf8_error().valid_up_to()))?;
    if text.trim().is_empty() {
        bail!("corpus {} is empty", path.display());
    }
    Ok(text)
}

/// The tokenized corpus, split into a training head and a validation tail.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Splits {
    /// Tokenize `text` and hold out the last `val_fraction` of its tokens. Each split must hold at
    /// least `context + 1` tokens so that one full window fits.
    pub fn new(text: &str, tok: &Tok, val_fraction: f64, context: usize, name: &str) -> Result<Self> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            bail!("the validation fraction must lie in (0, 1), got {val_fraction:?}");
        }
        let tokens = tok.encode(text).with_context(|| format!("tokenizing corpus {name}"))?;
        let n_val = ((tokens.len() as f64) * val_fraction).round() as usize;
        let n_train = tokens.len() - n_val;
        let need = context + 1;
        if n_train < need || n_val < need {
            bail!(
                "corpus {name} is too short: {} tokens give a {n_train}-token training split and a {n_val}-token validation split, \
                 each needs at least context + 1 = {need}; use a longer corpus or a smaller --context",
                tokens.len()
            );
        }
        let val = tokens[n_train..].to_vec();
        let mut train = tokens;
        train.truncate(n_train);
        Ok(Self { train, val })
    }
}

/// One batch: inputs `(B, T)` starting with BOS and targets `(B, T)`, both u32.
#[derive(Debug, Clone)]
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

/// Build a batch from window start offsets into `tokens`: each window needs `context` tokens from
/// its start.
pub fn batch_at(tokens: &[u32], starts: &[usize], context: usize, bos: u32, dev: &Device) -> Result<Batch> {
    if context == 0 {
        bail!("a window needs a context of at least 1 token");
    }
    if let Some(&bad) = starts.iter().find(|&&i| i.checked_add(context).is_none_or(|end| end > tokens.len())) {
        bail!("a window of {context} tokens from offset {bad} runs past the {} tokens there are", tokens.len());
    }
    let b = starts.len();
    let mut inputs = Vec::with_capacity(b * context);
    let mut targets = Vec::with_capacity(b * context);
    for &i in starts {
        inputs.push(bos);
        inputs.extend_from_slice(&tokens[i..i + context - 1]);
        targets.extend_from_slice(&tokens[i..i + context]);
    }
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (b, context), dev)?,
        targets: Tensor::from_vec(targets, (b, context), dev)?,
    })
}

/// Draw `batch_size` uniformly random starts of windows of `context` tokens in `n_tokens`.
pub fn random_starts(rng: &mut ChaCha8Rng, n_tokens: usize, context: usize, batch_size: usize) -> Result<Vec<usize>> {
    let Some(hi) = n_tokens.checked_sub(context) else {
        bail!("{n_tokens} tokens cannot fill one window of the context ({context})");
    }; // inclusive upper bound of a start
    Ok((0..batch_size).map(|_| rng.random_range(0..=hi)).collect())
}

/// Windows tiling `tokens` without overlap (each token is a target once), or, when `max_windows`
/// is smaller, that many tiles evenly spaced over it, in batches. Deterministic: the validation
/// curve and the temperature sweep see the same windows every time.
pub fn tiled_batches(tokens: &[u32], max_windows: Option<usize>, batch_size: usize, context: usize, bos: u32, dev: &Device) -> Result<Vec<Batch>> {
    if batch_size == 0 || context == 0 {
        bail!("tiled batches need a batch size and a context of at least 1, got {batch_size} and {context}");
    }
    if tokens.len() < context {
        bail!("{} tokens cannot fill one window of the context ({context})", tokens.len());
    }
    let tiles: Vec<usize> = (0..=tokens.len() - context).step_by(context).collect();
    let starts: Vec<usize> = match max_windows {
        Some(n) if n < tiles.len() => (0..n).map(|k| tiles[k * tiles.len() / n]).collect(),
        _ => tiles,
    };
    starts.chunks(batch_size).map(|chunk| batch_at(tokens, chunk, context, bos, dev)).collect()
}
