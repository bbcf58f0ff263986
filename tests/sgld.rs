//! SGLD training: at T = 0 the update is plain SGD, the noise has standard deviation
//! sqrt(2 eta T), the noise is a function of (seed, step) so a resumed run is exact, and
//! `train --optimizer sgld` trains end to end.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use thermoformer::checkpoint;
use thermoformer::train::optim::{Sgld, SgldConfig};
use thermoformer::model::params::Param;
use thermoformer::train::{self, TrainRequest};
use thermoformer::TrainOptions;

/// A matrix of `n` parameters with a linear loss sum(c * w), so the gradient is exactly c.
fn setup(n: usize) -> (Var, Vec<Param>, Tensor) {
    let dev = Device::Cpu;
    let w0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let w = Var::from_tensor(&Tensor::from_vec(w0, (n / 4, 4), &dev).unwrap()).unwrap();
    let c: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
    let c = Tensor::from_vec(c, (n / 4, 4), &dev).unwrap();
    (w.clone(), vec![Param { name: "w".into(), var: w }], c)
}

/// Parameters after one SGLD step from `setup(n)`.
fn after_one_step(n: usize, cfg: SgldConfig, lr: f64, t0: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (w, params, c) = setup(n);
    let before = common::flat(w.as_tensor());
    let grads = (w.as_tensor() * &c).unwrap().sum_all().unwrap().backward().unwrap();
    Sgld::resume(&params, cfg, t0).step(&grads, lr, 1.0).unwrap();
    (before, common::flat(&c), common::flat(w.as_tensor()))
}

#[test]
fn at_zero_temperature_sgld_is_plain_sgd() {
    let lr = 0.3;
    let cfg = SgldConfig { temperature: 0.0, weight_decay: 0.0, seed: 1 };
    let (before, g, after) = after_one_step(400, cfg, lr, 0);
    for ((w, g), a) in before.iter().zip(&g).zip(&after) {
        assert_eq!(*a, w - (lr as f32) * g, "theta - lr g exactly");
    }
    // With weight decay, the decoupled shrink of AdamW: theta (1 - lr wd) - lr g.
    let (before, g, after) = after_one_step(400, SgldConfig { weight_decay: 0.1, ..cfg }, lr, 0);
    for ((w, g), a) in before.iter().zip(&g).zip(&after) {
        assert!((a - (w * (1.0 - 0.03) - 0.3 * g)).abs() < 1e-6);
    }
}

#[test]
fn the_noise_has_standard_deviation_sqrt_2_eta_t() {
    let n = 40_000;
    for (lr, temp) in [(0.01, 0.5), (0.2, 1e-3), (1e-3, 2.0)] {
        let cfg = SgldConfig { temperature: temp, weight_decay: 0.0, seed: 7 };
        let (before, g, after) = after_one_step(n, cfg, lr, 0);
        // Subtract the SGD part; what is left is the noise.
        let noise: Vec<f64> = before.iter().zip(&g).zip(&after).map(|((w, g), a)| (*a as f64) - (*w as f64 - lr * *g as f64)).collect();
        let mean = noise.iter().sum::<f64>() / n as f64;
        let var = noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let expected = (2.0 * lr * temp).sqrt(); // the Euler-Maruyama step of dtheta = ... + sqrt(2T) dW
        // The sample standard deviation of 40,000 normals is within 1.5% (4 sigma) of the truth.
        assert!((var.sqrt() / expected - 1.0).abs() < 0.015, "lr {lr}, T {temp}: std {} against {expected}", var.sqrt());
        assert!(mean.abs() < 4.0 * expected / (n as f64).sqrt(), "noise mean {mean}");
        // Gaussian tails: about 4.55% of the draws beyond 2 sigma.
        let beyond = noise.iter().filter(|x| x.abs() > 2.0 * expected).count() as f64 / n as f64;
        assert!((beyond - 0.0455).abs() < 0.006, "{beyond} beyond 2 sigma");
    }
}

#[test]
fn the_noise_is_fixed_by_the_seed_and_the_step() {
    let cfg = SgldConfig { temperature: 0.1, weight_decay: 0.0, seed: 3 };
    let (_, _, a) = after_one_step(64, cfg, 0.1, 5);
    let (_, _, b) = after_one_step(64, cfg, 0.1, 5);
    let (_, _, c) = after_one_step(64, cfg, 0.1, 6);
    let (_, _, d) = after_one_step(64, SgldConfig { seed: 4, ..cfg }, 0.1, 5);
    assert_eq!(a, b);
    assert_ne!(a, c, "another step draws other noise");
    assert_ne!(a, d, "another seed draws other noise");
}

/// A small run with SGLD at T = 1e-5 and SGLD's own default learning rate.
fn options(corpus: &Path, steps: usize) -> TrainOptions {
    TrainOptions {
        layers: Some(1),
        lr: None,
        optimizer: Some(thermoformer::config::OptimizerKind::Sgld),
        sgld_temperature: Some(1e-5),
        ..common::small_run_options(corpus, steps)
    }
}

fn request(options: TrainOptions, out: &Path, resume: bool, stop_after: Option<usize>) -> TrainRequest {
    TrainRequest { stop_after, ..common::train_request(options, out, resume) }
}

#[test]
fn sgld_training_lowers_the_loss_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 40_000);
    let straight = tmp.path().join("straight");
    let halves = tmp.path().join("halves");
    let report = train::train(&request(options(&corpus, 60), &straight, false, None), &Device::Cpu).unwrap();
    let saved = checkpoint::load_resumable(&straight, &Device::Cpu).unwrap();
    assert_eq!(saved.config.train.optimizer, thermoformer::config::OptimizerKind::Sgld);
    assert_eq!(saved.config.train.lr, thermoformer::config::SGLD_LR, "sgld gets its own default learning rate");
    assert_eq!(saved.config.train.weight_decay, 0.0, "and no weight decay unless asked");
    assert!(report.val_ce < 3.4, "val CE {} after 60 SGLD steps (ln 66 = 4.19 at the start)", report.val_ce);

    train::train(&request(options(&corpus, 60), &halves, false, Some(30)), &Device::Cpu).unwrap();
    train::train(&request(TrainOptions::default(), &halves, true, None), &Device::Cpu).unwrap();
    let weights = |dir: &Path| std::fs::read(dir.join(checkpoint::MODEL)).unwrap();
    assert!(weights(&straight) == weights(&halves), "a resumed SGLD run draws the noise of an uninterrupted one");
}

#[test]
fn sgld_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 4000);
    let out = tmp.path().join("run");
    let (corpus, out) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    let with = |extra: &[&'static str]| {
        let mut f = common::tiny_train_flags(corpus, out);
        f.extend_from_slice(extra);
        common::run(&f)
    };
    common::assert_clean_error(&with(&["--sgld-temperature", "0.1"]), 2, "--optimizer sgld");
    common::assert_clean_error(&with(&["--optimizer", "sgld", "--sgld-temperature", "-1"]), 2, "--sgld-temperature");
    common::assert_clean_error(&with(&["--optimizer", "annealing"]), 2, "annealing");
    let o = with(&["--optimizer", "sgld", "--sgld-temperature", "1e-6"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut again = common::tiny_train_flags(corpus, out);
    again.extend(["--resume", "--steps", "6", "--optimizer", "adamw"]);
    common::assert_clean_error(&common::run(&again), 2, "--optimizer");
}
