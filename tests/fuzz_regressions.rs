//! Every input the fuzzers found to crash, hang or exhaust a parser (`tests/fixtures/fuzz/TARGET/`,
//! saved by `scripts/fuzz.sh`), and the hostile fixtures, fed again to the same parsers: each must
//! now return, with a value or an error. A target's folder may be empty when its fuzzing found
//! nothing; the folder names every target so that a new one is not forgotten.

use std::path::Path;

use thermoformer::untrusted::{feed, Target};

#[test]
fn every_saved_finding_is_answered_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut fed = 0;
    for target in Target::ALL {
        let dir = root.join(target.name());
        assert!(dir.is_dir(), "tests/fixtures/fuzz/{} is missing: every fuzz target has a folder of findings", target.name());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == ".gitkeep") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let answer = feed(target, &data);
            println!("{}: {} -> {}", target.name(), path.display(), answer.as_ref().map_or_else(|e| format!("error: {e:#}"), |_| "ok".into()));
            fed += 1;
        }
    }
    println!("{fed} saved findings fed again");
}

#[test]
fn the_hostile_fixtures_are_refused_by_the_fuzzed_parsers_too() {
    let hostile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    for (target, file) in [
        (Target::TorchZip, "zip-bomb.pt"),
        (Target::TorchZip, "shape-past-storage.pt"),
        (Target::MetaPickle, "depth-bomb-meta.pkl"),
        (Target::MetaPickle, "laughs-meta.pkl"),
    ] {
        let data = std::fs::read(hostile.join(file)).unwrap();
        assert!(feed(target, &data).is_err(), "{file} is refused");
    }
    // And the real files pass.
    let import = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import");
    feed(Target::TorchZip, &std::fs::read(import.join("nanogpt-bias/ckpt.pt")).unwrap()).unwrap();
    feed(Target::MetaPickle, &std::fs::read(import.join("meta.pkl")).unwrap()).unwrap();
    // (GPT-2's tokenizer.json has no <|bos|>: it loads as an import, with a start from outside.)
    let gpt2 = std::fs::read(import.join("gpt2-tied/tokenizer.json")).unwrap();
    let json = std::str::from_utf8(&gpt2).unwrap();
    thermoformer::Tok::from_json_with_start(json, &thermoformer::config::Start::Text("\n".into())).unwrap();
    feed(Target::ApiBody, &[&[0u8][..], br#"{"text": "First"}"#].concat()).unwrap();
}
