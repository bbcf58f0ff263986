//! Sequence energies: the language model as a Boltzmann distribution over sequences.
//!
//! A sequence x_1..x_n is scored as BOS + tokens, E = -sum_t ln p_T(x_t | BOS, x_<t) in nats, so
//! p(seq) = exp(-E) and the sum of exp(-E) over all sequences of a fixed length is 1. At
//! temperature T the per-step distribution is p_T(x | ctx) = p(x | ctx)^(1/T) / Z_T(ctx), i.e.
//! softmax(logits / T), normalised at every step.
//!
//! Sequences longer than the context are scored with a sliding window: every window is BOS + a
//! run of tokens (the layout the model was trained on), consecutive windows start `stride` tokens
//! apart, and each token is scored once, in the first window that reaches it, so after the first
//! window every token has at least `context - stride` tokens of context.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

use crate::data::tokenizer::Tok;
use crate::model::Gpt;

/// How to score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOptions {
    /// Temperature of the per-step distribution; 1 is the plain model.
    pub temperature: f64,
    /// Tokens between the starts of consecutive windows of a long sequence, in 1..=context
    /// (None: half the context).
    pub stride: Option<usize>,
    /// Windows per forward pass.
    pub batch_size: usize,
}

impl ScoreOptions {
    /// The defaults, as a constant so the CLI's flags can show them.
    pub const DEFAULT: ScoreOptions = ScoreOptions { temperature: 1.0, stride: None, batch_size: 32 };
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The default stride: half the context (at least 1).
pub fn default_stride(context: usize) -> usize {
    (context / 2).max(1)
}

/// One window over a sequence's tokens t: the input is BOS + t[start..end-1] and position j
/// predicts t[start + j]; only targets from `score_from` on are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub score_from: usize,
}

/// Windows covering a sequence of `n` tokens, each target scored exactly once; the stride must
/// lie in 1..=context.
pub fn windows(n: usize, context: usize, stride: usize) -> Result<Vec<Window>> {
    if stride == 0 || context == 0 || stride > context {
        bail!("windows need a context of at least 1 and a stride in 1..=context, got context {context} and stride {stride}");
    }
    let mut out = Vec::new();
    let (mut start, mut covered) = (0, 0);
    while covered < n {
        let end = (start + context).min(n);
        out.push(Window { start, end, score_from: covered });
        covered = end;
        // The next window is full-length and starts at most `stride` later.
        start = (start + stride).min(n.saturating_sub(context));
    }
    Ok(out)
}

/// A scored sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Token ids, BOS not included.
    pub ids: Vec<u32>,
    /// -ln p_T(x_t | context) of every token, nats.
    pub energies: Vec<f64>,
}

impl Scored {
    /// Sequence energy E = -ln p(seq), nats.
    pub fn energy(&self) -> f64 {
        self.energies.iter().fold(0.0, |a, e| a + e) // not sum(): an empty f64 sum is -0.0
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// E / tokens (None for an empty sequence).
    pub fn energy_per_token(&self) -> Option<f64> {
        (!self.ids.is_empty()).then(|| self.energy() / self.tokens() as f64)
    }

    /// exp(E / tokens) (None for an empty sequence).
    pub fn perplexity(&self) -> Option<f64> {
        self.energy_per_token().map(f64::exp)
    }

    /// E in bits.
    pub fn bits(&self) -> f64 {
        self.energy() / std::f64::consts::LN_2
    }
}

/// Texts scored together at most: `score` reads a file this many lines at a time, and the Python
/// module scores a list in chunks of this size, so both form the same batches from the same texts.
pub const CHUNK_TEXTS: usize = 4096;

/// Encode `texts` for [`score_ids`] (an error names the text by `name(index)`), after checking
/// that the largest forward pass they need fits in memory (`hint` says what to lower if not).
pub fn encode_texts<S: AsRef<str>>(model: &Gpt, tok: &Tok, texts: &[S], opts: &ScoreOptions, name: impl Fn(usize) -> String, hint: &str) -> Result<Vec<Vec<u32>>> {
    let seqs = texts.iter().enumerate().map(|(i, t)| tok.encode(t.as_ref()).with_context(|| name(i))).collect::<Result<Vec<_>>>()?;
    let context = model.config().context;
    let stride = opts.stride.unwrap_or_else(|| default_stride(context));
    // The first forward pass is the largest: the longest windows, as many as fit the batch.
    let windows: usize = seqs.iter().map(|ids| Ok(windows(ids.len(), context, stride)?.len())).sum::<Result<usize>>()?;
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0).clamp(1, context);
    let batch = opts.batch_size.min(windows.max(1));
    let shape = crate::ModelConfig { context: longest, ..model.config().clone() };
    crate::memory::ensure_fits_on(model.device(), &format!("scoring {batch} windows of {longest} tokens at once"), shape.forward_bytes(batch), hint)?;
    Ok(seqs)
}

/// Score token sequences (BOS not included; it is prepended) with `model`.
pub fn score_ids(model: &Gpt, seqs: &[Vec<u32>], bos: u32, opts: &ScoreOptions) -> Result<Vec<Scored>> {
    score_ids_with(model, seqs, bos, opts, || Ok(()))
}

/// [`score_ids`], calling `between` before every forward pass: an error from it (an interrupt,
/// say) stops the scoring there and is returned.
pub fn score_ids_with(model: &Gpt, seqs: &[Vec<u32>], bos: u32, opts: &ScoreOptions, mut between: impl FnMut() -> Result<()>) -> Result<Vec<Scored>> {
    let context = model.config().context;
    let stride = opts.stride.unwrap_or_else(|| default_stride(context));
    if !crate::config::valid_temperature(opts.temperature) {
        bail!("the scoring temperature must be finite and at least {:?}, got {:?}", crate::config::MIN_TEMPERATURE, opts.temperature);
    }
    if stride == 0 || stride > context {
        bail!("the stride must be in 1..={context} (the context), got {stride}");
    }
    if opts.batch_size == 0 {
        bail!("the batch size must be at least 1");
    }
    let mut out: Vec<Scored> = seqs.iter().map(|ids| Scored { ids: ids.clone(), energies: vec![0.0; ids.len()] }).collect();
    let mut jobs: Vec<(usize, Window)> = Vec::new();
    for (s, ids) in seqs.iter().enumerate() {
        jobs.extend(windows(ids.len(), context, stride)?.into_iter().map(|w| (s, w)));
    }
    // Longest first, so each batch pads little.
    jobs.sort_by_key(|(_, w)| std::cmp::Reverse(w.end - w.start));
    let dev = model.device();
    for chunk in jobs.chunks(opts.batch_size) {
        between()?;
        let t = chunk.iter().map(|(_, w)| w.end - w.start).max().unwrap_or(1);
        let (mut inputs, mut targets) = (Vec::with_capacity(chunk.len() * t), Vec::with_capacity(chunk.len() * t));
        for (s, w) in chunk {
            let ids = &seqs[*s];
            let len = w.end - w.start;
            inputs.push(bos);
            inputs.extend_from_slice(&ids[w.start..w.end - 1]);
            targets.extend_from_slice(&ids[w.start..w.end]);
            // Right padding: causal attention keeps it out of the real positions.
            inputs.extend(std::iter::repeat_n(bos, t - len));
            targets.extend(std::iter::repeat_n(0, t - len));
        }
        let b = chunk.len();
        let inputs = Tensor::from_vec(inputs, (b, t), dev)?;
        let targets = Tensor::from_vec(targets, b * t, dev)?;
        // Tempered: p_T = softmax(logits / T), the head and the loss over chunks of rows.
        let energies = model.token_energies(&inputs, &targets, opts.temperature)?.reshape((b, t))?.to_dtype(DType::F64)?.to_vec2::<f64>()?; // (B, T)
        for ((s, w), row) in chunk.iter().zip(energies) {
            for pos in w.score_from..w.end {
                out[*s].energies[pos] = row[pos - w.start];
            }
        }
    }
    Ok(out)
}

/// One word of a scored sequence and its energy (surprisal) -ln p(word | context), the sum of
/// its tokens' energies.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WordEnergy {
    /// The word's text, without the space that opens it.
    pub word: String,
    /// Tokens it spans.
    pub tokens: usize,
    /// Nats.
    pub energy: f64,
    /// The same in bits.
    pub bits: f64,
}

/// Group a scored sequence's tokens into words, as minicons's `word_score` does: with byte-level
/// BPE a token that starts with a space (or the first token) opens a word; with a char tokenizer
/// every space opens one. A space's energy goes to the word it opens, so the word energies add
/// up to the sequence energy.
pub fn word_energies(s: &Scored, tok: &Tok) -> Result<Vec<WordEnergy>> {
    let mut groups: Vec<(Vec<u32>, f64)> = Vec::new();
    for (&id, &e) in s.ids.iter().zip(&s.energies) {
        let text = tok.token_text(id);
        // Byte-level BPE spells a leading space as 'Ġ' in its vocabulary.
        let byte_level = tok.kind() == crate::config::TokenizerKind::Bpe;
        let spaced = text.starts_with(' ') || (byte_level && tok.token_str(id).is_some_and(|t| t.starts_with('\u{120}')));
        // A run of spaces opens one word, not one per space.
        let only_spaces = |ids: &[u32]| tok.decode(ids).map(|t| t.trim_matches(' ').is_empty()).unwrap_or(false);
        if groups.is_empty() || (spaced && !only_spaces(&groups.last().expect("not empty").0)) {
            groups.push((Vec::new(), 0.0));
        }
        let g = groups.last_mut().expect("a group was opened");
        g.0.push(id);
        g.1 += e;
    }
    // Trailing spaces belong to the last word.
    if groups.len() > 1 && tok.decode(&groups[groups.len() - 1].0).map(|t| t.trim_matches(' ').is_empty()).unwrap_or(false) {
        let (ids, e) = groups.pop().expect("two groups");
        let last = groups.last_mut().expect("one group left");
        last.0.extend(ids);
        last.1 += e;
    }
    groups
        .into_iter()
        .map(|(ids, energy)| {
            Ok(WordEnergy { word: tok.decode(&ids)?.trim_matches(' ').to_string(), tokens: ids.len(), energy, bits: energy / std::f64::consts::LN_2 })
        })
        .collect()
}
