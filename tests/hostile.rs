//! Hostile model files (tests/fixtures/hostile, made by scripts/make_hostile_fixtures.py): each
//! tries to make the importer spend unbounded memory or recursion, and each is refused with one
//! line before any of it is spent. Without the checks in `src/import/guard.rs`, the depth bomb
//! overflows the stack when the parsed pickle is dropped, the billion laughs and the shape past
//! its storage allocate 2^40 objects or 16 GiB, and the zip bomb inflates 512 MiB.

mod common;

use std::path::{Path, PathBuf};

use thermoformer::import::guard;

fn hostile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile").join(name)
}

fn good(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

fn import(src: &Path, meta: &Path) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    common::run(&["import", src.to_str().unwrap(), "--meta", meta.to_str().unwrap(), "--out", tmp.path().join("run").to_str().unwrap()])
}

#[test]
fn a_tensor_whose_shape_runs_past_its_storage_is_refused() {
    let out = import(&hostile("shape-past-storage.pt"), &good("meta.pkl"));
    common::assert_clean_error(&out, 1, "needs 17179869184 bytes of its storage archive/data/0, which holds 16");
}

#[test]
fn a_zip_bomb_is_refused_by_its_declared_sizes() {
    let out = import(&hostile("zip-bomb.pt"), &good("meta.pkl"));
    common::assert_clean_error(&out, 1, "zip bomb");
}

#[test]
fn a_pickle_nested_100000_deep_is_refused() {
    let out = import(&good("nanogpt-bias/ckpt.pt"), &hostile("depth-bomb-meta.pkl"));
    common::assert_clean_error(&out, 1, "nest more than 256 deep");
}

#[test]
fn a_billion_laughs_of_memo_copies_is_refused() {
    let out = import(&good("nanogpt-bias/ckpt.pt"), &hostile("laughs-meta.pkl"));
    common::assert_clean_error(&out, 1, "objects (memo copies counted)");
}

#[test]
fn the_pickle_check_passes_real_pickles_and_bounds_hostile_ones() {
    // nanoGPT's meta.pkl (protocol 4, with its memo and frames) passes; so does every shape of
    // nesting up to the bound, and one level past it does not.
    let meta = std::fs::read(good("meta.pkl")).unwrap();
    guard::check_pickle(&meta, "meta.pkl").unwrap();
    let nested = |n: usize| [b"\x80\x02".to_vec(), vec![b']'; n + 1], vec![b'a'; n], b".".to_vec()].concat();
    guard::check_pickle(&nested(guard::MAX_DEPTH as usize), "deep").unwrap();
    assert!(guard::check_pickle(&nested(guard::MAX_DEPTH as usize + 1), "deeper").is_err());
    // Malformed streams: no STOP, a truncated argument, an unknown opcode, a GET never PUT.
    for (bad, why) in [
        (&b"\x80\x02]"[..], "no STOP"),
        (&b"\x80\x02X\xff\xff\x00\x00ab."[..], "inside an argument"),
        (&b"\x80\x02\xff."[..], "unknown opcode"),
        (&b"\x80\x02h\x07."[..], "never PUT"),
        (&b"\x80\x02]]."[..], "2 items"),
    ] {
        let e = guard::check_pickle(bad, "x").unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn a_tokenizer_json_that_panics_the_tokenizers_crate_is_one_line_in_every_reader() {
    // Found by fuzzing (tests/fixtures/fuzz/tokenizer/): tokenizers 0.22 meets an `expect` on a
    // decoder it cannot read. Through each importer that reads a tokenizer.json and through a run
    // directory's, the answer is one line naming the file, not a panic.
    let finding = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/tokenizer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("crash-"))
        .expect("the saved finding");
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (k, src) in ["families/llama", "import/gpt2-tied"].iter().enumerate() {
        let dir = tmp.path().join(format!("src{k}"));
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(fixtures.join(src)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        std::fs::copy(&finding, dir.join("tokenizer.json")).unwrap();
        let out = common::run(&["import", dir.to_str().unwrap(), "--out", tmp.path().join(format!("run{k}")).to_str().unwrap()]);
        common::assert_clean_error(&out, 1, "tokenizer.json");
    }
    let out = common::run(&["import", fixtures.join("import/nanogpt-bias/ckpt.pt").to_str().unwrap(), "--tokenizer", finding.to_str().unwrap(), "--out", tmp.path().join("run-n").to_str().unwrap()]);
    common::assert_clean_error(&out, 1, "--tokenizer");
}
