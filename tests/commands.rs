//! score, generate and inspect through the real binary on a freshly trained tiny checkpoint.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use common::{assert_clean_error, run, trained};

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn score_reports_energies_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let input = tmp.path().join("lines.txt");
    std::fs::write(&input, "First Citizen:\n\nBefore we proceed any further, hear me speak.\n").unwrap();
    let input = input.to_str().unwrap();

    let records = json_lines(&ok(&["score", input, "--checkpoint", ck, "--format", "jsonl", "--per-token"]));
    assert_eq!(records.len(), 3);
    for r in &records {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["bits", "energy", "energy_per_token", "perplexity", "token_energies", "tokens"]);
        let per: Vec<f64> = r["token_energies"].as_array().unwrap().iter().map(|t| t["energy"].as_f64().unwrap()).collect();
        let e = r["energy"].as_f64().unwrap();
        assert!((per.iter().sum::<f64>() - e).abs() < 1e-9, "energy is the sum of the token energies");
        assert_eq!(per.len() as u64, r["tokens"].as_u64().unwrap());
        assert!((r["bits"].as_f64().unwrap() - e / std::f64::consts::LN_2).abs() < 1e-9);
    }
    assert_eq!(records[0]["tokens"], 14);
    let tokens: String = records[0]["token_energies"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(tokens, "First Citizen:");
    let ppl = records[0]["perplexity"].as_f64().unwrap();
    assert!((ppl - records[0]["energy_per_token"].as_f64().unwrap().exp()).abs() < 1e-9);
    // The empty line: zero tokens, zero energy, no per-token figures.
    assert_eq!((records[1]["tokens"].as_u64(), records[1]["energy"].as_f64()), (Some(0), Some(0.0)));
    assert!(records[1]["energy_per_token"].is_null());

    // --text and stdin give the same numbers as the file.
    let one = json_lines(&ok(&["score", "--text", "First Citizen:", "--checkpoint", ck, "--format", "jsonl"]));
    assert!((one[0]["energy"].as_f64().unwrap() - records[0]["energy"].as_f64().unwrap()).abs() < 1e-5);
    let mut child = common::thermoformer()
        .args(["score", "-", "--checkpoint", ck, "--format", "jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"First Citizen:\n").unwrap();
    let piped = json_lines(&String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap());
    assert!((piped[0]["energy"].as_f64().unwrap() - records[0]["energy"].as_f64().unwrap()).abs() < 1e-5);

    // CSV: a header and one row per line; the table ends with the totals.
    let csv = ok(&["score", input, "--checkpoint", ck, "--format", "csv"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "line,tokens,energy,energy_per_token,perplexity,bits");
    assert_eq!(rows.len(), 4);
    assert!(rows[2].starts_with("2,0,0,,,"), "empty line row: {}", rows[2]);
    let table = ok(&["score", input, "--checkpoint", ck]);
    let total = table.lines().last().unwrap();
    let total_tokens: u64 = records.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
    assert!(total.trim_start().starts_with("total") && total.contains(&format!(" {total_tokens} ")), "{table}");

    // A cold scoring temperature changes the energies; T = 1 is the plain model.
    let cold = json_lines(&ok(&["score", "--text", "First Citizen:", "--checkpoint", ck, "--format", "jsonl", "--temperature", "0.5"]));
    assert_ne!(cold[0]["energy"], one[0]["energy"]);
}

#[test]
fn score_slides_a_window_over_long_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let long = common::corpus_text(200).replace('\n', " ");
    let r = json_lines(&ok(&["score", "--text", &long, "--checkpoint", ck, "--format", "jsonl", "--per-token"]));
    assert_eq!(r[0]["tokens"].as_u64().unwrap() as usize, long.chars().count());
    let strided = json_lines(&ok(&["score", "--text", &long, "--checkpoint", ck, "--format", "jsonl", "--stride", "1"]));
    // Different strides see different contexts but score every token once.
    assert_eq!(strided[0]["tokens"], r[0]["tokens"]);
    // The first window (context 16: BOS + 15 tokens, 16 targets) scores as the prefix alone does.
    let prefix: String = long.chars().take(16).collect();
    let p = json_lines(&ok(&["score", "--text", &prefix, "--checkpoint", ck, "--format", "jsonl", "--per-token"]));
    for (a, b) in p[0]["token_energies"].as_array().unwrap().iter().zip(r[0]["token_energies"].as_array().unwrap()) {
        assert!((a["energy"].as_f64().unwrap() - b["energy"].as_f64().unwrap()).abs() < 1e-5);
    }
    assert_ne!(strided[0]["energy"], r[0]["energy"], "stride 1 gives later tokens more context");
    assert_clean_error(&run(&["score", "--text", &long, "--checkpoint", ck, "--stride", "0"]), 2, "--stride");
}

#[test]
fn score_rejects_bad_input_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let missing = tmp.path().join("nope.txt");
    assert_clean_error(&run(&["score", missing.to_str().unwrap(), "--checkpoint", ck]), 1, "nope.txt");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_clean_error(&run(&["score", empty.to_str().unwrap(), "--checkpoint", ck]), 1, "is empty");
    assert_clean_error(&run(&["score", "--text", "caf\u{e9} \u{263a}", "--checkpoint", ck]), 1, "not in the char tokenizer");
    assert_clean_error(&run(&["score", "--checkpoint", ck]), 2, "give a FILE");
    assert_clean_error(&run(&["score", "--text", "a", "--checkpoint", ck, "--temperature", "0"]), 2, "--temperature");
    let nowhere = tmp.path().join("no-run");
    assert_clean_error(&run(&["score", "--text", "a", "--checkpoint", nowhere.to_str().unwrap()]), 1, "no-run");
    assert_clean_error(&run(&["score", "--text", "a", "--checkpoint", ck, "--head-temperature", "7.0=1"]), 2, "names no head");
    assert_clean_error(&run(&["score", "--text", "a", "--checkpoint", ck, "--head-temperature", "0-0=1"]), 2, "LAYER.HEAD=T");
}

#[test]
fn generate_is_reproducible_and_streams_text() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let args = ["generate", "--checkpoint", ck, "--prompt", "ROMEO:", "--tokens", "80", "--seed", "5", "--top-k", "10"];
    let a = ok(&args);
    assert_eq!(a, ok(&args), "same seed, same text");
    assert!(a.starts_with("ROMEO:") && a.chars().count() == "ROMEO:".len() + 80 + 1, "{a:?}");
    let mut other = args.to_vec();
    other[8] = "6";
    assert_ne!(a, ok(&other));
    // Greedy does not depend on the seed; --show-energy reports on stderr.
    let greedy = ["generate", "--checkpoint", ck, "--tokens", "30", "--temperature", "0", "--show-energy"];
    let o1 = run(&greedy);
    let mut g2 = greedy.to_vec();
    g2.extend(["--seed", "99"]);
    let o2 = run(&g2);
    assert_eq!(o1.stdout, o2.stdout);
    let note = String::from_utf8_lossy(&o1.stderr);
    assert!(note.contains("energy") && note.contains("mean sampling entropy 0.0000"), "{note}");
    assert_clean_error(&run(&["generate", "--checkpoint", ck, "--top-p", "1.5"]), 2, "--top-p");
    assert_clean_error(&run(&["generate", "--checkpoint", ck, "--temperature", "-1"]), 2, "temperature");
    assert_clean_error(&run(&["generate", "--checkpoint", ck, "--prompt", "\u{263a}"]), 1, "prompt");
}

#[test]
fn inspect_prints_every_head_and_draws_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&["inspect", "--text", "To be, or not", "--checkpoint", ck, "--format", "json"])).unwrap();
    let heads = json["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 2, "1 layer x 2 heads");
    // The tokens as the tokenizer spells them (scripts can join them back into the text).
    let tokens: Vec<&str> = json["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.len(), 14);
    assert_eq!((tokens[0], tokens[1..].concat()), ("<|bos|>", "To be, or not".to_string()));
    for h in heads {
        for k in ["temperature", "entropy", "normalized_entropy", "effective_keys", "ln_z", "mean_energy", "heat_capacity"] {
            assert!(h[k].is_number(), "{k} in {h}");
        }
        // The fused kernel's own weights against the recomputed scores: 1e-6-level rounding.
        assert!(h["identity_residual"].as_f64().unwrap() < 1e-5, "{h}");
        assert!((h["temperature"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    }
    // Overrides apply for this run only.
    let hot: serde_json::Value = serde_json::from_str(&ok(&[
        "inspect", "--text", "To be, or not", "--checkpoint", ck, "--format", "json", "--attn-temperature", "4", "--head-temperature", "0.1=0.5",
    ]))
    .unwrap();
    assert!((hot["heads"][0]["temperature"].as_f64().unwrap() - 4.0).abs() < 1e-5);
    assert!((hot["heads"][1]["temperature"].as_f64().unwrap() - 0.5).abs() < 1e-6);
    assert!(hot["heads"][0]["entropy"].as_f64().unwrap() > heads[0]["entropy"].as_f64().unwrap());

    let table = ok(&["inspect", "--text", "To be, or not", "--checkpoint", ck]);
    assert_eq!(table.lines().count(), 2 + 2, "{table}");

    let png = tmp.path().join("attn.png");
    ok(&["inspect", "--text", "To be, or not", "--checkpoint", ck, "--png", png.to_str().unwrap()]);
    // One 395 x 429 panel per head (14 positions of 24 px, labels, title), drawn as a heat map.
    common::assert_picture(&png, Some((2 * 395, 429)), 0.3, 20);
    let sweep_png = tmp.path().join("sweep.png");
    let sweep = ok(&["inspect", "--sweep", "0.5,1,2", "--checkpoint", ck, "--windows", "4", "--png", sweep_png.to_str().unwrap()]);
    assert_eq!(sweep.lines().count(), 2 + 3, "{sweep}");
    // Energy and entropy panels of 640 x 480 each, with their curves.
    common::assert_picture(&sweep_png, Some((2 * 640, 480)), 0.02, 8);
    common::assert_picture(&Path::new(ck).join("curves.png"), Some((640, 480)), 0.02, 8);
    let sweep: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--sweep", "0.5,2", "--checkpoint", ck, "--windows", "4", "--format", "json"])).unwrap();
    let p = sweep["points"].as_array().unwrap();
    assert!(p[1]["entropy"].as_f64().unwrap() > p[0]["entropy"].as_f64().unwrap(), "hotter heads spread out");

    let long = "e".repeat(40);
    assert_clean_error(&run(&["inspect", "--text", &long, "--checkpoint", ck]), 1, "longer than the model's context");
    assert_clean_error(&run(&["inspect", "--checkpoint", ck]), 2, "required arguments");
    assert_clean_error(&run(&["inspect", "--sweep", "1,-2", "--checkpoint", ck]), 2, "--sweep");
}


#[test]
fn score_streams_a_file_longer_than_its_chunk_and_numbers_lines_across_chunks() {
    // More lines than one chunk (4096) holds: the second and third chunks keep the line numbers
    // and give each line the energy it has alone.
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(tmp.path());
    let ck = ck.to_str().unwrap();
    let lines: Vec<String> = (0..9000).map(|i| format!("To be {}", ["or", "not", "to be"][i % 3])).collect();
    let file = tmp.path().join("many.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let jsonl = ok(&["score", file.to_str().unwrap(), "--checkpoint", ck, "--format", "jsonl"]);
    let records: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 9000);
    for i in [0, 4095, 4096, 8999] {
        let alone: serde_json::Value = serde_json::from_str(ok(&["score", "--text", &lines[i], "--checkpoint", ck, "--format", "jsonl"]).trim()).unwrap();
        let (a, b) = (records[i]["energy"].as_f64().unwrap(), alone["energy"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-4, "line {}: {a} in the file, {b} alone", i + 1);
    }
    let csv = ok(&["score", file.to_str().unwrap(), "--checkpoint", ck, "--format", "csv"]);
    assert!(csv.lines().last().unwrap().starts_with("9000,"), "{}", csv.lines().last().unwrap());
    let table = ok(&["score", file.to_str().unwrap(), "--checkpoint", ck]);
    assert!(table.lines().last().unwrap().contains("(9000 lines)"));
}
