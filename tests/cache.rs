//! `thermoformer cache list` and `clean` on a cache of its own: what a run leaves, what killed
//! runs leave, and what a running writer holds.

mod common;

use std::path::Path;

use serde_json::Value;

/// The binary with `args`, on the cache `cache`.
fn run_in(cache: &Path, args: &[&str]) -> std::process::Output {
    common::thermoformer().env("THERMOFORMER_CACHE", cache).args(args).output().unwrap()
}

fn list(cache: &Path) -> Vec<Value> {
    let o = run_in(cache, &["cache", "list", "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["entries"].as_array().unwrap().clone()
}

fn names(entries: &[Value], kind: &str) -> Vec<String> {
    entries.iter().filter(|e| e["kind"] == kind).map(|e| Path::new(e["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn the_cache_lists_and_cleans_what_runs_leave_and_keeps_what_a_writer_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let corpus = common::small_corpus(tmp.path(), 4000);
    let out = tmp.path().join("run");
    let train = |cache: &Path| {
        let o = run_in(cache, &common::tiny_train_flags(corpus.to_str().unwrap(), out.to_str().unwrap()).into_iter().chain(["--overwrite"]).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train(&cache);
    let entries = list(&cache);
    let (tokens, tokenizers) = (names(&entries, "tokens"), names(&entries, "tokenizer"));
    assert_eq!((tokens.len(), tokenizers.len()), (1, 1), "{entries:?}");
    for e in &entries {
        assert_eq!(e["corpus"].as_str(), Some(corpus.to_str().unwrap()), "each entry names its corpus: {e}");
        assert!(e["bytes"].as_u64().unwrap() > 0 && e["age_seconds"].as_u64().is_some());
    }
    // A killed tokenizer writer's temporary file is removed by the next run on that corpus.
    let stale = cache.join(format!("{}.4242.0.tmp", tokenizers[0]));
    std::fs::write(&stale, "half a tokenizer").unwrap();
    assert_eq!(names(&list(&cache), "stale").len(), 1);
    train(&cache);
    assert!(!stale.exists(), "the next run removed the dead writer's temporary file");
    // One a writer holds (locked) is listed as being written and survives every clean; a dead
    // one goes even with --older-than.
    let held_path = cache.join(format!("{}.77.0.tmp", tokens[0]));
    let held = std::fs::File::create(&held_path).unwrap();
    held.lock().unwrap();
    std::fs::write(&stale, "x").unwrap();
    let entries = list(&cache);
    assert_eq!((names(&entries, "writing").len(), names(&entries, "stale").len()), (1, 1), "{entries:?}");
    let o = run_in(&cache, &["cache", "clean", "--older-than", "30d", "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 1, "only the stale file is old enough to go: {v}");
    assert!(!stale.exists() && held_path.exists());
    assert_eq!(list(&cache).len(), 3);
    let o = run_in(&cache, &["cache", "clean"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("removed 2 files"), "{text}");
    let left = list(&cache);
    assert_eq!(names(&left, "writing").len(), 1, "the held file stays: {left:?}");
    assert_eq!(left.len(), 1);
    drop(held);
    // Nonsense ages are usage errors; an empty or missing cache lists nothing.
    common::assert_clean_error(&run_in(&cache, &["cache", "clean", "--older-than", "3 fortnights"]), 2, "--older-than");
    assert!(list(&tmp.path().join("nowhere")).is_empty());
}
