//! Sequence energies: normalisation over all sequences, batching and windowing consistency.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use thermoformer::model::HeadTemperature;
use thermoformer::model::params::Params;
use thermoformer::physics::score::{self, ScoreOptions, Window};
use thermoformer::{Gpt, ModelConfig, Tok};

/// A char model with non-trivial (large-init) logits.
fn sharp_model() -> (Tok, Gpt) {
    let tok = Tok::train_char(&common::corpus_text(5000)).unwrap();
    let cfg = ModelConfig::tiny(tok.vocab_size());
    let (_, model) = Params::init(&cfg, 0.4, 11, &Device::Cpu).unwrap();
    (tok, model)
}

/// Sum of exp(-E) over every sequence of exactly two tokens (BOS included as a possible token).
fn two_token_mass(model: &Gpt, bos: u32, temperature: f64) -> f64 {
    let v = model.config().vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..v).flat_map(|a| (0..v).map(move |b| vec![a, b])).collect();
    let opts = ScoreOptions { temperature, stride: None, batch_size: 512 };
    score::score_ids(model, &seqs, bos, &opts).unwrap().iter().map(|s| (-s.energy()).exp()).sum()
}

#[test]
fn exp_minus_energy_sums_to_one_over_all_two_token_sequences() {
    let (tok, mut model) = sharp_model();
    assert!(tok.vocab_size() <= 70, "vocabulary {}", tok.vocab_size());
    let mass = two_token_mass(&model, tok.bos(), 1.0);
    assert!((mass - 1.0).abs() < 1e-4, "T = 1: {mass}");
    let mass = two_token_mass(&model, tok.bos(), 0.5);
    assert!((mass - 1.0).abs() < 1e-4, "T = 0.5: {mass}");
    let before = score::score_ids(&model, &[vec![3, 4]], tok.bos(), &ScoreOptions::default()).unwrap();
    model.override_temperatures(None, &[HeadTemperature { layer: 1, head: 0, temperature: 0.2 }]).unwrap();
    let after = score::score_ids(&model, &[vec![3, 4]], tok.bos(), &ScoreOptions::default()).unwrap();
    assert!((before[0].energy() - after[0].energy()).abs() > 1e-4, "the override changes the model");
    let mass = two_token_mass(&model, tok.bos(), 1.0);
    assert!((mass - 1.0).abs() < 1e-4, "head 1.0 at T = 0.2: {mass}");
}

#[test]
fn tempered_energies_sharpen_the_distribution() {
    // At T < 1 the most probable continuation gets cheaper and improbable ones dearer.
    let (tok, model) = sharp_model();
    let v = model.config().vocab_size as u32;
    let seqs: Vec<Vec<u32>> = (0..v).map(|a| vec![a]).collect();
    let at = |t: f64| {
        let opts = ScoreOptions { temperature: t, ..ScoreOptions::default() };
        score::score_ids(&model, &seqs, tok.bos(), &opts).unwrap().iter().map(|s| s.energy()).collect::<Vec<f64>>()
    };
    let (plain, cold) = (at(1.0), at(0.5));
    let best = (0..plain.len()).min_by(|&a, &b| plain[a].total_cmp(&plain[b])).unwrap();
    let worst = (0..plain.len()).max_by(|&a, &b| plain[a].total_cmp(&plain[b])).unwrap();
    assert!(cold[best] < plain[best] && cold[worst] > plain[worst]);
}

fn random_seq(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn a_line_scores_the_same_alone_and_in_a_padded_batch() {
    let (tok, model) = sharp_model();
    let v = (tok.vocab_size() - 1) as u32;
    let line = random_seq(11, v, 1);
    let others = [random_seq(3, v, 2), random_seq(16, v, 3), random_seq(0, v, 4), random_seq(40, v, 5)];
    let alone = score::score_ids(&model, std::slice::from_ref(&line), tok.bos(), &ScoreOptions::default()).unwrap();
    let mut batch = others.to_vec();
    batch.insert(2, line);
    for batch_size in [1, 2, 32] {
        let opts = ScoreOptions { batch_size, ..ScoreOptions::default() };
        let together = score::score_ids(&model, &batch, tok.bos(), &opts).unwrap();
        assert_eq!(together[2].ids, alone[0].ids);
        for (a, b) in together[2].energies.iter().zip(&alone[0].energies) {
            assert!((a - b).abs() < 1e-5, "batch size {batch_size}: {a} vs {b}");
        }
        assert!((together[2].energy() - alone[0].energy()).abs() < 1e-5);
        assert_eq!(together[3].tokens(), 0);
        assert_eq!(together[3].energy(), 0.0);
        assert_eq!(together[3].energy_per_token(), None);
    }
}

#[test]
fn windows_score_every_token_once_with_enough_context() {
    for (n, context, stride) in [(0, 8, 4), (5, 8, 4), (8, 8, 4), (9, 8, 4), (30, 8, 3), (30, 8, 1), (30, 8, 8), (100, 16, 8)] {
        let ws = score::windows(n, context, stride).unwrap();
        let mut next = 0;
        for (k, &Window { start, end, score_from }) in ws.iter().enumerate() {
            assert!(end - start <= context && score_from == next && end > score_from, "{n} {context} {stride}: {ws:?}");
            if k > 0 {
                assert_eq!(end - start, context, "later windows are full");
                assert!(score_from - start >= context - stride, "context of at least context - stride");
            }
            next = end;
        }
        assert_eq!(next, n, "every token scored");
    }
}

#[test]
fn sliding_window_matches_full_context_and_direct_forward_passes() {
    let (tok, model) = sharp_model();
    let context = model.config().context;
    let v = (tok.vocab_size() - 1) as u32;
    // Lines that fit: any stride gives the single full-context window.
    let fits = random_seq(context, v, 9);
    let a = score::score_ids(&model, std::slice::from_ref(&fits), tok.bos(), &ScoreOptions { stride: Some(1), ..Default::default() }).unwrap();
    let b = score::score_ids(&model, &[fits], tok.bos(), &ScoreOptions { stride: Some(context), ..Default::default() }).unwrap();
    assert_eq!(a, b);
    // A long line with stride 1: token t is predicted from BOS + the context-1 tokens before it.
    let long = random_seq(3 * context + 5, v, 10);
    let s = score::score_ids(&model, std::slice::from_ref(&long), tok.bos(), &ScoreOptions { stride: Some(1), ..Default::default() }).unwrap();
    for t in [context, context + 1, 2 * context + 3, long.len() - 1] {
        let mut input = vec![tok.bos()];
        input.extend_from_slice(&long[t + 1 - context..t]);
        let logits = model.forward(&Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        let last = logits.i((0, context - 1)).unwrap();
        let log_p = candle_nn::ops::log_softmax(&last, 0).unwrap().to_vec1::<f32>().unwrap();
        let expected = -(log_p[long[t] as usize] as f64);
        assert!((s[0].energies[t] - expected).abs() < 1e-5, "token {t}: {} vs {expected}", s[0].energies[t]);
    }
    // The first context tokens are scored exactly as a line that fits.
    let head = score::score_ids(&model, &[long[..context].to_vec()], tok.bos(), &ScoreOptions::default()).unwrap();
    for (x, y) in head[0].energies.iter().zip(&s[0].energies) {
        assert!((x - y).abs() < 1e-5);
    }
}

#[test]
fn a_slow_pipe_gets_each_result_as_soon_as_its_line_is_read() {
    // One line, then a pause with the pipe still open: the first result must come out during
    // the pause (before, score waited for 4096 lines or the end of the input). A fast input of
    // many lines is still scored, every line once, in order.
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let run = common::trained(tmp.path());
    let mut child = common::thermoformer()
        .args(["score", "-", "--checkpoint", run.to_str().unwrap(), "--format", "jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if send.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    writeln!(stdin, "First Citizen").unwrap();
    stdin.flush().unwrap();
    let first = receive.recv_timeout(std::time::Duration::from_secs(60)).expect("the first line's result, while the pipe stays open");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["tokens"], 13, "{first}");
    let rest_line = |i: usize| "You are all resolved".chars().take(1 + i % 20).collect::<String>();
    for i in 0..300 {
        writeln!(stdin, "{}", rest_line(i)).unwrap();
    }
    drop(stdin);
    let rest: Vec<String> = receive.iter().collect();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rest.len(), 300, "every line scored once");
    let tokens: Vec<u64> = rest.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (0..300).map(|i| rest_line(i).len() as u64).collect();
    assert_eq!(tokens, want, "in order");
}
