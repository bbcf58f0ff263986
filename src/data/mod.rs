//! Corpus -> tokens -> train/val split -> batches of windows.
//!
//! A training window is `BOS` followed by `context - 1` corpus tokens, and its targets are the next
//! `context` tokens: the model always learns (and later scores) sequences that start with BOS,
//! so the first token of a window is predicted from BOS alone.

pub mod bpe;
pub mod cache;
pub mod corpus;
pub mod tokenizer;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::{RunConfig, TrainConfig};
use crate::data::corpus::{Corpus, Fnv};
use crate::data::tokenizer::Tok;
pub use crate::data::tokens::{TokenFile, Tokens};

/// FNV-1a 64-bit hash of `text`, hex: a cheap fingerprint of the training corpus, kept in a run's
/// `state.json` ([`Corpus::read`] computes the same over a corpus's joined text).
pub fn corpus_hash(text: &str) -> String {
    let mut h = Fnv::default();
    h.update(text.as_bytes());
    h.hex()
}

/// A run's validation split, as every command that measures on it reads it.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The corpus it came from, for messages and reports.
    pub corpus: String,
    /// The corpus's splits; [`Validation::tokens`] is the held-out tail.
    pub splits: Splits,
}

impl Validation {
    /// The held-out tail's tokens.
    pub fn tokens(&self) -> Tokens<'_> {
        self.splits.val()
    }
}

/// The validation split of a run: `corpus` if given, else the run's own training corpus, split as
/// training split it. The run's own corpus is refused when its text no longer hashes to
/// `trained_hash` (what `state.json` recorded), since its tail would no longer be held out; a
/// corpus named explicitly is the caller's choice and is not checked.
pub fn validation_split(run: &RunConfig, tok: &Tok, trained_hash: Option<&str>, corpus: Option<&Path>) -> Result<Validation> {
    if corpus.is_none() && run.imported_from.is_some() && run.train.init_from.is_none() {
        bail!("the model was imported ({}) and has no training corpus here", run.imported_from.as_deref().unwrap_or_default());
    }
    let paths = corpus.map_or_else(|| run.train.corpus.clone(), |p| vec![p.to_path_buf()]);
    let c = Corpus::open(&paths, run.train.json_field())?;
    let file = tokens::tokenize(&c, tok, true)?;
    if corpus.is_none() {
        if let Some(hash) = trained_hash.filter(|h| *h != file.header().text_hash) {
            bail!(
                "{} has changed since the run was trained (its hash is no longer {hash}), so its tail is not the held-out split; restore it",
                c.name()
            );
        }
    }
    let splits = Splits::new(file, run.train.val_fraction, run.model.context, c.name())?;
    Ok(Validation { corpus: c.name().to_string(), splits })
}

/// The tokenizer a fresh run on `corpus` trains (`train.tokenizer`, `--vocab-size`,
/// `--bpe-sample-bytes`), kept in the token cache beside the corpus's token files: a second run
/// on the same files with the same settings takes it from there instead of training it again.
pub fn corpus_tokenizer(corpus: &Corpus, train: &TrainConfig, progress: bool) -> Result<Tok> {
    let recipe = match train.tokenizer {
        crate::config::TokenizerKind::Char => "char v1".to_string(),
        crate::config::TokenizerKind::Bpe => format!("bpe v1 {} {}", train.bpe_vocab_size, train.bpe_sample_bytes.min(corpus.bytes())),
    };
    let path = tokens::ensure_cache(None)?.join(format!("tokenizer-{}-{}.json", corpus.identity(), corpus::fnv_hex(&recipe)));
    tokens::remove_stale_temps(&path); // what killed runs left of it
    if let Ok(tok) = std::fs::read_to_string(&path).map_err(anyhow::Error::from).and_then(|json| Tok::from_json(&json)) {
        if tok.kind() == train.tokenizer {
            return Ok(tok);
        }
    }
    let tok = Tok::train_streaming(train.tokenizer, corpus, train.bpe_vocab_size, train.bpe_sample_bytes, progress)?;
    // A cache that cannot be written costs only the time to train it again next run.
    let _ = tokens::write_atomically(&path, tok.to_json()?.as_bytes());
    Ok(tok)
}

/// Read a UTF-8 corpus (a file, or the joined documents of several: [`corpus`]) into memory;
/// missing, unreadable, non-UTF-8 and empty files are errors that name the file.
pub fn read_corpus(path: &Path) -> Result<String> {
    Corpus::open(&[path.to_path_buf()], None)?.read_to_string()
}

/// The tokenized corpus, split into a training head and a validation tail.
#[derive(Debug, Clone)]
pub struct Splits {
    store: Store,
    n_train: usize,
    text_hash: String,
}

/// Where a split's ids are: a memory-mapped token file, or (for a text in memory) a vector.
#[derive(Debug, Clone)]
enum Store {
    File(Arc<TokenFile>),
    Memory(Arc<Vec<u32>>),
}

impl Splits {
    /// Hold out the last `val_fraction` of the tokens of `file`. Each split must hold at least
    /// `context + 1` tokens so that one full window fits.
    pub fn new(file: Arc<TokenFile>, val_fraction: f64, context: usize, name: &str) -> Result<Self> {
        let text_hash = file.header().text_hash.clone();
        Self::split(Store::File(file), text_hash, val_fraction, context, name)
    }

    /// [`Splits::new`] for a text in memory, tokenized now: what a token file of it holds.
    pub fn of_text(text: &str, tok: &Tok, val_fraction: f64, context: usize, name: &str) -> Result<Self> {
        let ids = tok.encode(text).with_context(|| format!("tokenizing corpus {name}"))?;
        Self::split(Store::Memory(Arc::new(ids)), corpus_hash(text), val_fraction, context, name)
    }

    fn split(store: Store, text_hash: String, val_fraction: f64, context: usize, name: &str) -> Result<Self> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            bail!("the validation fraction must lie in (0, 1), got {val_fraction:?}");
        }
        let n = match &store {
            Store::File(f) => f.len(),
            Store::Memory(v) => v.len(),
        };
        let n_val = ((n as f64) * val_fraction).round() as usize;
        let n_train = n - n_val;
        let need = context + 1;
        if n_train < need || n_val < need {
            bail!(
                "corpus {name} is too short: {n} tokens give a {n_train}-token training split and a {n_val}-token validation split, \
                 each needs at least context + 1 = {need}; use a longer corpus or a smaller --context"
            );
        }
        Ok(Self { store, n_train, text_hash })
    }

    fn all(&self) -> Tokens<'_> {
        match &self.store {
            Store::File(f) => f.tokens(),
            Store::Memory(v) => v.as_slice().into(),
        }
    }

    /// The training head.
    pub fn train(&self) -> Tokens<'_> {
        self.all().slice(0..self.n_train)
    }

    /// The validation tail.
    pub fn val(&self) -> Tokens<'_> {
        let all = self.all();
        all.slice(self.n_train..all.len())
    }

    /// FNV-1a hex of the text the tokens came from ([`corpus_hash`]).
    pub fn text_hash(&self) -> &str {
        &self.text_hash
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
pub fn batch_at<'a>(tokens: impl Into<Tokens<'a>>, starts: &[usize], context: usize, bos: u32, dev: &Device) -> Result<Batch> {
    let tokens = tokens.into();
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
        tokens.extend_into(i..i + context - 1, &mut inputs)?;
        tokens.extend_into(i..i + context, &mut targets)?;
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
/// is smaller, that many tiles evenly spaced over it, in batches built as they are read.
/// Deterministic: the validation curve and the temperature sweep see the same windows every time.
#[derive(Debug, Clone)]
pub struct Windows<'a> {
    tokens: Tokens<'a>,
    starts: Vec<usize>,
    batch_size: usize,
    context: usize,
    bos: u32,
    dev: Device,
}

impl<'a> Windows<'a> {
    pub fn tiled(tokens: impl Into<Tokens<'a>>, max_windows: Option<usize>, batch_size: usize, context: usize, bos: u32, dev: &Device) -> Result<Self> {
        let tokens = tokens.into();
        if batch_size == 0 || context == 0 {
            bail!("tiled batches need a batch size and a context of at least 1, got {batch_size} and {context}");
        }
        if tokens.len() < context {
            bail!("{} tokens cannot fill one window of the context ({context})", tokens.len());
        }
        let n_tiles = (tokens.len() - context) / context + 1;
        let starts: Vec<usize> = match max_windows {
            Some(n) if n < n_tiles => (0..n).map(|k| (k * n_tiles / n) * context).collect(),
            _ => (0..n_tiles).map(|k| k * context).collect(),
        };
        Ok(Self { tokens, starts, batch_size, context, bos, dev: dev.clone() })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Targets over all windows.
    pub fn targets(&self) -> usize {
        self.starts.len() * self.context
    }

    /// The batches, each built when it is reached.
    pub fn batches(&self) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.starts.chunks(self.batch_size).map(|chunk| batch_at(self.tokens, chunk, self.context, self.bos, &self.dev))
    }

    /// Every batch, built now.
    pub fn collect(&self) -> Result<Vec<Batch>> {
        self.batches().collect()
    }
}

/// [`Windows::tiled`], every batch built now.
pub fn tiled_batches<'a>(tokens: impl Into<Tokens<'a>>, max_windows: Option<usize>, batch_size: usize, context: usize, bos: u32, dev: &Device) -> Result<Vec<Batch>> {
    Windows::tiled(tokens, max_windows, batch_size, context, bos, dev)?.collect()
}
