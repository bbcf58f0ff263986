//! Property tests: arbitrary text and arbitrary bytes never panic the tokenizers, the scorer or
//! the binary.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::OnceLock;

use candle_core::Device;
use proptest::prelude::*;
use thermoformer::model::params::Params;
use thermoformer::physics::score::{self, ScoreOptions};
use thermoformer::{Gpt, ModelConfig, Tok};

fn char_tok() -> &'static Tok {
    static TOK: OnceLock<Tok> = OnceLock::new();
    TOK.get_or_init(|| Tok::train_char(&common::corpus_text(5000)).unwrap())
}

fn bpe_tok() -> &'static Tok {
    static TOK: OnceLock<Tok> = OnceLock::new();
    TOK.get_or_init(|| Tok::train_bpe(&common::corpus_text(20_000), 300).unwrap())
}

fn model() -> &'static Gpt {
    static MODEL: OnceLock<Gpt> = OnceLock::new();
    MODEL.get_or_init(|| Params::init(&ModelConfig::tiny(char_tok().vocab_size()), 0.3, 3, &Device::Cpu).unwrap().1)
}

/// A trained tiny checkpoint for the binary.
fn checkpoint() -> &'static str {
    static DIR: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = common::trained(tmp.path()).to_str().unwrap().to_string();
        (tmp, out)
    })
    .1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_tokenizes_or_names_the_problem(s in any::<String>()) {
        let known = s.chars().all(|c| char_tok().encode(&c.to_string()).is_ok());
        match char_tok().encode(&s) {
            Ok(ids) => {
                prop_assert!(known);
                prop_assert_eq!(char_tok().decode(&ids).unwrap(), s.clone());
            }
            Err(e) => prop_assert!(!known && e.to_string().contains("not in the char tokenizer's vocabulary")),
        }
        // Byte-level BPE takes any text and gives it back.
        let ids = bpe_tok().encode(&s).unwrap();
        prop_assert_eq!(bpe_tok().decode(&ids).unwrap(), s);
    }

    #[test]
    fn any_token_sequence_scores_finite_energies(ids in prop::collection::vec(0u32..66, 0..80), stride in 1usize..17) {
        let v = model().config().vocab_size as u32;
        let ids: Vec<u32> = ids.into_iter().map(|i| i % v).collect();
        let opts = ScoreOptions { stride: Some(stride), ..ScoreOptions::default() };
        let s = score::score_ids(model(), std::slice::from_ref(&ids), char_tok().bos(), &opts).unwrap();
        prop_assert_eq!(s[0].energies.len(), ids.len());
        // The tokens of the first window are -ln softmax of one direct forward pass over
        // BOS + the tokens before them, worked out here in f64.
        let k = ids.len().min(model().config().context);
        if k > 0 {
            let mut input = vec![char_tok().bos()];
            input.extend_from_slice(&ids[..k - 1]);
            let input = candle_core::Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let rows = model().forward(&input).unwrap().squeeze(0).unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec2::<f64>().unwrap();
            for (t, row) in rows.iter().enumerate() {
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let ln_z = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                let want = ln_z - row[ids[t] as usize];
                prop_assert!((s[0].energies[t] - want).abs() < 1e-4, "token {}: {} against {}", t, s[0].energies[t], want);
            }
        }
        prop_assert!(s[0].energies.iter().all(|e| e.is_finite()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_bytes_on_stdin_never_panic_the_binary(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut child = common::thermoformer()
            .args(["score", "-", "--checkpoint", checkpoint(), "--format", "jsonl"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(&bytes);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(!stderr.contains("panicked"), "{}", stderr);
        match out.status.code() {
            Some(0) => prop_assert!(stderr.is_empty()),
            Some(1) => prop_assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1),
            other => prop_assert!(false, "exit {:?}: {}", other, stderr),
        }
    }
}
