//! The real binary: bad input gets one clear error line and a non-zero exit, never a panic.

mod common;

use common::{assert_clean_error, run, small_corpus, tiny_train_flags};

fn with(base: Vec<&str>, extra: &[&str]) -> Vec<String> {
    base.into_iter().chain(extra.iter().copied()).map(String::from).collect()
}

fn run_owned(args: &[String]) -> std::process::Output {
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn missing_empty_short_and_binary_corpora_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_s = out.to_str().unwrap();

    let missing = tmp.path().join("nope.txt");
    assert_clean_error(&run(&tiny_train_flags(missing.to_str().unwrap(), out_s)), 1, "reading corpus");

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    assert_clean_error(&run(&tiny_train_flags(empty.to_str().unwrap(), out_s)), 1, "is empty");

    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "To be, or not to be, that is the question.\n").unwrap();
    assert_clean_error(&run(&tiny_train_flags(short.to_str().unwrap(), out_s)), 1, "too short");

    let binary = tmp.path().join("binary.txt");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    assert_clean_error(&run(&tiny_train_flags(binary.to_str().unwrap(), out_s)), 1, "not UTF-8");
    assert!(!out.join("config.json").exists(), "nothing is written for bad input");
}

#[test]
fn out_of_range_options_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 20_000);
    let (c, o) = (corpus.to_str().unwrap(), tmp.path().join("run"));
    let o = o.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--heads", "3"], "does not divide --d-model"),
        (&["--label-smoothing", "1.0"], "--label-smoothing"),
        (&["--label-smoothing=-0.1"], "--label-smoothing"),
        (&["--attn-temperature", "0"], "--attn-temperature"),
        (&["--attn-temperature=-2"], "--attn-temperature"),
        (&["--steps", "0"], "--steps"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--lr", "0"], "--lr"),
        (&["--val-fraction", "1.5"], "--val-fraction"),
        (&["--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size"),
    ];
    for (extra, needle) in cases {
        let args = with(tiny_train_flags(c, o), extra);
        assert_clean_error(&run_owned(&args), 2, needle);
    }
}

#[test]
fn nonsense_flags_and_values_are_rejected_by_the_parser() {
    for args in [&["train", "--bogus"][..], &["train", "--steps", "many"], &["train", "--tokenizer", "words"], &["fly"]] {
        let out = run(args);
        let (code, stderr) = common::status_and_stderr(&out);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:") && !stderr.contains("panicked"), "{stderr}");
    }
}

/// The entries of a rendered `--help`: each option's lines, keyed by its long name.
fn help_entries(help: &str) -> std::collections::HashMap<String, String> {
    let mut entries = std::collections::HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len(); // entries at 2 or 6, their text at 10 ("- cpu:" values too)
        if t.starts_with('-') && indent <= 6 {
            entries.extend(current.take());
            // "-s, --long <V>" or "--long <V>": the long name.
            let long = t.split([' ', ',', '=']).find(|w| w.starts_with("--")).unwrap_or("").trim_start_matches("--").to_string();
            current = Some((long, t.to_string()));
        } else if line.starts_with("  [") || line.starts_with("  <") {
            entries.extend(current.take());
            // A positional argument, "[NAME]" or "<NAME>".
            let name = t.split(' ').next().unwrap_or("").trim_matches(['[', ']', '<', '>', '.']).to_string();
            current = Some((name, t.to_string()));
        } else if t.is_empty() {
            // Blank lines come inside entries too (before "Possible values:", "[default: ..]").
        } else if !line.starts_with(' ') {
            entries.extend(current.take()); // a section heading
        } else if let Some((_, text)) = current.as_mut() {
            text.push(' ');
            text.push_str(t);
        }
    }
    entries.extend(current);
    entries
}

#[test]
fn every_flag_has_its_own_help_and_shows_its_default() {
    use thermoformer::config::TrainOptions;
    let mut cmd = thermoformer::cli::command();
    cmd.build();
    // train's flags, exactly: a flag added or removed must be documented here too.
    let train_flags = [
        "corpus", "out", "config", "resume", "init_from", "overwrite", "steps", "batch_size", "context", "layers", "heads", "d_model",
        "positions", "preset", "norm", "mlp", "d_ff", "kv_heads", "rope_theta", "rope_dims", "parallel_residual", "lr", "min_lr", "warmup", "optimizer", "precision", "sgld_temperature", "beta1", "beta2", "weight_decay", "grad_clip",
        "label_smoothing", "attn_temperature", "learn_temperature", "tokenizer", "vocab_size", "seed", "eval_every",
        "eval_batches", "eval_tokens", "val_fraction", "text_field", "bpe_sample_bytes", "sample_tokens", "stop_after", "format", "json", "no_progress", "device",
    ];
    let train = cmd.find_subcommand("train").unwrap();
    let mut ids: Vec<&str> = train.get_arguments().map(|a| a.get_id().as_str()).filter(|id| *id != "help").collect();
    ids.sort_unstable();
    let mut want = train_flags.to_vec();
    want.sort_unstable();
    assert_eq!(ids, want, "train's flags");
    let shown: std::collections::HashMap<String, String> = TrainOptions::shown_defaults().into_iter().collect();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = sub.get_name();
        // The help the binary prints, as a user reads it.
        let out = run(&[name, "--help"]);
        assert!(out.status.success(), "{name} --help");
        let entries = help_entries(&String::from_utf8(out.stdout).unwrap());
        let mut helps = std::collections::HashSet::new();
        for arg in sub.get_arguments().filter(|a| a.get_id() != "help") {
            let id = arg.get_id().as_str();
            // Options by their long name, positional arguments by their value name.
            let value_name = arg.get_value_names().and_then(|v| v.first()).map_or(id.to_uppercase(), |v| v.to_string());
            let long = arg.get_long().map_or(value_name, str::to_string);
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            // Its own help: at least a few words, and not another flag's text.
            assert!(help.split_whitespace().count() >= 2, "{name} --{long} has no help of its own: {help:?}");
            assert!(helps.insert(help.clone()), "{name} --{long} repeats another flag's help: {help:?}");
            let entry = entries.get(&long).unwrap_or_else(|| panic!("{name} --help has no entry for --{long}"));
            let first_words: String = help.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
            assert!(entry.contains(&first_words), "{name} --help shows --{long} without its help: {entry:?}");
            // Its default, where it has one: clap's own, or (train) the configuration's.
            // (A switch's implicit "false" is not one.)
            let defaults: Vec<String> = if arg.get_action().takes_values() {
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect()
            } else {
                Vec::new()
            };
            let default = match (defaults.first(), shown.get(id).filter(|_| name == "train")) {
                (Some(d), _) => Some(d.clone()),
                (None, Some(d)) => Some(d.clone()),
                (None, None) => None,
            };
            if let Some(d) = default {
                // clap quotes a default that is empty or has spaces.
                assert!(entry.contains(&format!("[default: {d}]")) || entry.contains(&format!("[default: \"{d}\"]")), "{name} --help does not show --{long}'s default {d:?}: {entry:?}");
            }
        }
    }
    // Every option but the switches shows a default, spelled as the flags take it: known values,
    // so a slip in the option -> field mapping (layers -> n_layer, vocab_size -> bpe_vocab_size)
    // or a dropped default fails here, not only in the help it feeds.
    let options = serde_json::to_value(TrainOptions::default()).unwrap();
    for name in options.as_object().unwrap().keys().filter(|k| !["learn_temperature", "parallel_residual"].contains(&k.as_str())) {
        assert!(shown.contains_key(name), "train --{name} shows no default");
    }
    let expect = [
        ("steps", "5000"), ("batch_size", "12"), ("context", "64"), ("layers", "4"), ("heads", "4"), ("d_model", "128"),
        ("positions", "rope"), ("tokenizer", "char"), ("vocab_size", "512"), ("min_lr", "0.0001"), ("seed", "1337"),
        ("corpus", "data/tinyshakespeare.txt"),
    ];
    for (name, value) in expect {
        assert_eq!(shown[name], value, "train --{name}'s default");
    }
    assert_eq!(shown["lr"], "0.001 with adamw, 1.0 with sgld");
}

#[test]
fn resume_and_overwrite_protect_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = small_corpus(tmp.path(), 20_000);
    let out = tmp.path().join("run");
    let (c, o) = (corpus.to_str().unwrap(), out.to_str().unwrap());

    let nothing = run_owned(&with(tiny_train_flags(c, o), &["--resume"]));
    assert_clean_error(&nothing, 2, "holds no checkpoint");

    let first = run(&tiny_train_flags(c, o));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let saved = std::fs::read(out.join("model.safetensors")).unwrap();

    assert_clean_error(&run(&tiny_train_flags(c, o)), 2, "already holds a checkpoint");
    assert_clean_error(&run_owned(&with(tiny_train_flags(c, o), &["--resume", "--layers", "2"])), 2, "--layers 2 does not match");
    assert_clean_error(&run_owned(&with(tiny_train_flags(c, o), &["--resume", "--tokenizer", "bpe"])), 2, "--tokenizer");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), saved, "a refused run leaves the checkpoint alone");

    // A tokenizer from another run: the vocabulary no longer matches the model.
    let other = tmp.path().join("other");
    std::fs::write(tmp.path().join("abc.txt"), "abcabcabc\n".repeat(500)).unwrap();
    let abc = tmp.path().join("abc.txt");
    let made = run(&tiny_train_flags(abc.to_str().unwrap(), other.to_str().unwrap()));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::copy(other.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    assert_clean_error(&run_owned(&with(tiny_train_flags(c, o), &["--resume", "--steps", "6"])), 1, "different runs");

    // Resume continues with --steps raised; --json reports the step.
    let fresh = tmp.path().join("fresh");
    let f = fresh.to_str().unwrap();
    assert!(run(&tiny_train_flags(c, f)).status.success());
    let more = run_owned(&with(tiny_train_flags(c, f), &["--resume", "--steps", "6", "--json"]));
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    let report: serde_json::Value = serde_json::from_slice(&more.stdout).unwrap();
    assert_eq!(report["steps"], 6);

    // Nothing left to do, a changed corpus: refused. --overwrite starts again.
    assert_clean_error(&run_owned(&with(tiny_train_flags(c, f), &["--resume", "--steps", "6"])), 2, "already at step 6");
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    text.push_str("\nAn edited line.\n");
    std::fs::write(&corpus, text).unwrap();
    assert_clean_error(&run_owned(&with(tiny_train_flags(c, f), &["--resume", "--steps", "8"])), 1, "not the text");
    let again = run_owned(&with(tiny_train_flags(c, f), &["--overwrite", "--json"]));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let metrics = std::fs::read_to_string(fresh.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "an overwritten run starts a fresh metrics file (steps 0, 2, 4)");
}

#[test]
fn a_bad_config_file_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "layers = 2\n\nsteps = \"lots\"\n").unwrap();
    assert_clean_error(&run(&["train", "--config", cfg.to_str().unwrap()]), 2, "bad.toml");
    assert_clean_error(&run(&["train", "--config", cfg.to_str().unwrap()]), 2, "line 3");
    let not_toml = tmp.path().join("run.cfg");
    std::fs::write(&not_toml, "steps = 3\n").unwrap();
    assert_clean_error(&run(&["train", "--config", not_toml.to_str().unwrap()]), 2, "read as JSON");
    assert_clean_error(&run(&["train", "--config", "/nonexistent/x.toml"]), 1, "reading config file");
}
