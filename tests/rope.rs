//! Rotary position embeddings: scores depend only on relative position, a full period is the
//! identity, and a rope model trains, checkpoints and decodes with its KV cache.

mod common;

use std::f64::consts::PI;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use thermoformer::config::Positions;
use thermoformer::model::KvCache;
use thermoformer::model::params::Params;
use thermoformer::model::rope::{self, Rope};
use thermoformer::ModelConfig;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (common::flat(a), common::flat(b));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// s_ij = q_i . k_j / sqrt(D) for rotated q, k `(B, H, T, D)` at positions offset.. : `(B, H, T, T)`.
fn scores(rope: &Rope, q: &Tensor, k: &Tensor, offset: usize) -> Tensor {
    let d = q.dims()[3] as f64;
    let (q, k) = (rope.apply_bhtd(q, offset).unwrap(), rope.apply_bhtd(k, offset).unwrap());
    (q.matmul(&k.t().unwrap()).unwrap() / d.sqrt()).unwrap()
}

#[test]
fn scores_depend_only_on_relative_position() {
    let (d, t) = (16, 12);
    let rope = Rope::new(d, 4096, DType::F32, &Device::Cpu).unwrap();
    let (q, k) = (randn(&[2, 3, t, d], 1), randn(&[2, 3, t, d], 2));
    let base = scores(&rope, &q, &k, 0);
    for shift in [1, 7, 100, 4096 - t] {
        let shifted = scores(&rope, &q, &k, shift);
        let diff = max_abs_diff(&base, &shifted);
        assert!(diff < 1e-5, "shift {shift}: scores moved by {diff}");
    }
    // Not trivially: the rotation does change q and k themselves, and the scores differ from the
    // unrotated ones.
    assert!(max_abs_diff(&rope.apply_bhtd(&q, 0).unwrap(), &rope.apply_bhtd(&q, 7).unwrap()) > 0.1);
    let plain = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    assert!(max_abs_diff(&base, &plain) > 0.1);
}

#[test]
fn both_layouts_rotate_alike() {
    let (b, t, h, d) = (2, 5, 3, 8);
    let rope = Rope::new(d, 16, DType::F32, &Device::Cpu).unwrap();
    let x = randn(&[b, t, h, d], 3); // (B, T, H, D)
    let via_bthd = rope.apply_bthd(&x, 4).unwrap().transpose(1, 2).unwrap();
    let via_bhtd = rope.apply_bhtd(&x.transpose(1, 2).unwrap().contiguous().unwrap(), 4).unwrap();
    assert!(max_abs_diff(&via_bthd, &via_bhtd) < 1e-6);
}

#[test]
fn a_full_period_is_the_identity_and_rotation_keeps_the_norm() {
    let d = 16;
    let freqs = rope::frequencies(d, rope::BASE);
    let x = randn(&[1, 1, 1, d], 4);
    let xs = common::flat(&x);
    for (m, w) in freqs.iter().enumerate() {
        // Pair m at a whole number of its periods 2 pi / omega_m comes back to itself ...
        for turns in [1.0, 3.0] {
            let table = Rope::at(&freqs, &[turns * 2.0 * PI / w], DType::F32, &Device::Cpu).unwrap();
            let y = common::flat(&table.apply_bhtd(&x, 0).unwrap());
            for i in [2 * m, 2 * m + 1] {
                assert!((y[i] - xs[i]).abs() < 1e-5, "pair {m}, {turns} turns: {} -> {}", xs[i], y[i]);
            }
            // ... while every pair keeps its modulus (a phase rotation).
            for p in 0..d / 2 {
                let r = |v: &[f32]| (v[2 * p].powi(2) + v[2 * p + 1].powi(2)).sqrt();
                assert!((r(&y) - r(&xs)).abs() < 1e-5);
            }
        }
        // Half a period is a sign flip of the pair.
        let half = Rope::at(&freqs, &[PI / w], DType::F32, &Device::Cpu).unwrap();
        let y = common::flat(&half.apply_bhtd(&x, 0).unwrap());
        assert!((y[2 * m] + xs[2 * m]).abs() < 1e-5 && (y[2 * m + 1] + xs[2 * m + 1]).abs() < 1e-5);
    }
    // With frequencies that are whole numbers, 2 pi is a common period: the identity on every pair.
    let table = Rope::at(&[1.0, 2.0, 5.0, 7.0], &[2.0 * PI], DType::F32, &Device::Cpu).unwrap();
    let x8 = randn(&[1, 1, 1, 8], 5);
    assert!(max_abs_diff(&table.apply_bhtd(&x8, 0).unwrap(), &x8) < 1e-5);
}

fn rope_model(context: usize) -> (ModelConfig, thermoformer::Gpt) {
    let cfg = ModelConfig { positions: Positions::Rope, context, ..ModelConfig::tiny(40) };
    let (_, model) = Params::init(&cfg, 0.3, 9, &Device::Cpu).unwrap();
    (cfg, model)
}

#[test]
fn a_rope_model_has_no_position_table_and_its_cache_matches_the_full_pass() {
    let (cfg, model) = rope_model(16);
    let (params, _) = Params::init(&cfg, 0.02, 1, &Device::Cpu).unwrap();
    let names: Vec<String> = params.tensors().into_keys().collect();
    assert!(!names.iter().any(|n| n.starts_with("pos_emb")), "{names:?}");
    let ids = common::random_ids(1, 16, 39, 39, 3);
    let full = model.forward(&ids).unwrap();
    let mut cache = KvCache::new();
    let first = model.forward_cached(&ids.narrow(1, 0, 6).unwrap(), &mut cache).unwrap();
    assert!(max_abs_diff(&first, &full.narrow(1, 0, 6).unwrap()) < 1e-4);
    for t in 6..16 {
        let step = model.forward_cached(&ids.narrow(1, t, 1).unwrap(), &mut cache).unwrap();
        let d = max_abs_diff(&step, &full.narrow(1, t, 1).unwrap());
        assert!(d < 1e-4, "position {t}: the cached pass differs by {d}");
    }
}

#[test]
fn rope_needs_an_even_head_width() {
    let cfg = ModelConfig { positions: Positions::Rope, n_head: 2, d_model: 6, ..ModelConfig::tiny(40) };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("--positions rope") && err.contains("even"), "{err}");
}

#[test]
fn train_positions_rope_checkpoints_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 4000);
    let out = tmp.path().join("run");
    let (corpus, out) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let mut flags = common::tiny_train_flags(corpus, out);
    flags.extend(["--positions", "rope"]);
    let o = common::run(&flags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("run/config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["positions"], "rope");
    let o = common::run(&["score", "--text", "First Citizen:", "--checkpoint", out, "--format", "jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Four steps leave the model near uniform: about ln V nats per token, not garbage from a
    // misread rotary table (V = the tokenizer's vocabulary, BOS included).
    let vocab = config["model"]["vocab_size"].as_f64().unwrap();
    let per_token = r["energy_per_token"].as_f64().unwrap();
    assert!((per_token / vocab.ln() - 1.0).abs() < 0.1, "{per_token} nats/token against ln V = {}", vocab.ln());
    // A resume may not change the position encoding.
    let mut again = common::tiny_train_flags(corpus, out);
    again.extend(["--resume", "--steps", "6", "--positions", "learned"]);
    common::assert_clean_error(&common::run(&again), 2, "--positions");
}

#[test]
fn distance_profile_of_uniform_attention() {
    // At a huge attention temperature every row is uniform over its keys: query i attends to
    // distance d <= i with weight 1/(i+1), so the mean attended distance over queries 0..T-1 is
    // mean_i(i/2) = (T-1)/4, and the weight at distance 0 is mean_i 1/(i+1).
    let (cfg, mut model) = rope_model(16);
    model.override_temperatures(Some(1e6), &[]).unwrap();
    let t = cfg.context;
    let ids = common::random_ids(3, t, 39, 39, 8);
    let targets = ids.clone();
    let batch = thermoformer::data::Batch { inputs: ids, targets };
    let profiles = thermoformer::physics::inspect::distance_profiles(&model, &[batch]).unwrap();
    assert_eq!(profiles.len(), cfg.n_layer * cfg.n_head);
    let w0: f64 = (0..t).map(|i| 1.0 / (i + 1) as f64).sum::<f64>() / t as f64;
    for p in &profiles {
        assert_eq!((p.mean_score.len(), p.mean_weight.len()), (t, t));
        assert!((p.mean_distance - (t - 1) as f64 / 4.0).abs() < 1e-3, "{}", p.mean_distance);
        assert!((p.mean_weight[0] - w0).abs() < 1e-4);
    }
}

#[test]
fn inspect_rope_prints_and_draws_the_distance_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::trained(tmp.path());
    let png = tmp.path().join("profile.png");
    let o = common::run(&["inspect", "--rope", "--checkpoint", ck.to_str().unwrap(), "--format", "json", "--windows", "4", "--png", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["positions"], "rope");
    let heads = v["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 2, "1 layer x 2 heads");
    assert_eq!(heads[0]["mean_score"].as_array().unwrap().len(), 16);
    common::assert_picture(&png, None, 0.02, 8);
    let table = common::run(&["inspect", "--rope", "--checkpoint", ck.to_str().unwrap(), "--windows", "4"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("s(d=0)") && text.contains("<d>"), "{text}");
    common::assert_clean_error(&common::run(&["inspect", "--rope", "--text", "hi", "--checkpoint", ck.to_str().unwrap()]), 2, "--text");
}
