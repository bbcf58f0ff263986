//! `thermoformer import` against implementations nobody here wrote: Hugging Face transformers'
//! GPT2LMHeadModel and a float64 NumPy forward pass of nanoGPT's model, whose outputs
//! `scripts/make_import_fixtures.py` saved beside the models in tests/fixtures/import/.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use thermoformer::checkpoint;
use thermoformer::import::{self, ImportRequest};
use thermoformer::kernels::Kernels;
use thermoformer::physics::score::{self, ScoreOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

#[derive(serde::Deserialize)]
struct Expected {
    start: u32,
    lines: Vec<String>,
    ids: Vec<Vec<u32>>,
    energies: Vec<Vec<f64>>,
    logits: Vec<Vec<Vec<f64>>>,
}

fn expected(dir: &str) -> Expected {
    serde_json::from_slice(&std::fs::read(fixture(dir).join("expected.json")).unwrap()).unwrap()
}

/// Import a fixture into `out` through the library.
fn import_fixture(source: &Path, meta: Option<PathBuf>, out: &Path) -> import::ImportReport {
    let req = ImportRequest { source: source.to_path_buf(), out: out.to_path_buf(), meta, tokenizer: None, overwrite: false };
    import::import(&req).unwrap()
}

/// The imported run's tokenizer gives the reference's ids and start, and on both kernel paths its
/// logits match the reference to 1e-4 and `score`'s energies to 1e-4 relative.
fn assert_matches(run: &Path, e: &Expected) {
    let mut loaded = checkpoint::load(run, &Device::Cpu).unwrap();
    let tok = loaded.tokenizer.clone();
    assert_eq!(tok.bos(), e.start, "start id");
    for (line, ids) in e.lines.iter().zip(&e.ids) {
        assert_eq!(&tok.encode(line).unwrap(), ids, "token ids of {line:?}");
    }
    for kernels in [Kernels::Fused, Kernels::Composed] {
        loaded.model.set_kernels(kernels);
        assert!(!e.logits.is_empty() && e.ids.len() == e.energies.len() && e.ids.len() == e.lines.len());
    for (logits, ids) in e.logits.iter().zip(&e.ids) {
            let input: Vec<u32> = std::iter::once(e.start).chain(ids.iter().copied()).collect();
            let x = Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let got = loaded.model.forward(&x).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(got.len(), logits.len());
            for (t, (g, w)) in got.iter().zip(logits).enumerate() {
                assert_eq!(g.len(), w.len(), "vocabulary at position {t}");
                let worst = g.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-4, "{kernels:?}: logits at position {t} differ by {worst}");
            }
        }
        let scored = score::score_ids(&loaded.model, &e.ids, tok.bos(), &ScoreOptions::default()).unwrap();
        for (s, want) in scored.iter().zip(&e.energies) {
            assert_eq!(s.energies.len(), want.len());
            for (t, (g, w)) in s.energies.iter().zip(want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{kernels:?}: energy of token {t}: {g} against {w}");
            }
        }
    }
}

#[test]
fn gpt2_with_tied_head_and_tanh_gelu_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let r = import_fixture(&fixture("gpt2-tied"), None, &tmp.path().join("run"));
    assert!(r.bias && r.tied_head && r.start == "<|endoftext|>", "{r:?}");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config;
    assert_eq!(cfg.model.activation, thermoformer::config::Activation::GeluTanh);
    assert_matches(&tmp.path().join("run"), &expected("gpt2-tied"));
}

#[test]
fn gpt2_with_untied_head_exact_gelu_and_its_own_epsilon_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let r = import_fixture(&fixture("gpt2-untied"), None, &tmp.path().join("run"));
    assert!(r.bias && !r.tied_head, "{r:?}");
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config;
    assert_eq!((cfg.model.activation, cfg.model.ln_eps), (thermoformer::config::Activation::GeluErf, 1e-6));
    assert_matches(&tmp.path().join("run"), &expected("gpt2-untied"));
}

#[test]
fn nanogpt_with_bias_and_the_compile_prefix_matches_a_float64_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let r = import_fixture(&fixture("nanogpt-bias/ckpt.pt"), Some(fixture("meta.pkl")), &tmp.path().join("run"));
    assert!(r.bias && r.tied_head && r.vocab_size == 65 && r.tokenizer_vocab_size == 65, "{r:?}");
    assert_matches(&tmp.path().join("run"), &expected("nanogpt-bias"));
}

#[test]
fn nanogpt_without_bias_and_with_a_padded_vocabulary_matches_a_float64_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let r = import_fixture(&fixture("nanogpt-nobias/ckpt.pt"), Some(fixture("meta.pkl")), &tmp.path().join("run"));
    assert!(!r.bias && r.vocab_size == 72 && r.tokenizer_vocab_size == 65, "{r:?}");
    assert_matches(&tmp.path().join("run"), &expected("nanogpt-nobias"));
}

#[test]
fn cached_generation_matches_the_full_pass_with_biases_and_an_untied_head() {
    let tmp = tempfile::tempdir().unwrap();
    import_fixture(&fixture("gpt2-untied"), None, &tmp.path().join("run"));
    let loaded = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap();
    let e = expected("gpt2-untied");
    let ids: Vec<u32> = std::iter::once(e.start).chain(e.ids[1].iter().copied()).collect();
    let full = loaded.model.forward(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap().squeeze(0).unwrap();
    let mut cache = thermoformer::model::KvCache::new();
    for (t, &id) in ids.iter().enumerate() {
        let step = loaded.model.forward_cached(&Tensor::new(&[id], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap();
        let (a, b) = (step.squeeze(0).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap(), full.get(t).unwrap().to_vec1::<f32>().unwrap());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "position {t}: cached logits differ by {worst}");
    }
}

#[test]
fn padding_rows_are_never_sampled() {
    // nanogpt-nobias pads 65 tokens to 72 rows; push the padding's logits up so that sampling
    // would pick them if they were not masked.
    let tmp = tempfile::tempdir().unwrap();
    import_fixture(&fixture("nanogpt-nobias/ckpt.pt"), Some(fixture("meta.pkl")), &tmp.path().join("run"));
    let cfg = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap().config;
    assert_eq!(cfg.model.real_vocab_size, Some(65));
    let mut tensors = checkpoint::read_model_tensors(&tmp.path().join("run"), &Device::Cpu).unwrap();
    let emb = tensors["tok_emb.weight"].clone();
    let boosted = Tensor::cat(&[emb.narrow(0, 0, 65).unwrap(), (emb.narrow(0, 65, 7).unwrap() * 50.0).unwrap()], 0).unwrap();
    tensors.insert("tok_emb.weight".into(), boosted);
    let model = thermoformer::model::params::Params::model_from_tensors(&cfg.model, tensors, &Device::Cpu).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let opts = thermoformer::physics::generate::SampleOptions::with_temperature(1.0);
    let ids = thermoformer::physics::generate::sample(&model, 0, &[], 200, opts, &mut rng).unwrap();
    assert!(ids.iter().all(|&id| id < 65), "a padding id was sampled: {:?}", ids.iter().find(|&&id| id >= 65));
}

#[test]
fn imported_heads_start_at_unit_temperature_and_take_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    import_fixture(&fixture("gpt2-tied"), None, &tmp.path().join("run"));
    let mut loaded = checkpoint::load(&tmp.path().join("run"), &Device::Cpu).unwrap();
    assert!(loaded.model.temperatures().unwrap().iter().flatten().all(|&t| t == 1.0));
    let e = expected("gpt2-tied");
    let before = score::score_ids(&loaded.model, &e.ids[..1], e.start, &ScoreOptions::default()).unwrap()[0].energy();
    loaded.model.override_temperatures(None, &[thermoformer::model::HeadTemperature { layer: 1, head: 2, temperature: 0.25 }]).unwrap();
    let after = score::score_ids(&loaded.model, &e.ids[..1], e.start, &ScoreOptions::default()).unwrap()[0].energy();
    assert!((before - after).abs() > 1e-4, "a head at T = 0.25 changes the energy: {before} -> {after}");
}

// ---------------------------------------------------------------- every command on imports

/// Import through the binary, checking its JSON report.
fn cli_import(tmp: &Path, source: &Path, meta: Option<&Path>, name: &str) -> PathBuf {
    let out = tmp.join(name);
    let mut args = vec!["import", source.to_str().unwrap(), "--out", out.to_str().unwrap(), "--format", "json"];
    if let Some(meta) = meta {
        args.extend(["--meta", meta.to_str().unwrap()]);
    }
    let o = common::run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["n_layer"], 2);
    out
}

fn ok(args: &[&str]) -> String {
    let o = common::run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn every_command_runs_on(run: &Path, tmp: &Path) {
    let ck = run.to_str().unwrap();
    let corpus = common::small_corpus(tmp, 20_000);
    let corpus = corpus.to_str().unwrap();

    // score --words: the words of the line, and their energies add up to the line's.
    let line = "ROMEO: I will not.";
    let out = ok(&["score", "--checkpoint", ck, "--text", line, "--words", "--format", "jsonl"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let words: Vec<&str> = v["word_energies"].as_array().unwrap().iter().map(|w| w["word"].as_str().unwrap()).collect();
    assert_eq!(words, line.split(' ').collect::<Vec<_>>());
    let sum: f64 = v["word_energies"].as_array().unwrap().iter().map(|w| w["energy"].as_f64().unwrap()).sum();
    assert!((sum - v["energy"].as_f64().unwrap()).abs() < 1e-6, "{sum} against {}", v["energy"]);
    let bits = v["word_energies"][0]["bits"].as_f64().unwrap() * std::f64::consts::LN_2;
    assert!((bits - v["word_energies"][0]["energy"].as_f64().unwrap()).abs() < 1e-9);
    let csv = ok(&["score", "--checkpoint", ck, "--text", line, "--words", "--format", "csv"]);
    assert_eq!(csv.lines().count(), 1 + words.len(), "{csv}");
    let table = ok(&["score", "--checkpoint", ck, "--text", line, "--words"]);
    assert!(table.contains("bits") && table.contains("ROMEO:"), "{table}");

    let text = ok(&["generate", "--checkpoint", ck, "--tokens", "12", "--seed", "3"]);
    assert!(!text.trim().is_empty(), "{text:?}");

    // Position 0 is the model's start, and only position 0 (a nanoGPT start is its newline).
    let out = ok(&["inspect", "--checkpoint", ck, "--text", "a\nb", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let loaded = checkpoint::load(run, &Device::Cpu).unwrap();
    let start = loaded.tokenizer.token_str(loaded.tokenizer.bos()).unwrap();
    let tokens: Vec<&str> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.first().copied(), Some(start.as_str()));
    assert_eq!(tokens[1..].concat(), "a\nb");

    // inspect picks layers and heads.
    let png = tmp.join("maps.png");
    let out = ok(&["inspect", "--checkpoint", ck, "--text", "ROMEO: I will", "--layers", "1", "--heads", "0,2", "--format", "json", "--png", png.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let heads: Vec<(u64, u64)> = v["heads"].as_array().unwrap().iter().map(|h| (h["layer"].as_u64().unwrap(), h["head"].as_u64().unwrap())).collect();
    assert_eq!(heads, vec![(1, 0), (1, 2)]);
    common::assert_picture(&png, None, 0.01, 3);
    let bad = common::run(&["inspect", "--checkpoint", ck, "--text", "ROMEO", "--layers", "2"]);
    common::assert_clean_error(&bad, 2, "--layers 2");

    let out = ok(&["inspect", "--checkpoint", ck, "--sweep", "0.5,1,2", "--corpus", corpus, "--windows", "2", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), 3);
    let no_corpus = common::run(&["inspect", "--checkpoint", ck, "--sweep", "1"]);
    common::assert_clean_error(&no_corpus, 1, "--corpus");

    // The physics lab on the family's own shape: every head's response and phase peak, chi as
    // the finite difference of `score --head-temperature` (head 1.0), and E as score's.
    let lab = ok(&["inspect", "--checkpoint", ck, "--text", line, "--response", "--phase", "--layers", "1", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(lab.trim()).unwrap();
    for h in v["heads"].as_array().unwrap() {
        for key in ["susceptibility", "ablated_hot", "ablated_cold", "t_star", "c_star", "sink", "entropy_slope"] {
            assert!(h[key].as_f64().is_some_and(f64::is_finite), "{key} of {h}");
        }
    }
    let energy = |t: f64| -> f64 {
        let flag = format!("1.0={t}");
        let out = ok(&["score", "--checkpoint", ck, "--text", line, "--format", "jsonl", "--head-temperature", &flag]);
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["energy"].as_f64().unwrap()
    };
    let t = v["heads"][0]["temperature"].as_f64().unwrap();
    assert!((energy(t) - v["energy"].as_f64().unwrap()).abs() < 1e-4, "inspect's E is score's");
    let d = 0.02;
    let fd = (energy(t * f64::exp(d)) - energy(t * f64::exp(-d))) / (2.0 * d);
    let chi = v["heads"][0]["susceptibility"].as_f64().unwrap();
    println!("{ck}: head 1.0 chi {chi:.5}, finite difference of score {fd:.5}");
    assert!((chi - fd).abs() < 3e-3 + 2e-2 * fd.abs(), "head 1.0: chi {chi}, finite difference of score {fd}");
    let png = tmp.join("phase.png");
    let out = ok(&["inspect", "--checkpoint", ck, "--response", "--phase", "--corpus", corpus, "--windows", "1", "--layers", "0", "--heads", "0", "--format", "json", "--png", png.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["heads"].as_array().unwrap().len(), 1);
    assert!(v["heads"][0]["ablated_hot"].as_f64().is_some() && v["phase"]["heads"][0]["t_star"].as_f64().is_some(), "{v}");
    common::assert_picture(&png, None, 0.01, 3);

    let out = ok(&["calibrate", "--checkpoint", ck, "--corpus", corpus, "--windows", "2", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["calibration"]["t_star"].as_f64().unwrap() > 0.0);

    let rl_out = tmp.join("rl");
    let out = ok(&[
        "rl", "--checkpoint", ck, "--out", rl_out.to_str().unwrap(), "--reward", "regex:[aeiou]", "--steps", "2", "--batch-size", "2",
        "--tokens", "4", "--json", "--no-progress",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["after"]["kl"].as_f64().is_some());
    ok(&["score", "--checkpoint", rl_out.to_str().unwrap(), "--text", line]);

    // Fine-tuning starts from the imported weights: its first evaluation is theirs.
    let tuned = tmp.join("tuned");
    let out = ok(&[
        "train", "--init-from", ck, "--corpus", corpus, "--out", tuned.to_str().unwrap(), "--steps", "2", "--batch-size", "2",
        "--eval-every", "1", "--eval-batches", "1", "--sample-tokens", "0", "--no-progress", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["steps"], 2);
    let tuned_run = checkpoint::load(&tuned, &Device::Cpu).unwrap();
    let source = checkpoint::load(run, &Device::Cpu).unwrap();
    assert_eq!(tuned_run.config.model, source.config.model);
    // Two steps in the warmup (lr 1e-5, 2e-5) move no weight far from the source's; a fresh
    // initialisation would be ~0.1 away.
    let (a, b) = (checkpoint::read_model_tensors(&tuned, &Device::Cpu).unwrap(), checkpoint::read_model_tensors(run, &Device::Cpu).unwrap());
    let w = "blocks.0.attn.qkv.weight";
    let moved = (&a[w] - &b[w]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved > 0.0 && moved < 1e-3, "the fine-tuned weights start from the source's: moved {moved}");
    assert_eq!(tuned_run.config.train.init_from.as_deref(), Some(run));
    let bad = common::run(&["train", "--init-from", ck, "--corpus", corpus, "--out", tmp.join("t2").to_str().unwrap(), "--layers", "3"]);
    common::assert_clean_error(&bad, 2, "drop --layers");
}

#[test]
fn every_command_runs_on_an_imported_gpt2() {
    let tmp = tempfile::tempdir().unwrap();
    let run = cli_import(tmp.path(), &fixture("gpt2-tied"), None, "gpt2");
    every_command_runs_on(&run, tmp.path());
}

/// The families' own shapes through every command: grouped kv heads with llama3 rotary scaling
/// (Llama), q/k norms on one kv head (Qwen3), partial rotary with the parallel residual (Pythia),
/// and local windows with unscaled scores (GPT-Neo).
#[test]
fn every_command_runs_on_every_imported_family() {
    for family in ["llama", "qwen3", "pythia-parallel", "gpt-neo"] {
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(family);
        let run = cli_import(tmp.path(), &src, None, family);
        every_command_runs_on(&run, tmp.path());
    }
}

#[test]
fn every_command_runs_on_an_imported_nanogpt_char_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = cli_import(tmp.path(), &fixture("nanogpt-bias/ckpt.pt"), Some(&fixture("meta.pkl")), "nanogpt");
    every_command_runs_on(&run, tmp.path());
}

// ---------------------------------------------------------------- bad sources

fn import_args<'a>(src: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["import", src, "--out", out]
}

/// A copy of the GPT-2 fixture directory whose tensors `edit` changed.
fn edited_gpt2(tmp: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) -> PathBuf {
    let dir = tmp.join("edited");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("gpt2-tied").join(f), dir.join(f)).unwrap();
    }
    let mut tensors = candle_core::safetensors::load(fixture("gpt2-tied").join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn an_unknown_model_type_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_gpt2(tmp.path(), |_| {});
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"gpt2\"", "\"mamba\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let out = tmp.path().join("run");
    common::assert_clean_error(&common::run(&import_args(dir.to_str().unwrap(), out.to_str().unwrap())), 2, "unknown model_type \"mamba\"");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn a_missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_gpt2(tmp.path(), |t| {
        let key = t.keys().find(|k| k.ends_with("h.1.mlp.c_fc.weight")).unwrap().clone();
        t.remove(&key);
    });
    let out = tmp.path().join("run");
    common::assert_clean_error(&common::run(&import_args(dir.to_str().unwrap(), out.to_str().unwrap())), 1, "tensor h.1.mlp.c_fc.weight is missing");
}

#[test]
fn a_misshapen_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_gpt2(tmp.path(), |t| {
        let key = t.keys().find(|k| k.ends_with("h.0.ln_2.bias")).unwrap().clone();
        t.insert(key, Tensor::zeros(31, candle_core::DType::F32, &Device::Cpu).unwrap());
    });
    let out = tmp.path().join("run");
    common::assert_clean_error(&common::run(&import_args(dir.to_str().unwrap(), out.to_str().unwrap())), 1, "tensor h.0.ln_2.bias has shape [31]");
}

#[test]
fn a_pickle_that_is_not_a_nanogpt_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    // A torch file without model_args, a plain pickle, and bytes that are no pickle at all.
    let other = fixture("not-nanogpt.pt");
    common::assert_clean_error(&common::run(&import_args(other.to_str().unwrap(), out)), 1, "not a nanoGPT checkpoint: it has no model_args");
    let meta = fixture("meta.pkl");
    common::assert_clean_error(&common::run(&import_args(meta.to_str().unwrap(), out)), 1, "not a torch zip archive");
    let junk = tmp.path().join("ckpt.pt");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    common::assert_clean_error(&common::run(&import_args(junk.to_str().unwrap(), out)), 1, "not a nanoGPT checkpoint");
    // A checkpoint with no tokenizer at all.
    let ckpt = fixture("nanogpt-bias/ckpt.pt");
    common::assert_clean_error(&common::run(&import_args(ckpt.to_str().unwrap(), out)), 2, "pass --meta");
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let ckpt = fixture("nanogpt-bias/ckpt.pt");
    let bpe = fixture("gpt2-tied/tokenizer.json");
    let o = common::run(&["import", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap(), "--tokenizer", bpe.to_str().unwrap()]);
    common::assert_clean_error(&o, 1, "has 300 tokens but the model's embedding has 65 rows");
}

#[test]
fn an_existing_out_needs_overwrite_and_keeps_its_run_until_then() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let src = fixture("gpt2-tied");
    let args = import_args(src.to_str().unwrap(), out.to_str().unwrap());
    assert!(common::run(&args).status.success());
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    common::assert_clean_error(&common::run(&args), 2, "pass --overwrite");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before, "the run is untouched");
    let mut again = args.clone();
    again.push("--overwrite");
    assert!(common::run(&again).status.success());
}

/// A copy of the fixture `src` in `dir` with its config.json's `key` set to `value`.
fn with_config_field(src: &Path, dir: &Path, key: &str, value: serde_json::Value) -> std::path::PathBuf {
    let out = dir.join(src.file_name().unwrap());
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    let path = out.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
    out
}

#[test]
fn a_bad_config_is_named_in_the_sources_own_fields() {
    // Each family's head count set to one that does not divide its width (or its key/value
    // heads): the error names the
    // fields of that config.json, not train's flags. Mutation caught: validate() (the flags'
    // spelling) in place of validate_as.
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cases = [
        ("import/gpt2-tied", "n_head", "`n_head` 5 does not divide `n_embd`"),
        // (Llama and Qwen configs give head_dim, so the grouping is what breaks.)
        ("families/llama", "num_attention_heads", "must divide `num_attention_heads` 5"),
        ("families/qwen2", "num_attention_heads", "must divide `num_attention_heads` 5"),
        ("families/pythia-parallel", "num_attention_heads", "`num_attention_heads` 5 does not divide `hidden_size`"),
        ("families/gpt-neo", "num_heads", "`num_heads` 5 does not divide `hidden_size`"),
    ];
    for (k, (fixture, key, needle)) in cases.iter().enumerate() {
        let src = with_config_field(&root.join(fixture), &tmp.path().join(k.to_string()), key, 5.into());
        let out = common::run(&["import", src.to_str().unwrap(), "--out", tmp.path().join(format!("run{k}")).to_str().unwrap()]);
        common::assert_clean_error(&out, 1, needle);
        let (_, stderr) = common::status_and_stderr(&out);
        assert!(!stderr.contains("--"), "{fixture}: no train flag in {stderr}");
    }
    // A run directory whose config.json was edited: its own field names.
    let run = tmp.path().join("run-edited");
    let o = common::run(&["import", root.join("import/gpt2-tied").to_str().unwrap(), "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = run.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["model"]["n_head"] = 5.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = common::run(&["score", "--checkpoint", run.to_str().unwrap(), "--text", "hello"]);
    common::assert_clean_error(&out, 1, "`n_head` 5 does not divide `d_model`");
}
