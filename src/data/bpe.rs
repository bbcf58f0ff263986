//! Encoding with a GPT-2-style byte-level BPE fast enough for corpora of gigabytes.
//!
//! `tokenizers`'s `encode_fast` ran at 1.5 MB/s per core on a 20 MB corpus here (issue 19): it
//! keeps a byte-aligned `NormalizedString` and builds a full `Encoding` (tokens, offsets, masks)
//! for every call, and its word cache holds 10,000 words. This does only what the ids need, with
//! the same pieces: the pre-tokenizer's split (GPT-2's pattern), the byte-to-character map, and
//! the tokenizer's own BPE model for each word not yet in a per-call cache. It is used only for
//! tokenizers whose pipeline is exactly that ([`ByteLevelBpe::of`]); a property test holds its ids
//! to `encode_fast`'s.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::{Model, ModelWrapper, PreTokenizerWrapper, Tokenizer};

/// GPT-2's split pattern without its lookahead, which the `regex` crate has not: `\s+(?!\S)|\s+`
/// becomes `\s+`, and a run of two or more whitespace characters followed by more text gives its
/// last character back to the next piece ([`ByteLevelBpe::pieces`]), which is what the lookahead does.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// The byte-level BPE of a tokenizer whose pipeline is GPT-2's.
#[derive(Clone)]
pub struct ByteLevelBpe {
    split: regex::Regex,
    model: BPE,
    /// GPT-2's printable character for each byte.
    chars: [char; 256],
}

impl ByteLevelBpe {
    /// The fast path for `t`, when its pipeline is no normalizer, a ByteLevel pre-tokenizer with
    /// GPT-2's pattern and no prefix space, a BPE model without dropout, and only special added
    /// tokens (never matched in text here, as `Tok` encodes them as text); else None.
    pub fn of(t: &Tokenizer) -> Option<Self> {
        if t.get_normalizer().is_some() {
            return None;
        }
        match t.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space => {}
            _ => return None,
        }
        let ModelWrapper::BPE(model) = t.get_model() else { return None };
        if model.dropout.is_some() || model.continuing_subword_prefix.is_some() || model.end_of_word_suffix.is_some() {
            return None;
        }
        if t.get_added_tokens_decoder().values().any(|a| !a.special) {
            return None;
        }
        Some(Self { split: regex::Regex::new(PATTERN).expect("a valid pattern"), model: model.clone(), chars: byte_chars() })
    }

    /// The pre-tokenizer's pieces of `text`, as byte ranges.
    fn pieces<'t>(&'t self, text: &'t str) -> impl Iterator<Item = (usize, usize)> + 't {
        let mut at = 0;
        std::iter::from_fn(move || {
            let m = self.split.find_at(text, at)?;
            let (start, mut end) = (m.start(), m.end());
            let piece = m.as_str();
            if end < text.len() && piece.chars().all(char::is_whitespace) && piece.chars().nth(1).is_some() {
                let (last, _) = piece.char_indices().last().expect("two characters");
                end = start + last;
            }
            at = end;
            Some((start, end))
        })
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut cache: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut mapped = String::new();
        for (start, end) in self.pieces(text) {
            let piece = &text[start..end];
            if let Some(known) = cache.get(piece) {
                ids.extend_from_slice(known);
                continue;
            }
            mapped.clear();
            mapped.extend(piece.bytes().map(|b| self.chars[b as usize]));
            let word: Vec<u32> = self.model.tokenize(&mapped).map_err(|e| anyhow!("tokenizing {piece:?}: {e}"))?.iter().map(|t| t.id).collect();
            ids.extend_from_slice(&word);
            cache.insert(piece, word);
        }
        Ok(ids)
    }
}

/// GPT-2's map from bytes to printable characters (`bytes_to_unicode` in its `encoder.py`): the
/// printable Latin-1 bytes are themselves, the others are 256, 257, ... in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        chars[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below 0xD800")
        };
    }
    chars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_map_is_the_byte_level_alphabet() {
        let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let chars = byte_chars();
        assert_eq!(chars.iter().collect::<std::collections::HashSet<_>>().len(), 256);
        assert!(chars.iter().all(|c| alphabet.contains(c)));
        assert_eq!((chars[b' ' as usize], chars[b'\n' as usize], chars[b'A' as usize]), ('Ġ', 'Ċ', 'A'));
    }
}
