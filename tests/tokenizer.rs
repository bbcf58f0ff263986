//! Tokenizer round trips, BOS handling and the saved JSON.

mod common;

use thermoformer::data::tokenizer::{Tok, BOS};
use thermoformer::TokenizerKind;

#[test]
fn char_tokenizer_round_trips_and_has_bos() {
    let text = common::corpus_text(20_000);
    let tok = Tok::train_char(&text).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Char);
    let distinct: std::collections::BTreeSet<char> = text.chars().collect();
    assert_eq!(tok.vocab_size(), distinct.len() + 1, "one token per character plus BOS");
    let ids = tok.encode(&text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let with_bos = tok.encode_with_bos("First Citizen").unwrap();
    assert_eq!(with_bos[0], tok.bos());
    assert_eq!(tok.token_str(tok.bos()).as_deref(), Some(BOS));
    assert_eq!(tok.decode(&with_bos).unwrap(), "First Citizen", "decoding drops BOS");
}

#[test]
fn char_tokenizer_names_an_unknown_character() {
    let tok = Tok::train_char("abc\n").unwrap();
    let err = tok.encode("abz").unwrap_err().to_string();
    assert!(err.contains("'z'"), "{err}");
}

#[test]
fn bpe_tokenizer_round_trips_any_text() {
    let text = common::corpus_text(30_000);
    let tok = Tok::train_bpe(&text, 300).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    assert_eq!(tok.vocab_size(), 300);
    let ids = tok.encode(&text).unwrap();
    assert!(ids.len() < text.len(), "BPE should compress: {} ids for {} bytes", ids.len(), text.len());
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let unseen = "Ünïcödé ✓ never in the corpus\n";
    assert_eq!(tok.decode(&tok.encode(unseen).unwrap()).unwrap(), unseen, "byte-level BPE covers every byte");
}

#[test]
fn json_round_trip_preserves_the_tokenizer() {
    for tok in [Tok::train_char(&common::corpus_text(5000)).unwrap(), Tok::train_bpe(&common::corpus_text(20_000), 280).unwrap()] {
        let json = tok.to_json().unwrap();
        let back = Tok::from_json(&json).unwrap();
        assert_eq!(back.kind(), tok.kind());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        assert_eq!(back.bos(), tok.bos());
        let s = "ROMEO:\nBut soft, what light";
        assert_eq!(back.encode(s).unwrap(), tok.encode(s).unwrap());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["model"]["type"], "BPE", "a standard tokenizers model type");
        assert!(v["added_tokens"].as_array().unwrap().iter().any(|t| t["content"] == BOS && t["special"] == true));
    }
}

#[test]
fn literal_bos_text_is_text_not_the_bos_token() {
    let tok = Tok::train_bpe(&common::corpus_text(20_000), 280).unwrap();
    let ids = tok.encode("say <|bos|> aloud").unwrap();
    assert!(!ids.contains(&tok.bos()), "only encode_with_bos adds BOS");
    assert_eq!(tok.decode(&ids).unwrap(), "say <|bos|> aloud");
}
