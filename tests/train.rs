//! End-to-end training through the library: the loss goes down, metrics and checkpoints are
//! written, a resumed run continues exactly where an uninterrupted one would be.

mod common;

use std::path::Path;

use candle_core::Device;
use thermoformer::checkpoint;
use thermoformer::train::{self, Metrics};
use thermoformer::TrainOptions;

use common::{small_run_options as options, train_request as request};

fn metrics(dir: &Path) -> Vec<Metrics> {
    std::fs::read_to_string(dir.join(checkpoint::METRICS))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_short_run_lowers_the_loss_and_writes_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 40_000);
    let out = tmp.path().join("run");
    let opts = TrainOptions { eval_every: Some(50), ..options(&corpus, 150) };
    let report = train::train(&request(opts, &out, false), &Device::Cpu).unwrap();
    assert_eq!(report.steps, 150);
    let m = metrics(&out);
    assert_eq!(m.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 50, 100, 150]);
    let (first, last) = (m[0].val_ce, m[3].val_ce);
    let vocab = checkpoint::load(&out, &Device::Cpu).unwrap().tokenizer.vocab_size() as f64;
    assert!((first - vocab.ln()).abs() < 0.5, "an untrained model is near uniform: {first} vs ln {vocab}");
    assert!(last < first - 1.2, "val CE went from {first} to {last}");
    assert!(m[3].train_loss.unwrap() < m[1].train_loss.unwrap());
    assert!(m[3].val_ce_bos > m[3].val_ce, "the first token, predicted from BOS alone, costs more than the rest");
    assert!(m[1..].iter().all(|r| r.tokens_per_sec.unwrap() > 0.0 && r.lr > 0.0));
    assert!(m[3].val_tokens > m[2].val_tokens, "the last evaluation covers the whole validation split");
    for f in [checkpoint::CONFIG, checkpoint::TOKENIZER, checkpoint::MODEL, checkpoint::OPTIMIZER, checkpoint::STATE] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let loaded = checkpoint::load(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded.config.train.steps, 150);
}

#[test]
fn label_smoothing_and_learned_temperature_train() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 40_000);
    let out = tmp.path().join("run");
    let opts = TrainOptions { label_smoothing: Some(0.1), learn_temperature: Some(true), attn_temperature: Some(2.0), ..options(&corpus, 150) };
    train::train(&request(opts, &out, false), &Device::Cpu).unwrap();
    let m = metrics(&out);
    let last = m.last().unwrap();
    assert!(last.val_ce < m[0].val_ce - 1.0, "smoothed training lowers the plain CE: {:?}", m);
    assert!(last.val_loss > last.val_ce_bos, "the smoothed loss is above the CE over the same positions");
    let temps = checkpoint::load(&out, &Device::Cpu).unwrap().model.temperatures().unwrap();
    assert!(temps.iter().flatten().any(|&t| (t - 2.0).abs() > 1e-4), "learned temperatures moved from 2: {temps:?}");
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 40_000);
    let straight = tmp.path().join("straight");
    let halves = tmp.path().join("halves");
    train::train(&request(options(&corpus, 40), &straight, false), &Device::Cpu).unwrap();

    let mut first = request(options(&corpus, 40), &halves, false);
    first.stop_after = Some(20);
    assert_eq!(train::train(&first, &Device::Cpu).unwrap().steps, 20);
    assert_eq!(checkpoint::load_resumable(&halves, &Device::Cpu).unwrap().state.step, 20);
    let report = train::train(&request(TrainOptions::default(), &halves, true), &Device::Cpu).unwrap();
    assert_eq!(report.steps, 40);

    let weights = |dir: &Path| std::fs::read(dir.join(checkpoint::MODEL)).unwrap();
    assert!(weights(&straight) == weights(&halves), "resumed weights differ from the uninterrupted run");
    let moments = |dir: &Path| std::fs::read(dir.join(checkpoint::OPTIMIZER)).unwrap();
    assert!(moments(&straight) == moments(&halves), "resumed AdamW moments differ");
    // The same training losses at every record, and the same final validation figure (the record
    // at step 20 differs by design: it ended a session, so it covers the whole validation split).
    let losses = |dir: &Path| metrics(dir).iter().map(|m| (m.step, m.train_loss)).collect::<Vec<_>>();
    assert_eq!(losses(&straight), losses(&halves));
    let last = |dir: &Path| metrics(dir).last().map(|m| (m.step, m.val_ce, m.val_ce_bos, m.val_tokens)).unwrap();
    assert_eq!(last(&straight), last(&halves));
}

#[test]
fn config_file_is_overridden_by_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("run.toml");
    std::fs::write(&toml, "steps = 7\nd_model = 48\nlabel_smoothing = 0.05\ntokenizer = \"bpe\"\n").unwrap();
    let file = TrainOptions::from_file(&toml).unwrap();
    let flags = TrainOptions { steps: Some(9), ..TrainOptions::default() };
    let merged = file.overlay(&flags);
    let train = merged.train_config();
    assert_eq!(train.steps, 9, "the flag wins");
    assert_eq!(train.label_smoothing, 0.05, "the file fills what the flags leave unset");
    assert_eq!(train.tokenizer, thermoformer::TokenizerKind::Bpe);
    assert_eq!(merged.model_config(70).d_model, 48);
    assert_eq!(train.batch_size, 12, "defaults fill the rest");

    let json = tmp.path().join("run.json");
    std::fs::write(&json, r#"{"steps": 5, "heads": 8}"#).unwrap();
    let from_json = TrainOptions::from_file(&json).unwrap();
    assert_eq!((from_json.steps, from_json.heads), (Some(5), Some(8)));

    std::fs::write(&json, r#"{"stpes": 5}"#).unwrap();
    let err = format!("{:#}", TrainOptions::from_file(&json).unwrap_err());
    assert!(err.contains("stpes"), "an unknown key is named: {err}");
}

/// `train` builds a Llama-style model from flags (RMSNorm, SwiGLU, grouped kv heads, a rope
/// theta, partial rotary), records the shape in config.json, lowers the loss, and a resume that
/// would change the shape is refused by name.
#[test]
fn a_llama_style_model_trains_from_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 20_000);
    let out = tmp.path().join("llama");
    let (corpus, out_s) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let mut args = common::tiny_train_flags(corpus, out_s);
    let steps = args.iter().position(|a| *a == "--steps").unwrap();
    args[steps + 1] = "30";
    args.extend(["--heads", "4", "--d-model", "32", "--norm", "rmsnorm", "--mlp", "swiglu", "--d-ff", "40", "--kv-heads", "2", "--rope-theta", "500", "--rope-dims", "4", "--parallel-residual", "--lr", "0.01"]);
    let o = common::run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let m = &cfg["model"];
    assert_eq!((m["norm"].as_str(), m["mlp"].as_str()), (Some("rmsnorm"), Some("swiglu")), "{m}");
    assert_eq!((m["d_ff"].as_u64(), m["n_kv_head"].as_u64(), m["rope_dims"].as_u64()), (Some(40), Some(2), Some(4)), "{m}");
    assert_eq!((m["rope_theta"].as_f64(), m["parallel_residual"].as_bool()), (Some(500.0), Some(true)), "{m}");
    let records = metrics(&out);
    let (first, last) = (records.first().unwrap().val_ce, records.last().unwrap().val_ce);
    assert!(last < first - 0.3, "val CE {first} -> {last}");
    // The weights have the grouped shape: (H + 2K) D = (4 + 4) 8 rows of q, k, v.
    let tensors = checkpoint::read_model_tensors(&out, &Device::Cpu).unwrap();
    assert_eq!(tensors["blocks.0.attn.qkv.weight"].dims(), &[64, 32]);
    assert_eq!(tensors["blocks.0.mlp.fc.weight"].dims(), &[80, 32]);
    let resume = common::run(&["train", "--out", out_s, "--resume", "--steps", "40", "--kv-heads", "4", "--no-progress"]);
    common::assert_clean_error(&resume, 2, "--kv-heads");
}

/// `--preset` fills the architecture flags a family stands for, and flags given still win.
#[test]
fn a_preset_fills_the_family_shape_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 20_000);
    let out = tmp.path().join("preset");
    let (corpus, out_s) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let mut args = common::tiny_train_flags(corpus, out_s); // --heads 2 --d-model 16
    args.extend(["--preset", "llama", "--mlp", "gelu"]);
    let o = common::run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let m = &cfg["model"];
    // RMSNorm, 8/3 of 16 rounded up to a multiple of 8, one kv head for the two query heads; the
    // MLP as the flag says.
    assert_eq!((m["norm"].as_str(), m["mlp"].as_str(), m["d_ff"].as_u64(), m["n_kv_head"].as_u64()), (Some("rmsnorm"), Some("gelu"), Some(48), Some(1)), "{m}");

    use thermoformer::config::{Preset, TrainOptions};
    let pythia = Preset::Pythia.fill(TrainOptions { d_model: Some(64), heads: Some(4), ..TrainOptions::default() }).model_config(50);
    assert_eq!((pythia.parallel_residual, pythia.rotary_dims(), pythia.norm), (true, 4, thermoformer::config::Norm::LayerNorm));
    let resumed = common::run(&["train", "--out", out_s, "--resume", "--preset", "llama"]);
    common::assert_clean_error(&resumed, 2, "--preset");
}
