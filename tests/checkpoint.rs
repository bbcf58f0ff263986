//! Saving and loading run directories: identical logits, readable tensor names, atomic commits.

mod common;

use std::collections::HashMap;

use candle_core::Device;
use thermoformer::checkpoint::{self, TrainState};
use thermoformer::config::{RunConfig, TrainConfig, FORMAT_VERSION};
use thermoformer::train::optim::{AdamW, AdamWConfig};

fn state(step: usize) -> TrainState {
    TrainState {
        step,
        rng_seed: 1,
        rng_word_pos: "0".into(),
        tokens_seen: 0,
        elapsed_secs: 0.0,
        val_ce: None,
        corpus_hash: checkpoint::corpus_hash("text"),
    }
}

fn save_tiny(dir: &std::path::Path) -> (thermoformer::Gpt, thermoformer::Tok) {
    let (tok, cfg, params, model) = common::tiny_model(true);
    let run = RunConfig { format_version: FORMAT_VERSION, model: cfg, train: TrainConfig::default(), imported_from: None };
    let opt = AdamW::new(params.trainable(), AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 }, model.kernels()).unwrap();
    checkpoint::save(dir, &run, &tok, &params, opt.state_tensors().unwrap(), &state(3)).unwrap();
    (model, tok)
}

#[test]
fn save_then_load_gives_bit_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tok) = save_tiny(dir.path());
    let loaded = checkpoint::load(dir.path(), &Device::Cpu).unwrap();
    let ids = common::random_ids(2, loaded.config.model.context, tok.vocab_size(), tok.bos(), 9);
    let a = common::flat(&model.forward(&ids).unwrap());
    let b = common::flat(&loaded.model.forward(&ids).unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ after a round trip");
    assert_eq!(loaded.model.temperatures().unwrap(), model.temperatures().unwrap());
    let resumable = checkpoint::load_resumable(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(resumable.state, state(3));
}

#[test]
fn safetensors_names_are_the_struct_paths() {
    let dir = tempfile::tempdir().unwrap();
    save_tiny(dir.path());
    let bytes = std::fs::read(dir.path().join(checkpoint::MODEL)).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    for name in ["tok_emb.weight", "pos_emb.weight", "ln_f.weight", "blocks.0.ln1.weight", "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight", "blocks.0.attn.log_beta", "blocks.1.mlp.fc.weight", "blocks.1.mlp.proj.weight"]
    {
        assert!(header.contains_key(name), "no tensor {name} in {:?}", header.keys());
    }
    assert_eq!(header["tok_emb.weight"]["dtype"], "F32");
}

#[test]
fn an_interrupted_commit_is_finished_and_a_half_written_one_discarded() {
    let dir = tempfile::tempdir().unwrap();
    save_tiny(dir.path());
    let good = std::fs::read(dir.path().join(checkpoint::MODEL)).unwrap();

    // Crash before the commit point: a garbage .tmp file and no marker. It is discarded.
    std::fs::write(dir.path().join("model.safetensors.tmp"), b"half written").unwrap();
    checkpoint::recover(dir.path()).unwrap();
    assert!(!dir.path().join("model.safetensors.tmp").exists());
    assert_eq!(std::fs::read(dir.path().join(checkpoint::MODEL)).unwrap(), good);

    // Crash after the commit point, with state.json not yet renamed: the commit is rolled forward.
    let mut newer = state(3);
    newer.step = 9;
    std::fs::write(dir.path().join("state.json.tmp"), serde_json::to_vec(&newer).unwrap()).unwrap();
    std::fs::write(dir.path().join(".commit"), b"step 9\n").unwrap();
    let resumed = checkpoint::load_resumable(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(resumed.state.step, 9);
    assert!(!dir.path().join(".commit").exists() && !dir.path().join("state.json.tmp").exists());
}

#[test]
fn a_newer_format_version_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    save_tiny(dir.path());
    let path = dir.path().join(checkpoint::CONFIG);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = format!("{:#}", checkpoint::load(dir.path(), &Device::Cpu).unwrap_err());
    assert!(err.contains("newer") && err.contains("HINT"), "{err}");
}

#[test]
fn corrupt_or_mismatched_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    save_tiny(dir.path());
    let model_path = dir.path().join(checkpoint::MODEL);
    let bytes = std::fs::read(&model_path).unwrap();
    std::fs::write(&model_path, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", checkpoint::load(dir.path(), &Device::Cpu).unwrap_err());
    assert!(err.contains("model.safetensors") && err.contains("truncated or corrupted"), "{err}");

    let other = tempfile::tempdir().unwrap();
    save_tiny(other.path());
    let bpe = thermoformer::Tok::train_bpe(&common::corpus_text(20_000), 270).unwrap();
    std::fs::write(other.path().join(checkpoint::TOKENIZER), bpe.to_json().unwrap()).unwrap();
    let err = format!("{:#}", checkpoint::load(other.path(), &Device::Cpu).unwrap_err());
    assert!(err.contains("different runs"), "{err}");

    let missing = dir.path().join("nope");
    let err = format!("{:#}", checkpoint::load(&missing, &Device::Cpu).unwrap_err());
    assert!(err.contains("does not exist"), "{err}");
}
