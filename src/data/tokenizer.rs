//! Text <-> token ids through the `tokenizers` crate, with a `<|bos|>` token in every vocabulary.
//!
//! Two kinds: `char` (one token per distinct character of the corpus, a BPE model with no merges
//! and a `Fuse` decoder) and `bpe` (byte-level BPE trained on the corpus). Both serialise to a
//! standard `tokenizer.json` that Python's `tokenizers` loads unchanged. Every sequence the model
//! sees starts with BOS, so even the first real token has a conditional probability.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainerBuilder, Vocab, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::{Start, TokenizerKind};
use crate::data::bpe::ByteLevelBpe;
use crate::data::corpus::Corpus;

/// BPE training sees lines of at most this many bytes: a longer line is offered to the sample in
/// parts, so a corpus of one huge line is sampled too, in bounded memory.
const LONGEST_SAMPLE_LINE: usize = 1 << 20;

/// The beginning-of-sequence token, present in every vocabulary trained here.
pub use crate::config::BOS;

/// A tokenizer with its BOS id and, for the char kind, the set of known characters.
#[derive(Clone)]
pub struct Tok {
    inner: Tokenizer,
    kind: TokenizerKind,
    bos: u32,
    /// The char tokenizer's id of every character it knows (None for byte-level BPE, which
    /// encodes any text).
    chars: Option<CharTable>,
    /// The fast encoder of a GPT-2-style byte-level BPE (None for other pipelines).
    bpe: Option<ByteLevelBpe>,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok").field("kind", &self.kind).field("vocab_size", &self.vocab_size()).finish()
    }
}

/// A char tokenizer's ids by character: a table for ASCII, a map beyond. What `tokenizers`'s BPE
/// with no merges computes for such a vocabulary (each character its own token), as a lookup:
/// the general encoder ran at 2.4 MB/s on a 20 MB corpus (issue 19's measurement).
#[derive(Debug, Clone)]
struct CharTable {
    ascii: [u32; 128],
    other: std::collections::HashMap<char, u32>,
}

impl CharTable {
    const ABSENT: u32 = u32::MAX;

    fn new(chars: impl Iterator<Item = (char, u32)>) -> Self {
        let mut table = Self { ascii: [Self::ABSENT; 128], other: Default::default() };
        for (c, id) in chars {
            if c.is_ascii() {
                table.ascii[c as usize] = id;
            } else {
                table.other.insert(c, id);
            }
        }
        table
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len());
        if text.is_ascii() {
            for (pos, &b) in text.as_bytes().iter().enumerate() {
                let id = self.ascii[b as usize];
                if id == Self::ABSENT {
                    Self::unknown(b as char, pos)?;
                }
                ids.push(id);
            }
            return Ok(ids);
        }
        for (pos, c) in text.char_indices() {
            let id = if c.is_ascii() { self.ascii[c as usize] } else { self.other.get(&c).copied().unwrap_or(Self::ABSENT) };
            if id == Self::ABSENT {
                Self::unknown(c, pos)?;
            }
            ids.push(id);
        }
        Ok(ids)
    }

    fn unknown(c: char, pos: usize) -> Result<()> {
        bail!("character {c:?} (U+{:04X}) at byte {pos} is not in the char tokenizer's vocabulary", c as u32)
    }
}

/// One token per character of `vocab`: a BPE model with no merges and a `Fuse` decoder.
fn char_tokenizer(vocab: Vocab) -> Result<Tokenizer> {
    let model = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .map_err(|e| anyhow!("building the char tokenizer: {e}"))?;
    let mut inner = Tokenizer::new(model);
    inner.with_decoder(Some(Fuse::new()));
    Ok(inner)
}

impl Tok {
    /// A character tokenizer over the distinct characters of `text` (sorted, ids 0..n), BOS = n.
    pub fn train_char(text: &str) -> Result<Self> {
        Self::char_of_set(text.chars().collect())
    }

    /// [`Tok::train_char`] over the text of `corpus`, read streaming (a bar over its bytes when
    /// `progress`): the same tokenizer as of the joined text in memory.
    pub fn train_char_streaming(corpus: &Corpus, progress: bool) -> Result<Self> {
        let pb = crate::progress::bytes_bar(corpus.bytes(), &format!("reading the characters of {}", corpus.name()), progress);
        let (mut ascii, mut other) = ([false; 128], BTreeSet::new());
        corpus.read(|piece, read| {
            if piece.is_ascii() {
                piece.bytes().for_each(|b| ascii[b as usize] = true);
            } else {
                for c in piece.chars() {
                    if c.is_ascii() {
                        ascii[c as usize] = true;
                    } else {
                        other.insert(c);
                    }
                }
            }
            pb.set_position(read);
            Ok(())
        })?;
        pb.finish_and_clear();
        let mut chars: BTreeSet<char> = (0u8..128).filter(|&b| ascii[b as usize]).map(char::from).collect();
        chars.append(&mut other);
        Self::char_of_set(chars)
    }

    fn char_of_set(chars: BTreeSet<char>) -> Result<Self> {
        if chars.is_empty() {
            bail!("cannot build a character vocabulary from empty text");
        }
        let mut vocab: Vocab = chars.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
        vocab.insert(BOS.to_string(), chars.len() as u32);
        let mut inner = char_tokenizer(vocab)?;
        inner.add_special_tokens(&[AddedToken::from(BOS, true)]);
        Self::from_tokenizer(inner)
    }

    /// A character tokenizer with the ids of `chars` (id i is `chars[i]`) and no BOS token: an
    /// imported char vocabulary (nanoGPT's `meta.pkl`), whose sequences start as `start` says.
    pub fn from_chars(chars: &[char], start: &Start) -> Result<Self> {
        let vocab: Vocab = chars.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
        if vocab.len() != chars.len() {
            bail!("the character vocabulary lists a character twice");
        }
        Self::build(char_tokenizer(vocab)?, start)
    }

    /// Byte-level BPE with `vocab_size` tokens (BOS and the 256 byte tokens included), trained on `text`.
    pub fn train_bpe(text: &str, vocab_size: usize) -> Result<Self> {
        // Lines keep their newline so that merges across "\n" boundaries are learned as in the text.
        Self::train_bpe_lines(text.split_inclusive('\n'), vocab_size)
    }

    /// [`Tok::train_bpe`] on at most `sample_bytes` of the text of `corpus`: every line when the
    /// corpus is no larger, else whole lines spread evenly over it (a line is taken while the
    /// sample is behind `sample_bytes` times the share of the corpus read so far), as
    /// large-corpus pipelines train their BPE on a sample.
    pub fn train_bpe_streaming(corpus: &Corpus, vocab_size: usize, sample_bytes: u64, progress: bool) -> Result<Self> {
        let pb = crate::progress::bytes_bar(corpus.bytes(), &format!("sampling {} for BPE", corpus.name()), progress);
        let total = corpus.bytes().max(1) as f64;
        let whole = corpus.bytes() <= sample_bytes;
        let (mut lines, mut partial, mut taken, mut at) = (Vec::new(), String::new(), 0u64, 0u64);
        let mut offer = |line: &str, at: u64, lines: &mut Vec<String>| {
            let len = line.len() as u64;
            // The first line is always taken, so a sample is never empty.
            if whole || taken == 0 || (taken as f64) < sample_bytes as f64 * (at as f64 / total).min(1.0) && taken + len <= sample_bytes {
                lines.push(line.to_string());
                taken += len;
            }
        };
        corpus.read(|piece, read| {
            for line in piece.split_inclusive('\n') {
                at += line.len() as u64;
                if line.ends_with('\n') {
                    if partial.is_empty() {
                        offer(line, at, &mut lines);
                    } else {
                        partial.push_str(line);
                        offer(&partial, at, &mut lines);
                        partial.clear();
                    }
                } else {
                    partial.push_str(line);
                    // A line longer than this is offered in parts (cut at a character
                    // boundary), so one huge line neither fills memory nor misses the sample.
                    if partial.len() >= LONGEST_SAMPLE_LINE {
                        offer(&partial, at, &mut lines);
                        partial.clear();
                    }
                }
            }
            pb.set_position(read);
            Ok(())
        })?;
        if !partial.is_empty() {
            offer(&partial, at, &mut lines);
        }
        pb.finish_and_clear();
        Self::train_bpe_lines(lines.iter().map(String::as_str), vocab_size)
    }

    fn train_bpe_lines<'a>(lines: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self> {
        let mut inner = Tokenizer::new(BPE::default());
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        let alphabet: std::collections::HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(BOS, true)])
            .initial_alphabet(alphabet)
            .build()
            .into();
        inner
            .train(&mut trainer, lines)
            .map_err(|e| anyhow!("training the BPE tokenizer: {e}"))?;
        Self::from_tokenizer(inner)
    }

    /// Build the tokenizer a training run asks for.
    pub fn train(kind: TokenizerKind, text: &str, bpe_vocab_size: usize) -> Result<Self> {
        match kind {
            TokenizerKind::Char => Self::train_char(text),
            TokenizerKind::Bpe => Self::train_bpe(text, bpe_vocab_size),
        }
    }

    /// Build the tokenizer a training run asks for from `corpus`, streaming.
    pub fn train_streaming(kind: TokenizerKind, corpus: &Corpus, bpe_vocab_size: usize, bpe_sample_bytes: u64, progress: bool) -> Result<Self> {
        match kind {
            TokenizerKind::Char => Self::train_char_streaming(corpus, progress),
            TokenizerKind::Bpe => Self::train_bpe_streaming(corpus, bpe_vocab_size, bpe_sample_bytes, progress),
        }
    }

    /// Load a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        Self::from_json(&json).with_context(|| format!("parsing tokenizer {}", path.display()))
    }

    /// Parse the JSON of a `tokenizer.json` whose sequences start with `<|bos|>`.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::from_json_with_start(json, &Start::default())
    }

    /// Parse the JSON of a `tokenizer.json` for a model with the start convention `start`.
    pub fn from_json_with_start(json: &str, start: &Start) -> Result<Self> {
        let inner: Tokenizer = parse_without_panics(json)?;
        Self::from_tokenizer_with_start(inner, start)
    }

    /// A `tokenizers` tokenizer for a model with the start convention `start`.
    pub fn from_tokenizer_with_start(inner: Tokenizer, start: &Start) -> Result<Self> {
        Self::build(inner, start)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self> {
        Self::build(inner, &Start::default())
    }

    fn build(mut inner: Tokenizer, start: &Start) -> Result<Self> {
        // A literal "<|bos|>" in text is text, not the BOS token: only `encode_with_bos` adds BOS.
        inner.set_encode_special_tokens(true);
        let bos = match start {
            Start::Token(t) => inner.token_to_id(t).ok_or_else(|| anyhow!("the tokenizer has no {t} token"))?,
            Start::Text(t) => {
                let enc = inner.encode_fast(t.as_str(), false).map_err(|e| anyhow!("tokenizing the start text {t:?}: {e}"))?;
                match enc.get_ids() {
                    [id] => *id,
                    ids => bail!("the start text {t:?} is {} tokens in this tokenizer; it must be exactly one", ids.len()),
                }
            }
        };
        // Ids index the embedding: they must be exactly 0..n.
        let n = inner.get_vocab_size(true);
        if let Some((token, id)) = inner.get_vocab(true).into_iter().find(|(_, id)| *id as usize >= n) {
            bail!("token {token:?} has id {id}, but the ids of a {n}-token vocabulary are 0..={}", n - 1);
        }
        // A char tokenizer is what `train_char` and `from_chars` build: no pre-tokenizer and a
        // Fuse decoder. Anything else (byte-level BPE, however its pre-tokenizer is composed)
        // encodes any text.
        let is_char = inner.get_pre_tokenizer().is_none() && matches!(inner.get_decoder(), Some(tokenizers::DecoderWrapper::Fuse(_)));
        let (kind, chars) = if !is_char {
            (TokenizerKind::Bpe, None)
        } else {
            let chars = inner.get_vocab(false).into_iter().filter(|(t, _)| t.as_str() != BOS).filter_map(|(t, id)| {
                let mut it = t.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => Some((c, id)),
                    _ => None,
                }
            });
            (TokenizerKind::Char, Some(CharTable::new(chars)))
        };
        let bpe = if chars.is_none() { ByteLevelBpe::of(&inner) } else { None };
        Ok(Self { inner, kind, bos, chars, bpe })
    }

    /// The standard `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| anyhow!("serialising the tokenizer: {e}"))
    }

    /// Whether this is a byte-level BPE with exactly GPT-2's pipeline (the fast encoder's).
    pub fn is_gpt2_bpe(&self) -> bool {
        self.bpe.is_some()
    }

    /// Which kind of tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Number of token ids, BOS included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id every sequence starts with: BOS for models trained here, the model's own start
    /// token or text for imported ones ([`crate::config::Start`]).
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// Token ids of `text` (no BOS). A character the char tokenizer never saw is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(chars) = &self.chars {
            return chars.encode(text);
        }
        if let Some(bpe) = &self.bpe {
            return bpe.encode(text);
        }
        let enc = self.inner.encode_fast(text, false).map_err(|e| anyhow!("tokenizing text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// BOS followed by the token ids of `text`.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.bos];
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Text of `ids`, BOS dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("decoding tokens: {e}"))
    }

    /// The string of one token id (its raw vocabulary entry).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The text of one token; a byte-level token that is not whole UTF-8 on its own falls back to
    /// its vocabulary symbol.
    pub fn token_text(&self, id: u32) -> String {
        match self.decode(&[id]) {
            Ok(s) if !s.contains('\u{FFFD}') => s,
            _ => self.token_str(id).unwrap_or_else(|| format!("#{id}")),
        }
    }
}

/// `tokenizer.json` parsed by the `tokenizers` crate, whose version 0.22 panics on some malformed
/// files (a `decoder` it cannot read meets an `expect`; found by fuzzing, saved in
/// `tests/fixtures/fuzz/tokenizer/`). A file from a stranger must give an error, not a crash, so
/// the parse runs under `catch_unwind`, with the panic's message kept off stderr on this thread.
pub(crate) fn parse_without_panics(json: &str) -> Result<Tokenizer> {
    use std::cell::{Cell, RefCell};
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
        static MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                MESSAGE.with(|m| *m.borrow_mut() = info.payload_as_str().unwrap_or("a panic").to_string());
            } else {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let parsed = std::panic::catch_unwind(|| json.parse::<Tokenizer>());
    QUIET.with(|q| q.set(false));
    match parsed {
        Ok(result) => result.map_err(|e| anyhow!("{e}")),
        Err(_) => Err(anyhow!("the tokenizers library could not read it ({})", MESSAGE.with(|m| m.borrow().clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The lookup gives the ids `tokenizers`'s own encoder gives, on any text over the
        /// vocabulary (ASCII and not, BOS's spelling included).
        #[test]
        fn char_lookup_matches_the_general_encoder(text in "[a-c \n<|>éΩ]{0,40}") {
            let tok = Tok::train_char("abc \n<|bos|>éΩ").unwrap();
            let general = tok.inner.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
            prop_assert_eq!(tok.encode(&text).unwrap(), general);
        }

        /// The fast byte-level BPE gives `encode_fast`'s ids on any text: runs of spaces, tabs
        /// and newlines before and after words, contractions, digits, punctuation, non-ASCII
        /// letters and digits, other scripts' spaces, and BOS's spelling.
        #[test]
        fn fast_bpe_matches_the_general_encoder(text in "([a-zA-Z]{1,6}|[ \t\n]{1,3}|'s|'ll|'[a-z]|[0-9]{1,3}|[.,;:!?]{1,2}|é|Ω|٣|\u{a0}|\u{3000}|<\\|bos\\|>|日本){0,30}") {
            let tok = bpe_tokenizer();
            prop_assert!(tok.bpe.is_some(), "the fast path is taken");
            let general = tok.inner.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
            prop_assert_eq!(tok.encode(&text).unwrap(), general);
        }
    }

    /// A 400-token BPE trained on the first 50,000 characters of the shipped corpus (built once).
    fn bpe_tokenizer() -> &'static Tok {
        static TOK: std::sync::OnceLock<Tok> = std::sync::OnceLock::new();
        TOK.get_or_init(|| {
            let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt")).unwrap();
            Tok::train_bpe(&text[..50_000], 400).unwrap()
        })
    }

    #[test]
    fn fast_bpe_matches_the_general_encoder_on_the_shipped_corpus() {
        let tok = bpe_tokenizer();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt")).unwrap();
        let general = tok.inner.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(tok.encode(&text).unwrap(), general);
    }
}
