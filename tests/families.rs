//! `thermoformer import` of the Llama, Qwen2, Qwen3, GPT-NeoX (Pythia) and GPT-Neo (TinyStories)
//! families against transformers itself: `scripts/make_family_fixtures.py` saved a small random
//! model of each with `save_pretrained`, and transformers' per-token energies beside it, in
//! tests/fixtures/families/.
//!
//! The goldens are what catch a wrong transform; each of these makes at least one family miss
//! its energies by far more than 1e-4: NeoX's per-head qkv split done as a plain split (both
//! Pythias), the rotary layout left rotate-half (every rotary family), `rotary_pct` ignored
//! (Pythia), the parallel residual ignored or forced (the two Pythias), `rope_theta` ignored
//! (llama's 500, qwen2's 1000, pythia-sequential's 1000), the local window ignored (gpt-neo, whose
//! lines are longer than its window of 8), GPT-Neo's unscaled scores divided by sqrt(d), and kv
//! heads shared wrongly (tiled instead of grouped: llama, qwen2, qwen3).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use thermoformer::checkpoint;
use thermoformer::import::{self, ImportRequest};
use thermoformer::kernels::Kernels;
use thermoformer::model::KvCache;
use thermoformer::physics::score::{self, ScoreOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(name)
}

#[derive(serde::Deserialize)]
struct Expected {
    start: u32,
    lines: Vec<String>,
    ids: Vec<Vec<u32>>,
    energies: Vec<Vec<f64>>,
}

fn expected(name: &str) -> Expected {
    serde_json::from_slice(&std::fs::read(fixture(name).join("expected.json")).unwrap()).unwrap()
}

fn import_to(source: &Path, out: &Path) -> anyhow::Result<import::ImportReport> {
    let req = ImportRequest { source: source.to_path_buf(), out: out.to_path_buf(), meta: None, tokenizer: None, overwrite: false };
    import::import(&req)
}

/// Import `name`, check the tokenizer and start against transformers', and the energies on both
/// kernel paths to 1e-4; returns the worst difference and the run's directory.
fn assert_matches(name: &str) -> (f64, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    import_to(&fixture(name), &run).unwrap();
    let e = expected(name);
    let mut loaded = checkpoint::load(&run, &Device::Cpu).unwrap();
    let tok = loaded.tokenizer.clone();
    assert_eq!(tok.bos(), e.start, "{name}: start id");
    for (line, ids) in e.lines.iter().zip(&e.ids) {
        assert_eq!(&tok.encode(line).unwrap(), ids, "{name}: token ids of {line:?}");
    }
    let mut worst = 0f64;
    for kernels in [Kernels::Fused, Kernels::Composed] {
        loaded.model.set_kernels(kernels);
        let scored = score::score_ids(&loaded.model, &e.ids, tok.bos(), &ScoreOptions::default()).unwrap();
        assert_eq!(scored.len(), e.energies.len());
        for (s, want) in scored.iter().zip(&e.energies) {
            assert_eq!(s.energies.len(), want.len());
            for (t, (g, w)) in s.energies.iter().zip(want).enumerate() {
                let diff = (g - w).abs();
                worst = worst.max(diff);
                assert!(diff <= 1e-4, "{name} ({kernels:?}): energy of token {t}: {g} against transformers' {w}");
            }
        }
    }
    println!("{name}: worst per-token energy difference from transformers {worst:.2e} nats");
    (worst, tmp)
}

#[test]
fn llama_with_grouped_kv_heads_theta_and_llama3_scaling_matches_transformers() {
    let (_, tmp) = assert_matches("llama");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config.model;
    assert_eq!((cfg.n_head, cfg.kv_heads(), cfg.rope_theta), (4, 2, 500.0));
    assert!(cfg.rope_scaling.is_some() && !cfg.tied_head);
}

#[test]
fn qwen2_with_qkv_biases_and_no_bos_matches_transformers() {
    let (_, tmp) = assert_matches("qwen2");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config.model;
    assert!(cfg.has_qkv_bias() && !cfg.bias && cfg.tied_head, "{cfg:?}");
}

#[test]
fn qwen3_with_head_dim_and_qk_norm_matches_transformers() {
    let (_, tmp) = assert_matches("qwen3");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config.model;
    assert_eq!((cfg.head_dim(), cfg.kv_heads(), cfg.qk_norm), (12, 1, true));
}

#[test]
fn pythia_with_parallel_residual_half_rotary_and_padded_vocab_matches_transformers() {
    let (_, tmp) = assert_matches("pythia-parallel");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config.model;
    assert!(cfg.parallel_residual && cfg.rotary_dims() == 4 && cfg.real_vocab_size == Some(300), "{cfg:?}");
}

#[test]
fn pythia_sequential_from_the_hubs_older_config_keys_matches_transformers() {
    let (_, tmp) = assert_matches("pythia-sequential");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config.model;
    assert!(!cfg.parallel_residual && cfg.rotary_dims() == 2 && cfg.rope_theta == 1000.0, "{cfg:?}");
}

#[test]
fn gpt_neo_with_a_local_window_and_unscaled_scores_matches_transformers() {
    let (_, tmp) = assert_matches("gpt-neo");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config.model;
    assert_eq!(cfg.windows, vec![None, Some(8)]);
    assert_eq!(cfg.score_scale(), 1.0);
    // The line the window matters for is longer than it.
    assert!(expected("gpt-neo").ids.iter().any(|ids| ids.len() > 12));
}

/// KV-cached decoding, one token at a time, gives the last rows of the whole forward pass on
/// every family: the grouped keys, the window and the rotary offsets hold in the cache too.
#[test]
fn cached_decoding_matches_the_full_forward_on_every_family() {
    for name in ["llama", "qwen2", "qwen3", "pythia-parallel", "pythia-sequential", "gpt-neo"] {
        let tmp = tempfile::tempdir().unwrap();
        import_to(&fixture(name), &tmp.path().join("run")).unwrap();
        let loaded = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap();
        let e = expected(name);
        let ids: Vec<u32> = std::iter::once(e.start).chain(e.ids[1].iter().copied()).collect();
        let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let full = loaded.model.forward(&x).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let mut cache = KvCache::new();
        // A prompt of 3, then one token at a time.
        let mut rows = loaded.model.forward_cached(&x.narrow(1, 0, 3).unwrap(), &mut cache).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for t in 3..ids.len() {
            let step = loaded.model.forward_cached(&x.narrow(1, t, 1).unwrap(), &mut cache).unwrap();
            rows.extend(step.squeeze(0).unwrap().to_vec2::<f32>().unwrap());
        }
        for (t, (a, b)) in rows.iter().zip(&full).enumerate() {
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{name}: cached logits at position {t} differ by {worst}");
        }
    }
}

/// A local head's Boltzmann ensemble is its window: its weights vanish and its energies are
/// +inf outside it, and ln Z sums over the window only.
#[test]
fn a_local_heads_ensemble_is_its_window() {
    let tmp = tempfile::tempdir().unwrap();
    import_to(&fixture("gpt-neo"), &tmp.path().join("run")).unwrap();
    let loaded = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap();
    let e = expected("gpt-neo");
    let ids: Vec<u32> = std::iter::once(e.start).chain(e.ids[1].iter().copied()).collect();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let (logits, stats) = loaded.model.forward_with_stats(&x).unwrap();
    // Every head's thermodynamics is finite, and alpha is the Boltzmann distribution of the
    // energies it saw: H = beta <E> + ln Z, row by row.
    for s in thermoformer::physics::thermo::head_summaries(&stats).unwrap() {
        let values = [s.entropy, s.ln_z, s.mean_energy, s.heat_capacity, s.normalized_entropy];
        assert!(values.iter().all(|v| v.is_finite()), "head {}.{}: {s:?}", s.layer, s.head);
        assert!(s.identity_residual < 1e-4, "head {}.{}: residual {}", s.layer, s.head, s.identity_residual);
    }
    let plain = loaded.model.forward(&x).unwrap();
    let gap = (logits - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(gap < 1e-5, "the stats path's logits differ by {gap}");
    let t = ids.len();
    for (layer, window) in [(0usize, t), (1, 8)] {
        let alpha = stats[layer].alpha.squeeze(0).unwrap().to_vec3::<f32>().unwrap(); // (H, T, T)
        let energy = stats[layer].energy.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        for (a_h, e_h) in alpha.iter().zip(&energy) {
            for i in 0..t {
                for j in 0..t {
                    let seen = j <= i && i - j < window;
                    assert_eq!(e_h[i][j].is_finite(), seen, "layer {layer}: energy of key {j} at query {i}");
                    if !seen {
                        assert_eq!(a_h[i][j], 0.0, "layer {layer}: weight of unseen key {j} at query {i}");
                    }
                }
                let sum: f32 = a_h[i].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5);
            }
        }
    }
}

/// The same weights as one model.safetensors, as shards with their index, and as a torch
/// `pytorch_model.bin` import to the same tensors.
#[test]
fn sharded_and_torch_bin_sources_import_to_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for name in ["llama", "llama-sharded", "llama-bin"] {
        let out = tmp.path().join(name);
        import_to(&fixture(name), &out).unwrap();
        let params = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        runs.push((name, params));
    }
    let (_, single) = &runs[0];
    for (name, other) in &runs[1..] {
        assert_eq!(other.len(), single.len(), "{name}: tensor count");
        for (k, t) in single {
            let o = other.get(k).unwrap_or_else(|| panic!("{name} lacks {k}"));
            let diff = (t - o).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name}: {k}");
        }
    }
}

/// A copy of a fixture to break.
fn broken_copy(name: &str, tmp: &Path) -> PathBuf {
    let dst = tmp.join(format!("{name}-broken"));
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn import_error(source: &Path, tmp: &Path) -> String {
    let err = import_to(source, &tmp.join("out")).expect_err("the import should fail");
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn bad_sources_get_one_line_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    let dir = broken_copy("llama", t);
    edit_config(&dir, |v| v["model_type"] = "gemma2".into());
    let msg = import_error(&dir, t);
    assert!(msg.contains("unknown model_type \"gemma2\"") && msg.contains("llama, qwen2, qwen3, gpt_neox, gpt_neo"), "{msg}");

    let dir = broken_copy("qwen2", &t.join("a"));
    edit_config(&dir, |v| {
        v["use_sliding_window"] = true.into();
        v["sliding_window"] = 4.into();
    });
    let msg = import_error(&dir, t);
    assert!(msg.contains("use_sliding_window") && msg.contains("does not implement"), "{msg}");

    let dir = broken_copy("llama", &t.join("b"));
    edit_config(&dir, |v| v["rope_parameters"]["rope_type"] = "yarn".into());
    let msg = import_error(&dir, t);
    assert!(msg.contains("\"yarn\""), "{msg}");

    let dir = broken_copy("llama-sharded", &t.join("c"));
    std::fs::remove_file(dir.join("model-00002-of-00004.safetensors")).unwrap();
    let msg = import_error(&dir, t);
    assert!(msg.contains("shard model-00002-of-00004.safetensors") && msg.contains("missing"), "{msg}");

    let dir = broken_copy("llama-bin", &t.join("d"));
    std::fs::write(dir.join("pytorch_model.bin"), b"this is not a torch file").unwrap();
    let msg = import_error(&dir, t);
    assert!(msg.contains("pytorch_model.bin") && msg.contains("not a torch state dict"), "{msg}");

    // A tokenizer with more tokens than the embedding has rows.
    let dir = broken_copy("qwen3", &t.join("e"));
    edit_config(&dir, |v| v["vocab_size"] = 200.into());
    let msg = import_error(&dir, t);
    assert!(msg.contains("tokenizer") && msg.contains("300 tokens") && msg.contains("200 rows"), "{msg}");
}
