//! Sampling: greedy is argmax, top-k and top-p restrict the support, the KV cache reproduces the
//! full forward pass, a seed fixes the text.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thermoformer::config::Positions;
use thermoformer::physics::generate::{self, Generator, SampleOptions};
use thermoformer::kernels::Kernels;
use thermoformer::model::KvCache;
use thermoformer::model::params::Params;
use thermoformer::{Gpt, ModelConfig, Tok};

fn model() -> (Tok, Gpt) {
    let tok = Tok::train_char(&common::corpus_text(5000)).unwrap();
    let cfg = ModelConfig::tiny(tok.vocab_size());
    let (_, model) = Params::init(&cfg, 0.4, 5, &Device::Cpu).unwrap();
    (tok, model)
}

fn last_logits(model: &Gpt, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&input).unwrap().i((0, ids.len() - 1)).unwrap().to_vec1::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn kv_cache_gives_the_logits_of_the_full_forward_pass() {
    let (tok, model) = model();
    let context = model.config().context;
    let ids: Vec<u32> = std::iter::once(tok.bos()).chain((0..context as u32 - 1).map(|i| (i * 7 + 3) % 40)).collect();
    // Prime with a chunk of 5, then one token at a time up to the full context.
    let mut cache = KvCache::new();
    let chunk = model.forward_cached(&Tensor::new(&ids[..5], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap();
    let full = model.forward(&Tensor::new(&ids[..5], &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
    assert!(max_diff(&common::flat(&chunk), &common::flat(&full)) < 1e-4);
    // A chunk of 4 on top of the cache (the rectangular mask), then one token at a time.
    let chunk = model.forward_cached(&Tensor::new(&ids[5..9], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap();
    let full = model.forward(&Tensor::new(&ids[..9], &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
    assert!(max_diff(&common::flat(&chunk), &common::flat(&full.narrow(1, 5, 4).unwrap())) < 1e-4);
    for t in 9..ids.len() {
        let step = model.forward_cached(&Tensor::new(&ids[t..t + 1], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap();
        let d = max_diff(&common::flat(&step), &last_logits(&model, &ids[..=t]));
        assert!(d < 1e-4, "position {t}: {d}");
    }
    assert_eq!(cache.len(), context);
    let over = model.forward_cached(&Tensor::new(&[1u32], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &mut cache);
    assert!(over.is_err(), "a full cache refuses more tokens");
}

#[test]
fn batched_kv_cache_gives_each_row_the_logits_of_its_own_full_forward_pass() {
    // Batched rollouts (rl) run B > 1 sequences through one cache; each row must still see only
    // its own keys and values, with both kernel paths and with rotary positions.
    for (kernels, positions) in [
        (Kernels::Fused, Positions::Learned),
        (Kernels::Composed, Positions::Learned),
        (Kernels::Fused, Positions::Rope),
    ] {
        let tok = Tok::train_char(&common::corpus_text(5000)).unwrap();
        let cfg = ModelConfig { positions, ..ModelConfig::tiny(tok.vocab_size()) };
        let (_, mut model) = Params::init(&cfg, 0.4, 5, &Device::Cpu).unwrap();
        model.set_kernels(kernels);
        let (b, context) = (3usize, cfg.context);
        let rows: Vec<Vec<u32>> = (0..b as u32)
            .map(|r| std::iter::once(tok.bos()).chain((0..context as u32 - 1).map(|i| (i * (5 + 2 * r) + r) % 40)).collect())
            .collect();
        let batch = |from: usize, to: usize| {
            let flat: Vec<u32> = rows.iter().flat_map(|row| row[from..to].iter().copied()).collect();
            Tensor::from_vec(flat, (b, to - from), &Device::Cpu).unwrap()
        };
        let mut cache = KvCache::new();
        let primed = model.forward_cached(&batch(0, 6), &mut cache).unwrap(); // (B, 6, V)
        let full = model.forward(&batch(0, 6)).unwrap();
        assert!(max_diff(&common::flat(&primed), &common::flat(&full)) < 1e-4, "{kernels:?} {positions:?}: primed chunk");
        for t in 6..context {
            let step = model.forward_cached(&batch(t, t + 1), &mut cache).unwrap(); // (B, 1, V)
            for (r, row) in rows.iter().enumerate() {
                let d = max_diff(&step.i((r, 0)).unwrap().to_vec1::<f32>().unwrap(), &last_logits(&model, &row[..=t]));
                assert!(d < 1e-4, "{kernels:?} {positions:?}: row {r}, position {t}: {d}");
            }
        }
    }
}

#[test]
fn generator_past_the_context_matches_a_recompute_of_its_window() {
    let (tok, model) = model();
    let context = model.config().context;
    let mut g = Generator::new(&model, tok.bos(), &[1, 2, 3]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // The window is BOS + the last `w` tokens: it grows to the context, then restarts from
    // BOS + the last restart_keep(context) tokens.
    let mut w = 3;
    let mut restarts = 0;
    for step in 0..3 * context {
        let id = generate::sample_token(g.logits().unwrap(), SampleOptions::with_temperature(1.0), &mut rng) as u32;
        g.push(id).unwrap();
        if w + 1 == context {
            w = generate::restart_keep(context);
            restarts += 1;
        } else {
            w += 1;
        }
        let all = g.ids();
        let mut window = vec![tok.bos()];
        window.extend_from_slice(&all[all.len() - w..]);
        let d = max_diff(g.logits().unwrap(), &last_logits(&model, &window));
        assert!(d < 1e-4, "step {step}: window of {w} tokens, {d}");
    }
    assert!(restarts >= 2);
}

#[test]
fn greedy_picks_the_argmax_at_every_step() {
    let (tok, model) = model();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut g = Generator::new(&model, tok.bos(), &[5]).unwrap();
    let out = g.generate(12, SampleOptions::with_temperature(0.0), &mut rng, |_, _| Ok(())).unwrap();
    let mut ids = vec![tok.bos(), 5];
    for &id in &out.ids {
        let logits = last_logits(&model, &ids);
        // BOS is never sampled: the argmax over the other tokens.
        let argmax = (0..logits.len()).filter(|&i| i != tok.bos() as usize).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
        assert_eq!(id as usize, argmax);
        ids.push(id);
    }
    assert!(out.entropies.iter().all(|&h| h == 0.0), "greedy draws from a point mass");
}

#[test]
fn top_k_and_top_p_restrict_the_support() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37 % 50) as f32) * 0.13 - 2.0).collect();
    let mut order: Vec<usize> = (0..50).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top5: Vec<usize> = order[..5].to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let opts = SampleOptions { temperature: 2.0, top_k: Some(5), top_p: None };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let id = generate::sample_token(&logits, opts, &mut rng);
        assert!(top5.contains(&id), "top-k emitted {id}, outside {top5:?}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 5, "at T = 2 all five are drawn");

    let opts = SampleOptions { temperature: 1.0, top_k: None, top_p: Some(0.6) };
    let dist = generate::sampling_distribution(&logits, opts);
    let full = generate::sampling_distribution(&logits, SampleOptions::with_temperature(1.0));
    let kept_mass: f64 = full[..dist.len()].iter().map(|d| d.1).sum();
    let without_last: f64 = full[..dist.len() - 1].iter().map(|d| d.1).sum();
    assert!(kept_mass >= 0.6 && without_last < 0.6, "the smallest prefix reaching p");
    assert!((dist.iter().map(|d| d.1).sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(dist.iter().map(|d| d.0).collect::<Vec<_>>(), order[..dist.len()].to_vec());
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let (tok, model) = model();
    let run = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        generate::sample(&model, tok.bos(), &[3, 4], 40, SampleOptions::with_temperature(1.0), &mut rng).unwrap()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

/// Plain temperature sampling, which sorts only as far down the vocabulary as the draw goes,
/// draws what the sorted distribution draws on the same random number, consumes the same
/// numbers, and reports that distribution's entropy: on rows with many tied logits (ties go to
/// the lower id), masked tokens, and rows flat enough that the draw lands thousands deep.
#[test]
fn temperature_sampling_draws_as_the_sorted_distribution() {
    let mut gen = ChaCha8Rng::seed_from_u64(5);
    for case in 0..48 {
        let n = [2, 7, 300, 5000][case % 4];
        let spread = [0.05f32, 3.0, 30.0][case % 3];
        // Quantised to quarters: many exact ties.
        let mut logits: Vec<f32> = (0..n).map(|_| (gen.random_range(-1.0f32..1.0) * spread * 4.0).round() / 4.0).collect();
        for l in logits.iter_mut() {
            if gen.random_range(0..8) == 0 {
                *l = f32::NEG_INFINITY; // a masked token (BOS, padding rows)
            }
        }
        logits[0] = logits[0].max(0.0);
        let opts = SampleOptions::with_temperature([0.5, 1.0, 2.0][(case / 4) % 3]);
        let dist = generate::sampling_distribution(&logits, opts);
        let want_entropy = thermoformer::physics::thermo::entropy(&dist.iter().map(|d| d.1).collect::<Vec<_>>());
        let mut depths = Vec::new();
        for seed in 0..24 {
            let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(seed), ChaCha8Rng::seed_from_u64(seed));
            let (id, entropy) = generate::sample_with_entropy(&logits, opts, &mut a);
            let want = generate::draw(&dist, &mut b);
            assert_eq!(id, want, "case {case} (n {n}, spread {spread}, {opts:?}), seed {seed}");
            assert!((entropy - want_entropy).abs() <= 1e-9 * (1.0 + want_entropy), "case {case}: entropy {entropy} vs {want_entropy}");
            assert_eq!(a.random::<u64>(), b.random::<u64>(), "case {case}: the same random numbers consumed");
            depths.push(dist.iter().position(|d| d.0 == id).unwrap());
        }
        if n == 5000 && spread < 1.0 {
            assert!(depths.iter().any(|&d| d > 1400), "case {case}: the flat row's draws reach past the first chunks: {depths:?}");
        }
    }
}
