//! Output-temperature calibration: on data drawn from a known law the fitted T* recovers the
//! temperature the logits were scaled by, calibration improves, and `thermoformer calibrate`
//! reports the validation energy training reported.

mod common;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use thermoformer::physics::calibrate::{self, Predictions};

/// N rows of V logits z ~ N(0, 2^2) and targets drawn from softmax(z); the logits handed out are
/// z * scale, so softmax(logits / T) is the true law exactly at T = scale.
fn synthetic(n: usize, vocab: usize, scale: f32, seed: u64) -> Predictions {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 2.0).unwrap();
    let unit = Uniform::new(0.0f64, 1.0).unwrap();
    let (mut logits, mut targets) = (Vec::with_capacity(n * vocab), Vec::with_capacity(n));
    for _ in 0..n {
        let z: Vec<f32> = (0..vocab).map(|_| normal.sample(&mut rng)).collect();
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let w: Vec<f64> = z.iter().map(|&v| ((v - m) as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut u = unit.sample(&mut rng) * total;
        let y = w.iter().position(|&wi| {
            u -= wi;
            u <= 0.0
        });
        targets.push(y.unwrap_or(vocab - 1) as u32);
        logits.extend(z.iter().map(|v| v * scale));
    }
    Predictions::new(logits, targets, vocab).unwrap()
}

#[test]
fn the_fitted_temperature_recovers_the_scale_of_the_logits() {
    for scale in [0.5f32, 1.0, 2.0] {
        let preds = synthetic(20_000, 12, scale, 1);
        let c = calibrate::calibrate(&preds, 15).unwrap();
        assert!((c.t_star / scale as f64 - 1.0).abs() < 0.04, "scale {scale}: T* = {}", c.t_star);
        // T* is the minimum: the energy rises on either side, and never exceeds the T = 1 energy.
        for t in [c.t_star * 1.02, c.t_star / 1.02] {
            assert!(preds.energy(t) >= c.energy_after, "E({t}) < E(T*)");
        }
        assert!(c.energy_after <= c.energy_before + 1e-12);
        // The true law is calibrated: after fitting, the ECE is at the level of sampling noise.
        assert!(c.after.ece < 0.02, "scale {scale}: ECE after {}", c.after.ece);
        // Tempering keeps the argmax, so the accuracy does not move.
        assert_eq!(c.before.accuracy, c.after.accuracy);
    }
    // Over-confident logits (scale 2) are badly calibrated at T = 1 and fixed by T* = 2.
    let c = calibrate::calibrate(&synthetic(20_000, 12, 2.0, 2), 15).unwrap();
    assert!(c.before.ece > 0.08 && c.after.ece < 0.02, "ECE {} -> {}", c.before.ece, c.after.ece);
    // Under-confident logits (scale 0.5) likewise, with T* < 1.
    let c = calibrate::calibrate(&synthetic(20_000, 12, 0.5, 3), 15).unwrap();
    assert!(c.t_star < 1.0 && c.before.ece > 0.08 && c.after.ece < 0.02);
}

#[test]
fn reliability_bins_partition_the_tokens() {
    let preds = synthetic(5_000, 7, 1.3, 4);
    for bins in [1, 15, 40] {
        let r = preds.reliability(1.0, bins).unwrap();
        assert_eq!(r.bins.len(), bins);
        assert_eq!(r.bins.iter().map(|b| b.count).sum::<usize>(), preds.len());
        for b in r.bins.iter().filter(|b| b.count > 0) {
            assert!(b.confidence >= b.lower - 1e-12 && b.confidence <= b.upper + 1e-12, "{b:?}");
            assert!((0.0..=1.0).contains(&b.accuracy));
        }
        // ECE by its definition.
        let n = preds.len() as f64;
        let ece: f64 = r.bins.iter().filter(|b| b.count > 0).map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs()).sum();
        assert!((ece - r.ece).abs() < 1e-12);
    }
    // One bin: ECE is |accuracy - mean confidence|.
    let one = preds.reliability(1.0, 1).unwrap();
    assert!((one.ece - (one.bins[0].accuracy - one.bins[0].confidence).abs()).abs() < 1e-12);
}

#[test]
fn predictions_reject_inconsistent_input() {
    assert!(Predictions::new(vec![0.0; 5], vec![0, 1], 3).is_err());
    assert!(Predictions::new(vec![0.0; 6], vec![0, 3], 3).is_err());
    assert!(Predictions::new(vec![], vec![], 3).is_err());
}

#[test]
fn calibrate_reports_the_validation_energy_of_training() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::trained(tmp.path());
    let png = tmp.path().join("reliability.png");
    let o = common::run(&["calibrate", "--checkpoint", ck.to_str().unwrap(), "--json", "--png", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["calibration"];
    let before = c["energy_before"].as_f64().unwrap();
    assert!(c["energy_after"].as_f64().unwrap() <= before + 1e-12);
    // An interior optimum of the search, not a bound it ran into.
    let t_star = c["t_star"].as_f64().unwrap();
    let (lo, hi) = thermoformer::physics::calibrate::T_RANGE;
    assert!(t_star > lo * 1.01 && t_star < hi / 1.01, "T* = {t_star} sits on the search bound");
    assert_eq!(c["before"]["bins"].as_array().unwrap().len(), 15);
    // The energy at T = 1 is the validation CE of the run's last evaluation (the whole split).
    let metrics = std::fs::read_to_string(ck.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let val_ce = last["val_ce"].as_f64().unwrap();
    assert!((before - val_ce).abs() < 1e-4, "calibrate's E(T=1) {before} against training's val CE {val_ce}");
    common::assert_picture(&png, Some((640, 480)), 0.02, 8);

    // --format json is the same report as --json (its alias).
    let formatted = common::run(&["calibrate", "--checkpoint", ck.to_str().unwrap(), "--format", "json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&formatted.stdout).unwrap(), v);
    let table = common::run(&["calibrate", "--checkpoint", ck.to_str().unwrap(), "--bins", "10"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("before") && text.contains("after") && text.contains("T* = "), "{text}");
    common::assert_clean_error(&common::run(&["calibrate", "--checkpoint", ck.to_str().unwrap(), "--bins", "0"]), 2, "--bins");
    let missing = tmp.path().join("nothing");
    let o = common::run(&["calibrate", "--checkpoint", missing.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

#[test]
fn the_reading_of_t_star_says_which_side_of_one_it_is() {
    assert!(thermoformer::physics::calibrate::reading(1.3).starts_with("above 1: the model was over-confident"));
    assert!(thermoformer::physics::calibrate::reading(0.7).starts_with("below 1: the model was under-confident"));
    // Exactly 1 used to read "below 1: under-confident".
    assert!(thermoformer::physics::calibrate::reading(1.0).starts_with("exactly 1"), "{}", thermoformer::physics::calibrate::reading(1.0));
}
