//! Bad input of every kind gets one clear error line and the right exit code (2 for usage
//! errors, 1 for the rest), never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{assert_clean_error, run, small_corpus, tiny_train_flags, trained};
use thermoformer::checkpoint;

/// A copy of the run directory `src` in `dst`.
fn copy_run(src: &Path, dst: &Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst.to_path_buf()
}

#[test]
fn every_numeric_flag_out_of_range_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = trained(tmp.path());
    let ck = run_dir.to_str().unwrap();
    let corpus = small_corpus(tmp.path(), 4000);
    let c = corpus.to_str().unwrap();
    let o = tmp.path().join("other");
    let o = o.to_str().unwrap();
    let train: &[(&[&str], &str)] = &[
        (&["--layers", "0"], "--layers"),
        (&["--heads", "0"], "--heads"),
        (&["--d-model", "0"], "--d-model"),
        (&["--context", "1"], "--context"),
        (&["--context", "100000"], "--context"),
        (&["--d-model", "4096", "--layers", "100000"], "parameters"),
        (&["--min-lr", "2"], "--min-lr"),
        (&["--lr", "NaN"], "--lr"),
        (&["--beta1", "1"], "--beta1"),
        (&["--beta2", "1.5"], "--beta2"),
        (&["--weight-decay", "-1"], "--weight-decay"),
        // Values far out of range are echoed compactly, not as hundreds of digits.
        (&["--label-smoothing", "1e300"], "got 1e300"),
        (&["--lr=-1e-320"], "got -1e-320"),
        (&["--grad-clip", "-1"], "--grad-clip"),
        (&["--eval-every", "0"], "--eval-every"),
        (&["--eval-batches", "0"], "--eval-batches"),
        (&["--val-fraction", "0"], "--val-fraction"),
        (&["--attn-temperature", "inf"], "--attn-temperature"),
        (&["--attn-temperature", "1e-320"], "--attn-temperature"),
        (&["--steps", "-3"], "--steps"),
        // Sizes that would make an allocation fail (an abort, not an error) are refused first.
        (&["--batch-size", "100000000"], "memory"),
        (&["--tokenizer", "bpe", "--vocab-size", "18446744073709551615"], "--vocab-size"),
    ];
    assert_clean_error(&run(&tiny_train_flags(c, c)), 2, "is a file");
    for (extra, needle) in train {
        let mut args = tiny_train_flags(c, o);
        args.extend_from_slice(extra);
        assert_clean_error(&run(&args), 2, needle);
    }
    let use_ck = |args: &[&str]| -> Vec<String> { args.iter().map(|s| s.to_string()).chain(["--checkpoint".into(), ck.into()]).collect() };
    let others: &[(&[&str], &str)] = &[
        (&["score", "--text", "a", "--temperature", "0"], "--temperature"),
        (&["score", "--text", "a", "--temperature", "-1"], "--temperature"),
        (&["score", "--text", "a", "--temperature", "inf"], "--temperature"),
        (&["score", "--text", "a", "--temperature", "1e-320"], "--temperature"),
        (&["score", "--text", "a", "--stride", "0"], "--stride"),
        (&["score", "--text", "a", "--stride", "17"], "--stride"),
        (&["score", "--text", "a", "--batch-size", "0"], "--batch-size"),
        (&["score", "--text", "a", "--attn-temperature", "0"], "--attn-temperature"),
        (&["score", "--text", "a", "--head-temperature", "0.0=0"], "head temperature"),
        (&["score", "--text", "a", "--head-temperature", "0.5=1"], "names no head"),
        (&["generate", "--temperature", "-0.5"], "temperature"),
        (&["generate", "--temperature", "1e-300"], "temperature"),
        (&["generate", "--top-p", "0"], "--top-p"),
        (&["generate", "--top-p", "1.01"], "--top-p"),
        (&["generate", "--top-k", "0"], "--top-k"),
        (&["generate", "--tokens", "-1"], "--tokens"),
        (&["inspect", "--sweep", "0"], "--sweep"),
        (&["inspect", "--sweep", "1", "--windows", "0"], "--windows"),
        (&["inspect", "--text", "a", "--attn-temperature", "-1"], "--attn-temperature"),
        (&["inspect", "--text", "a", "--png", "maps.txt"], "--png"),
        (&["inspect", "--text", "a", "--png", "/no/such/dir/maps.png"], "--png"),
        (&["calibrate", "--bins", "18446744073709551615"], "--bins"),
        (&["calibrate", "--attn-temperature", "-1"], "--attn-temperature"),
        (&["calibrate", "--png", "."], "--png"),
        (&["rl", "--out", c, "--reward", "regex:."], "is a file"),
        (&["rl", "--out", o, "--reward", "regex:.", "--tokens", "18446744073709551615"], "--tokens"),
        (&["rl", "--out", o, "--reward", "regex:.", "--tokens", "4", "--batch-size", "100000000"], "memory"),
    ];
    for (args, needle) in others {
        let args = use_ck(args);
        assert_clean_error(&run(&args.iter().map(String::as_str).collect::<Vec<_>>()), 2, needle);
    }
    assert_clean_error(&run(&["bench", "--iters", "-1"]), 2, "--iters");
    println!("{} out-of-range flags tried", train.len() + others.len() + 1);
}

#[test]
fn broken_checkpoints_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = trained(tmp.path());
    let score = |dir: &Path| run(&["score", "--text", "First", "--checkpoint", dir.to_str().unwrap()]);
    let mut tried = 0;
    let mut case = |name: &str, needle: &str, break_it: &dyn Fn(&Path)| {
        let dir = copy_run(&good, &tmp.path().join(name));
        break_it(&dir);
        assert_clean_error(&score(&dir), 1, needle);
        tried += 1;
    };
    case("no-dir", "does not exist", &|d| std::fs::remove_dir_all(d).unwrap());
    case("a-file", "is a file", &|d| {
        std::fs::remove_dir_all(d).unwrap();
        std::fs::write(d, "not a run").unwrap();
    });
    case("no-model", "model.safetensors", &|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    case("no-tokenizer", "tokenizer.json", &|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    case("no-config", "config.json", &|d| std::fs::remove_file(d.join("config.json")).unwrap());
    case("truncated", "model.safetensors", &|d| {
        let p = d.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    });
    case("garbage", "model.safetensors", &|d| std::fs::write(d.join("model.safetensors"), [0x5a; 4096]).unwrap());
    case("flipped-header", "model.safetensors", &|d| {
        let p = d.join("model.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    });
    case("wrong-shape", "ln_f.weight", &|d| {
        let mut t: HashMap<String, Tensor> = checkpoint::read_model_tensors(d, &Device::Cpu).unwrap();
        t.insert("ln_f.weight".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
        std::fs::write(d.join("model.safetensors"), checkpoint::safetensors_bytes(&t).unwrap()).unwrap();
    });
    case("missing-tensor", "ln_f.weight", &|d| {
        let mut t: HashMap<String, Tensor> = checkpoint::read_model_tensors(d, &Device::Cpu).unwrap();
        t.remove("ln_f.weight");
        std::fs::write(d.join("model.safetensors"), checkpoint::safetensors_bytes(&t).unwrap()).unwrap();
    });
    case("newer-format", "newer", &|d| {
        let p = d.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["format_version"] = serde_json::json!(99);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    });
    case("bad-json", "config.json", &|d| std::fs::write(d.join("config.json"), "{ not json").unwrap());
    case("other-tokenizer", "tokenizer", &|d| {
        let tok = thermoformer::Tok::train_char("abc def\n").unwrap();
        std::fs::write(d.join("tokenizer.json"), tok.to_json().unwrap()).unwrap();
    });
    case("garbage-tokenizer", "tokenizer.json", &|d| std::fs::write(d.join("tokenizer.json"), "[1, 2").unwrap());
    case("token-id-past-vocab", "tokenizer.json", &|d| {
        let p = d.join("tokenizer.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let first = vocab.keys().next().unwrap().clone();
        vocab.insert(first, serde_json::json!(5000));
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    });
    case("bad-train-config", "config.json", &|d| {
        let p = d.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["train"]["val_fraction"] = serde_json::json!(1.5);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    });
    println!("{tried} broken checkpoints tried");
}

/// candle appends a backtrace to its errors when RUST_BACKTRACE is set; the error stays one line.
#[test]
fn errors_stay_one_line_with_backtraces_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let good = trained(tmp.path());
    let dir = copy_run(&good, &tmp.path().join("more-heads"));
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let heads = v["model"]["n_head"].as_u64().unwrap();
    v["model"]["n_head"] = serde_json::json!(heads * 2);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = common::thermoformer()
        .args(["score", "--text", "First", "--checkpoint", dir.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_clean_error(&out, 1, "log_beta");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "more than one line:\n{stderr}");
}

#[test]
fn argument_errors_are_one_line_naming_the_flag() {
    for (args, needle) in [
        (&["train", "--bogus"][..], "'--bogus'"),
        (&["train", "--step", "5"][..], "a similar argument exists: '--steps'"),
        (&["train", "--positions", "foo"][..], "possible values: learned, rope"),
        (&["train", "--lr", "abc"][..], "'--lr <LR>'"),
        (&["rl"][..], "--out <DIR>, --reward <SPEC>"),
        (&["frobnicate"][..], "'frobnicate'"),
    ] {
        let out = run(args);
        assert_clean_error(&out, 2, needle);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: more than one line:\n{stderr}");
    }
    // Help is not an error.
    let help = run(&["train", "--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--label-smoothing"));
}

#[test]
fn a_closed_stderr_does_not_stop_training() {
    // `thermoformer train 2>&1 | head -1`: once the reader has gone, progress lines cannot be
    // written; the run must still finish and save.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 4000);
    let out = tmp.path().join("run");
    let (c, o) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let mut child = common::thermoformer()
        .args(tiny_train_flags(c, o))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // the reader goes away before the first line
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
    assert!(checkpoint::exists(&out), "the checkpoint was saved");
}

#[test]
fn bad_text_is_named_and_long_text_is_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let binary = tmp.path().join("binary.txt");
    std::fs::write(&binary, b"First\n\xff\xfe Citizen\n").unwrap();
    assert_clean_error(&run(&["score", binary.to_str().unwrap(), "--checkpoint", ck]), 1, "not UTF-8");
    let mut child = common::thermoformer()
        .args(["score", "-", "--checkpoint", ck])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"abc\xc3\x28\n").unwrap();
    drop(child.stdin.take());
    assert_clean_error(&child.wait_with_output().unwrap(), 1, "stdin");
    assert_clean_error(&run(&["score", "--text", "naïve \u{1F600}", "--checkpoint", ck]), 1, "U+00EF");
    assert_clean_error(&run(&["generate", "--prompt", "\u{1F600}", "--checkpoint", ck]), 1, "U+1F600");
    // A very long line: 100,000 characters, scored with the sliding window.
    let long = common::corpus_text(4000).replace('\n', " ").repeat(25);
    let file = tmp.path().join("long.txt");
    std::fs::write(&file, &long).unwrap();
    let o = run(&["score", file.to_str().unwrap(), "--checkpoint", ck, "--format", "jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"].as_u64().unwrap() as usize, long.chars().count());
    assert!(v["energy_per_token"].as_f64().unwrap().is_finite());
    assert_clean_error(&run(&["inspect", "--text", &long[..2000], "--checkpoint", ck]), 1, "longer than the model's context");
}

#[test]
fn an_accelerator_this_build_lacks_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    if cfg!(not(feature = "cuda")) {
        assert_clean_error(&run(&["score", "--text", "a", "--checkpoint", ck.to_str().unwrap(), "--device", "cuda"]), 1, "--features cuda");
    }
    assert_clean_error(&run(&["bench", "--device", "tpu"]), 2, "tpu");
}

/// Library functions refuse arguments a caller can pass with an error instead of a panic (each
/// of these used to panic: an underflow, `chunks(0)`, an `assert!`, an index past the end).
#[test]
fn library_functions_refuse_bad_arguments_without_panicking() {
    use thermoformer::data;
    use thermoformer::physics::{calibrate, langevin, score};
    let dev = Device::Cpu;
    let tokens: Vec<u32> = (0..10).collect();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    // A split shorter than the context.
    assert!(data::random_starts(&mut rng, tokens.len(), 16, 4).is_err());
    assert_eq!(data::random_starts(&mut rng, tokens.len(), 10, 3).unwrap(), vec![0, 0, 0], "a split of exactly one window");
    assert!(data::batch_at(&tokens, &[5], 8, 0, &dev).is_err(), "a window past the end");
    assert!(data::batch_at(&tokens, &[0], 0, 0, &dev).is_err(), "a context of 0");
    assert_eq!(data::batch_at(&tokens, &[2], 8, 99, &dev).unwrap().inputs.dims(), &[1, 8]);
    assert!(data::tiled_batches(&tokens, None, 0, 4, 0, &dev).is_err(), "a batch size of 0");
    assert!(data::tiled_batches(&tokens, None, 2, 0, 0, &dev).is_err(), "a context of 0");
    // Scoring windows with a stride of 0 or past the context.
    assert!(score::windows(10, 4, 0).is_err() && score::windows(10, 4, 5).is_err() && score::windows(10, 0, 1).is_err());
    assert_eq!(score::windows(10, 4, 4).unwrap().len(), 3);
    // Histograms with no bins, and a sample that rounds onto the bin past the end:
    // (0.9999999999999999 - 0) / (1/3) is 3.0 in f64.
    let flat = |_: f64| 0.0;
    assert!(langevin::tv_distance_1d(&[0.5], flat, 1.0, 0.0, 1.0, 0).is_err());
    assert!(langevin::tv_distance_1d(&[0.5], flat, 1.0, 1.0, 1.0, 4).is_err());
    let edge = langevin::tv_distance_1d(&[0.9999999999999999], flat, 1.0, 0.0, 1.0, 3).unwrap();
    assert!((edge - 2.0 / 3.0).abs() < 1e-9, "the sample counts in the last bin: TV {edge}");
    // A reliability diagram with no bins.
    let preds = calibrate::Predictions::new(vec![1.0, 2.0, 0.5, 0.1, 0.2, 3.0], vec![1, 2], 3).unwrap();
    assert!(preds.reliability(1.0, 0).is_err());
    assert_eq!(preds.reliability(1.0, 2).unwrap().bins.len(), 2);
}

/// Every command that measures on the validation split reads it through one loader, which
/// refuses the run's own corpus once its text has changed (its tail is no longer held out);
/// calibrate and inspect used to read it silently.
#[test]
fn a_corpus_changed_since_training_is_refused_unless_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    assert!(run(&["calibrate", "--checkpoint", ck]).status.success(), "the unchanged corpus is read");
    let text = std::fs::read_to_string(&corpus).unwrap();
    std::fs::write(&corpus, format!("{text}\nFirst Citizen:\n")).unwrap(); // characters it knows
    for args in [&["calibrate", "--checkpoint", ck][..], &["inspect", "--sweep", "1", "--checkpoint", ck], &["inspect", "--rope", "--checkpoint", ck]] {
        assert_clean_error(&run(args), 1, "has changed since the run was trained");
    }
    // Named explicitly, it is the user's choice.
    let named = run(&["calibrate", "--checkpoint", ck, "--corpus", corpus.to_str().unwrap()]);
    assert!(named.status.success(), "{}", String::from_utf8_lossy(&named.stderr));
}
