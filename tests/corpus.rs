//! Corpora of any size: documents from files, directories and JSON Lines, token files in the
//! cache (round trip, reuse, invalidation, damage), BPE samples and the bounded last evaluation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_clean_error, corpus_text, shipped_corpus, small_corpus, tiny_train_flags};
use thermoformer::config::TrainConfig;
use thermoformer::data::corpus::{Corpus, PIECE};
use thermoformer::data::tokens::{self, tokenize_in, CutRule};
use thermoformer::data::{self, corpus_hash};
use thermoformer::Tok;

/// Run the binary with its token cache in `cache`.
fn run_in(cache: &Path, args: &[&str]) -> Output {
    common::thermoformer().env("THERMOFORMER_CACHE", cache).args(args).output().expect("running thermoformer")
}

fn token_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "bin")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_metrics(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn a_file_reads_as_its_text_in_pieces_and_hashes_as_before() {
    // The shipped corpus is longer than one piece, so it is read in two.
    let path = shipped_corpus();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.len() > PIECE);
    let corpus = Corpus::open(&[path], Some("text")).unwrap();
    let mut pieces = 0;
    let mut joined = String::new();
    let hash = corpus
        .read(|p, _| {
            pieces += 1;
            joined.push_str(p);
            Ok(())
        })
        .unwrap();
    assert!(pieces >= 2, "{pieces} pieces");
    assert!(joined == text, "the pieces are the file");
    // What state.json has always recorded for a one-file corpus.
    assert_eq!(hash, corpus_hash(&text));

    // A character cut by a piece boundary is completed by the next piece.
    let tmp = tempfile::tempdir().unwrap();
    let straddle = format!("{}é and Ω{}", "a".repeat(PIECE - 1), "b".repeat(10));
    std::fs::write(tmp.path().join("s.txt"), &straddle).unwrap();
    let read = Corpus::open(&[tmp.path().join("s.txt")], Some("text")).unwrap().read_to_string().unwrap();
    assert!(read == straddle, "a two-byte character across the boundary");
    // Non-UTF-8 past the first piece is named with its offset.
    let mut bad = vec![b'a'; PIECE + 5];
    bad[PIECE + 2] = 0xFF;
    std::fs::write(tmp.path().join("bad.txt"), &bad).unwrap();
    let err = Corpus::open(&[tmp.path().join("bad.txt")], Some("text")).unwrap().read_to_string().unwrap_err();
    assert!(err.to_string().contains(&format!("bad byte at offset {}", PIECE + 2)), "{err}");
}

/// A directory of text files and JSON Lines, with a hidden file and an empty document.
fn documents(dir: &Path) -> PathBuf {
    let docs = dir.join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(docs.join("a.txt"), "first").unwrap();
    std::fs::write(docs.join("b.txt"), "second\n").unwrap();
    std::fs::write(docs.join(".hidden.txt"), "never read").unwrap();
    std::fs::write(
        docs.join("sub/c.jsonl"),
        "{\"text\": \"third\", \"body\": \"3\"}\n\n{\"text\": \"\", \"body\": \"\"}\n{\"text\": \"fourth\\n\", \"body\": \"4\"}\n",
    )
    .unwrap();
    std::fs::write(docs.join("sub/d.txt"), "fifth").unwrap();
    docs
}

#[test]
fn documents_are_joined_in_path_order_with_a_newline_between() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = documents(tmp.path());
    let corpus = Corpus::open(std::slice::from_ref(&docs), Some("text")).unwrap();
    assert_eq!(corpus.files(), 4, "the hidden file is skipped");
    assert_eq!(corpus.read_to_string().unwrap(), "first\nsecond\nthird\nfourth\nfifth");
    // Another field of the same records, and a file named after a directory.
    let extra = tmp.path().join("extra.txt");
    std::fs::write(&extra, "sixth").unwrap();
    let corpus = Corpus::open(&[docs.join("sub"), extra], Some("body")).unwrap();
    assert_eq!(corpus.read_to_string().unwrap(), "3\n4\nfifth\nsixth");
    assert_eq!(Corpus::open(&[docs.join("sub")], Some("text")).unwrap().name(), docs.join("sub").display().to_string());
}

#[test]
fn bad_corpora_get_one_line_errors_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    let case = |name: &str, content: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let not_json = case("a.jsonl", "{\"text\": \"fine\"}\nnot json\n");
    assert_clean_error(&run_in(&cache, &tiny_train_flags(&not_json, out)), 1, "a.jsonl line 2 is not a JSON record");
    let no_field = case("b.jsonl", "{\"text\": \"fine\"}\n{\"content\": \"other\"}\n");
    assert_clean_error(&run_in(&cache, &tiny_train_flags(&no_field, out)), 1, "b.jsonl line 2 has no string field \"text\"");
    let blank = case("c.jsonl", "{\"text\": \"  \"}\n\n");
    assert_clean_error(&run_in(&cache, &tiny_train_flags(&blank, out)), 1, "is empty");
    let empty_dir = tmp.path().join("nothing");
    std::fs::create_dir(&empty_dir).unwrap();
    assert_clean_error(&run_in(&cache, &tiny_train_flags(empty_dir.to_str().unwrap(), out)), 1, "holds no files");
    let mut flags = tiny_train_flags(&not_json, out);
    flags.extend(["--text-field", ""]);
    assert_clean_error(&run_in(&cache, &flags), 2, "--text-field");
    assert!(!Path::new(out).exists(), "nothing was written");
}

#[test]
fn token_files_hold_the_encoders_ids_at_every_width_and_are_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let text = corpus_text(60_000);
    let path = tmp.path().join("c.txt");
    std::fs::write(&path, &text).unwrap();
    let corpus = Corpus::open(std::slice::from_ref(&path), Some("text")).unwrap();

    // u8 ids for a char vocabulary, u16 for a BPE.
    for (tok, width) in [(Tok::train_char(&text).unwrap(), 1), (Tok::train_bpe(&text, 400).unwrap(), 2)] {
        let file = tokenize_in(Some(&cache), &corpus, &tok, false).unwrap();
        assert_eq!(file.header().width, width);
        assert_eq!(file.tokens().to_vec().unwrap(), tok.encode(&text).unwrap());
        assert_eq!(file.header().text_hash, corpus_hash(&text));
        let written = std::fs::metadata(file.path()).unwrap().modified().unwrap();
        // Asked again, the same file is opened, not written again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = tokenize_in(Some(&cache), &corpus, &tok, false).unwrap();
        assert_eq!(again.path(), file.path());
        assert_eq!(std::fs::metadata(again.path()).unwrap().modified().unwrap(), written, "reused, not rewritten");
    }
    assert_eq!(token_files(&cache).len(), 2, "one file per tokenizer");

    // u32 ids for a vocabulary past 65,536 (CJK and Hangul characters, each once, twice over).
    let wide: String = (0x4E00u32..0x9FFF).chain(0xAC00..0xD7A3).chain(0x20000..0x2A6DF).filter_map(char::from_u32).collect();
    let wide = format!("{wide}\n{wide}");
    let wide_path = tmp.path().join("wide.txt");
    std::fs::write(&wide_path, &wide).unwrap();
    let tok = Tok::train_char(&wide).unwrap();
    assert!(tok.vocab_size() > 65_536);
    let file = tokenize_in(Some(&cache), &Corpus::open(&[wide_path], Some("text")).unwrap(), &tok, false).unwrap();
    assert_eq!(file.header().width, 4);
    assert_eq!(file.tokens().to_vec().unwrap(), tok.encode(&wide).unwrap());
}

#[test]
fn cut_points_of_parallel_jobs_change_no_token() {
    // Verse whose whitespace runs cross newlines: indented lines, trailing spaces, non-breaking
    // spaces before and after newlines, CRLF line ends.
    let text: String = corpus_text(200_000)
        .lines()
        .enumerate()
        .map(|(i, l)| match i % 6 {
            0 => format!("  {l}\n"),
            1 => format!("{l} \n"),
            2 => format!("{l}\u{a0}\n"),
            3 => format!("{l}\r\n"),
            4 => format!("\u{a0}{l} \u{3000}x\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let bpe = Tok::train_bpe(&text, 400).unwrap();
    let char_tok = Tok::train_char(&text).unwrap();
    assert_eq!(CutRule::of(&bpe), CutRule::Gpt2);
    assert_eq!(CutRule::of(&char_tok), CutRule::Anywhere);
    for (tok, rule) in [(&bpe, CutRule::Gpt2), (&char_tok, CutRule::Anywhere)] {
        let jobs = tokens::chunks(&text, rule, 997, 331);
        assert!(jobs.len() > 150, "{rule:?}: {} jobs", jobs.len());
        assert!(jobs.iter().all(|j| j.len() < 2 * 997 + 331), "{rule:?}: jobs stay near their size");
        assert!(jobs.concat() == text);
        let mut ids = Vec::new();
        for job in &jobs {
            ids.extend(tok.encode(job).unwrap());
        }
        let whole = tok.encode(&text).unwrap();
        let first_difference = ids.iter().zip(&whole).position(|(a, b)| a != b);
        assert!(ids == whole, "{rule:?}: {} ids against {}, first difference at {first_difference:?}", ids.len(), whole.len());
    }
    // A text with no cut point is cut anyway past the hard limit (16 jobs' worth), so memory stays bounded.
    let solid = "x".repeat(100_000);
    let jobs = tokens::chunks(&solid, CutRule::Gpt2, 1000, 700);
    assert!(jobs.len() >= 6 && jobs.iter().all(|j| j.len() <= 16 * 1000 + 700), "{} jobs", jobs.len());
    assert_eq!(tokens::chunks(&text, CutRule::Never, 1 << 30, 331).len(), 1, "a pipeline not known here is encoded whole");
}

#[test]
fn a_bpe_sample_spreads_over_the_corpus_and_is_the_whole_of_a_small_one() {
    let tmp = tempfile::tempdir().unwrap();
    // The first half says only "aaaa", the second only "bbbb".
    let text = format!("{}{}", "aaaa aaaa aaaa\n".repeat(4000), "bbbb bbbb bbbb\n".repeat(4000));
    let path = tmp.path().join("ab.txt");
    std::fs::write(&path, &text).unwrap();
    let corpus = Corpus::open(&[path], Some("text")).unwrap();
    let sampled = Tok::train_bpe_streaming(&corpus, 270, 6_000, false).unwrap();
    for word in [" aaaa", " bbbb"] {
        assert_eq!(sampled.encode(word).unwrap().len(), 1, "{word:?} was learned from a sample of both halves");
    }
    // A sample as large as the corpus is the corpus: the same tokenizer as from the text.
    let whole = Tok::train_bpe_streaming(&corpus, 270, text.len() as u64, false).unwrap();
    assert_eq!(whole.to_json().unwrap(), Tok::train_bpe(&text, 270).unwrap().to_json().unwrap());
    let char_streamed = Tok::train_char_streaming(&corpus, false).unwrap();
    assert_eq!(char_streamed.to_json().unwrap(), Tok::train_char(&text).unwrap().to_json().unwrap());
}

#[test]
fn a_changed_corpus_or_tokenizer_gets_its_own_token_file_and_resume_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let corpus = small_corpus(tmp.path(), 20_000);
    let (corpus_s, run) = (corpus.to_str().unwrap(), tmp.path().join("run"));
    let first = run_in(&cache, &tiny_train_flags(corpus_s, run.to_str().unwrap()));
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("tokenized"), "the first run tokenizes: {}", stderr(&first));
    assert_eq!(token_files(&cache).len(), 1);

    // Resuming on the same text reads the same file.
    let mut more = tiny_train_flags(corpus_s, run.to_str().unwrap());
    more.extend(["--resume", "--steps", "6"]);
    let resumed = run_in(&cache, &more);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(!stderr(&resumed).contains("tokenized"), "no second tokenization: {}", stderr(&resumed));
    // A second fresh run with the same settings takes the tokenizer and the tokens from the cache.
    let second = run_in(&cache, &tiny_train_flags(corpus_s, tmp.path().join("run2").to_str().unwrap()));
    assert!(second.status.success() && !stderr(&second).contains("tokenized"), "{}", stderr(&second));
    assert_eq!(token_files(&cache).len(), 1);

    // Another tokenizer: another file.
    let bpe_dir = tmp.path().join("bpe");
    let mut bpe = tiny_train_flags(corpus_s, bpe_dir.to_str().unwrap());
    bpe.extend(["--tokenizer", "bpe", "--vocab-size", "300"]);
    assert!(run_in(&cache, &bpe).status.success());
    assert_eq!(token_files(&cache).len(), 2);

    // The corpus edited: resume tokenizes it anew and refuses it; the checkpoint is untouched.
    let state = std::fs::read(run.join("state.json")).unwrap();
    std::fs::write(&corpus, format!("{}\nAND SO ON.\n", corpus_text(20_000))).unwrap();
    let last = more.len() - 1;
    more[last] = "8";
    let refused = run_in(&cache, &more);
    assert_clean_error(&refused, 1, "is not the text");
    assert_eq!(token_files(&cache).len(), 3, "the edited corpus has its own file");
    assert_eq!(std::fs::read(run.join("state.json")).unwrap(), state);
    // And commands that read the held-out split refuse it too.
    assert_clean_error(&run_in(&cache, &["calibrate", "--checkpoint", run.to_str().unwrap()]), 1, "has changed since the run was trained");
}

#[test]
fn a_truncated_or_damaged_token_file_is_rebuilt_and_a_corrupt_id_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let corpus = small_corpus(tmp.path(), 20_000);
    let run = tmp.path().join("run");
    let trained = run_in(&cache, &tiny_train_flags(corpus.to_str().unwrap(), run.to_str().unwrap()));
    assert!(trained.status.success(), "{}", stderr(&trained));
    let [file] = token_files(&cache).try_into().unwrap();
    let whole = std::fs::read(&file).unwrap();
    let calibrate = || run_in(&cache, &["calibrate", "--checkpoint", run.to_str().unwrap(), "--format", "json"]);
    let expected = calibrate();
    assert!(expected.status.success(), "{}", stderr(&expected));

    for (damage, why) in [(whole[..whole.len() - 7].to_vec(), "where its header says"), (b"junk".repeat(2000), "not a token file")] {
        std::fs::write(&file, &damage).unwrap();
        let rebuilt = calibrate();
        assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
        assert!(stderr(&rebuilt).contains(why) && stderr(&rebuilt).contains("rebuilding it"), "{}", stderr(&rebuilt));
        assert_eq!(rebuilt.stdout, expected.stdout, "the same figures from the rebuilt file");
        assert!(std::fs::read(&file).unwrap() == whole, "rebuilt byte for byte");
    }
    // What a killed run left (a temporary file no writer holds a lock on) is removed by the next
    // run that writes the file; one a live writer holds (here, this test) is left alone.
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let (stale, live) = (file.with_file_name(format!("{name}.4000000000.0.tmp")), file.with_file_name(format!("{name}.1.7.tmp")));
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::write(&live, b"partial").unwrap();
    let writer = std::fs::File::open(&live).unwrap();
    writer.lock().unwrap();
    std::fs::write(&file, b"junk").unwrap();
    assert!(calibrate().status.success());
    assert!(!stale.exists() && live.exists(), "the stale temporary is removed, the held one kept");
    drop(writer);
    std::fs::remove_file(&live).unwrap();

    // An id outside the vocabulary, in the validation tail: a one-line error naming it.
    let mut bad = whole.clone();
    let at = bad.len() - 100;
    bad[at] = 0xFF;
    std::fs::write(&file, &bad).unwrap();
    assert_clean_error(&calibrate(), 1, "the token file is corrupt: token");
}

#[test]
fn eval_tokens_bounds_the_last_evaluation_and_all_restores_the_split() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let corpus = small_corpus(tmp.path(), 20_000);
    let corpus = corpus.to_str().unwrap();
    // 20,000 char tokens: a validation tail of 2,000, 124 tiles of the 16-token context.
    let val_tiles = (2000 - 16) / 16 + 1;
    for (flag, targets) in [(Some("64"), 64), (Some("100"), 96), (Some("all"), val_tiles * 16), (None, val_tiles * 16)] {
        let run = tmp.path().join(format!("run-{}", flag.unwrap_or("default")));
        let mut flags = tiny_train_flags(corpus, run.to_str().unwrap());
        flags.extend(["--format", "json"]);
        if let Some(n) = flag {
            flags.extend(["--eval-tokens", n]);
        }
        let o = run_in(&cache, &flags);
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["val_tokens"], targets, "{flag:?}");
        assert_eq!(last_metrics(&run)["val_tokens"], targets, "{flag:?}: the metrics record says what it covered");
        // Earlier evaluations keep their fixed subset: 2 batches of 4 windows.
        let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["val_tokens"], 2 * 4 * 16);
    }
    let bad_dir = tmp.path().join("bad");
    for bad in ["0", "lots", "-5"] {
        let mut flags = tiny_train_flags(corpus, bad_dir.to_str().unwrap());
        flags.extend(["--eval-tokens", bad]);
        assert_clean_error(&run_in(&cache, &flags), 2, "--eval-tokens");
    }
}

#[test]
fn a_run_trains_resumes_and_reads_its_split_from_several_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let docs = documents(tmp.path());
    let text = corpus_text(30_000);
    let (head, tail) = text.split_at(15_000);
    std::fs::write(docs.join("sub/c.jsonl"), format!("{}\n", serde_json::json!({ "text": head }))).unwrap();
    let plain = tmp.path().join("tail.txt");
    std::fs::write(&plain, tail).unwrap();
    let run = tmp.path().join("run");
    let mut flags = tiny_train_flags(docs.to_str().unwrap(), run.to_str().unwrap());
    let insert = flags.iter().position(|f| *f == "--out").unwrap();
    flags.insert(insert, plain.to_str().unwrap());
    let o = run_in(&cache, &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["corpus"], serde_json::json!([docs, plain]));
    // The recorded fingerprint is of the joined documents.
    let joined = Corpus::open(&[docs.clone(), plain.clone()], Some("text")).unwrap().read_to_string().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["corpus_hash"], corpus_hash(&joined));
    // Resume and calibrate read the same documents back.
    let mut more = flags.clone();
    more.extend(["--resume", "--steps", "6"]);
    let resumed = run_in(&cache, &more);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    // The held-out split is the tail of the joined documents' tokens.
    let loaded = thermoformer::checkpoint::load(&run, &candle_core::Device::Cpu).unwrap();
    let (train, model) = (&loaded.config.train, &loaded.config.model);
    let file = tokenize_in(Some(&cache), &Corpus::open(&train.corpus, train.json_field()).unwrap(), &loaded.tokenizer, false).unwrap();
    assert_eq!(file.header().text_hash, state["corpus_hash"].as_str().unwrap());
    let splits = data::Splits::new(file, train.val_fraction, model.context, "docs").unwrap();
    let ids = loaded.tokenizer.encode(&joined).unwrap();
    let n_val = (ids.len() as f64 * TrainConfig::default().val_fraction).round() as usize;
    assert_eq!(splits.val().to_vec().unwrap(), ids[ids.len() - n_val..]);
    assert_eq!(splits.train().to_vec().unwrap(), ids[..ids.len() - n_val]);
    let calibrated = run_in(&cache, &["calibrate", "--checkpoint", run.to_str().unwrap()]);
    assert!(calibrated.status.success(), "{}", stderr(&calibrated));
}
