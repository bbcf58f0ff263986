//! Golden test against an independent PyTorch implementation: the values that
//! `scripts/crosscheck_torch.py --write-expected` computed in float64 PyTorch from the committed
//! fixture checkpoints (tests/fixtures/crosscheck with learned positions, crosscheck_rope with
//! rotary ones), compared with thermoformer's, without PyTorch.

use std::path::Path;

use thermoformer::golden::{self, Golden};

#[test]
fn thermoformer_agrees_with_the_pytorch_reference() {
    check("crosscheck");
}

/// The same against PyTorch's rotary phases, written independently as complex multiplication.
#[test]
fn rotary_positions_agree_with_the_pytorch_reference() {
    check("crosscheck_rope");
}

fn check(fixture: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(expected["texts"].clone()).unwrap();
    let ours: Golden = golden::compute(&dir, &texts).unwrap();
    let ours = serde_json::to_value(&ours).unwrap();
    assert_eq!(ours["ids"], expected["ids"], "tokenization agrees with the Python tokenizers package");
    for (key, tolerance) in [("logits", 1e-4), ("energies", 1e-4), ("attention", 1e-5), ("loss", 1e-5), ("grads", 1e-5)] {
        let d = golden::max_abs_diff(&ours[key], &expected[key]).unwrap_or_else(|| panic!("{key}: shapes differ"));
        println!("{fixture} {key}: largest |thermoformer - pytorch| = {d:.3e}");
        assert!(d <= tolerance, "{fixture} {key}: {d} > {tolerance}");
    }
    // The check has teeth: the gradients are far larger than the tolerance.
    let g = golden::max_abs_diff(&expected["grads"], &serde_json::to_value(zeroed(&expected["grads"])).unwrap()).unwrap();
    assert!(g > 1e-2, "largest gradient {g}");
}

fn zeroed(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(_) => serde_json::json!(0.0),
        serde_json::Value::Array(a) => a.iter().map(zeroed).collect(),
        serde_json::Value::Object(o) => o.iter().map(|(k, x)| (k.clone(), zeroed(x))).collect(),
        other => other.clone(),
    }
}
