//! Langevin samplers against the Boltzmann law they should sample.

use candle_core::{Result, Tensor};
use thermoformer::physics::langevin::{mala, tv_distance_1d, ula, LangevinOptions};

fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0))
}

/// E = k |x|^2 / 2: the Boltzmann law at T is N(0, T / k) in every coordinate.
fn quadratic(k: f64) -> impl Fn(&Tensor) -> Result<Tensor> {
    move |x: &Tensor| x.sqr()?.sum_all()? * (k / 2.0)
}

fn double_well(x: &Tensor) -> Result<Tensor> {
    (x.sqr()? - 1.0)?.sqr()?.sum_all() // E = (x^2 - 1)^2
}

#[test]
fn on_a_quadratic_energy_mean_and_variance_follow_the_temperature() {
    let k = 2.0;
    for t in [0.5, 2.0] {
        let o = LangevinOptions { step: 0.05, temperature: t, samples: 4000, burn_in: 500, thin: 10, seed: 1 };
        for (name, chain) in [("mala", mala(quadratic(k), &[1.0, -1.0], &o).unwrap()), ("ula", ula(quadratic(k), &[1.0, -1.0], &o).unwrap())] {
            for d in 0..2 {
                let xs: Vec<f64> = chain.samples.iter().map(|s| s[d]).collect();
                let (m, v) = mean_var(&xs);
                let want = t / k;
                let n = xs.len() as f64;
                // Thinned every 10 moves of a chain that relaxes at rate eta k = 0.1 per move, the
                // samples are nearly independent: five standard errors.
                assert!(m.abs() < 5.0 * (want / n).sqrt(), "{name} T {t}: mean {m}");
                // ULA's variance is biased up by 1 / (1 - eta k / 2) = 1.05; MALA's is exact.
                let bias = if name == "ula" { 1.0 / (1.0 - o.step * k / 2.0) } else { 1.0 };
                assert!((v / (want * bias) - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "{name} T {t}: variance {v}, Boltzmann {want}");
            }
        }
    }
}

#[test]
fn mala_samples_the_double_well_law() {
    let t = 0.5;
    let o = LangevinOptions { step: 0.05, temperature: t, samples: 20_000, burn_in: 1000, thin: 5, seed: 2 };
    let chain = mala(double_well, &[1.0], &o).unwrap();
    let xs: Vec<f64> = chain.samples.iter().map(|s| s[0]).collect();
    let e = |x: f64| (x * x - 1.0).powi(2);
    let tv = tv_distance_1d(&xs, e, t, -2.5, 2.5, 40).unwrap();
    assert!(tv < 0.05, "total variation to exp(-E/T)/Z: {tv}");
    // The same samples are far from the law at another temperature: the test can tell.
    let wrong = tv_distance_1d(&xs, e, 2.0 * t, -2.5, 2.5, 40).unwrap();
    assert!(wrong > 2.0 * tv && wrong > 0.08, "TV at 2T {wrong}, at T {tv}");
    // Both wells are visited in proportion (the law is symmetric).
    let right = xs.iter().filter(|&&x| x > 0.0).count() as f64 / xs.len() as f64;
    assert!((right - 0.5).abs() < 0.1, "fraction in the right well {right}");
}

#[test]
fn mala_acceptance_falls_as_the_step_grows() {
    let mut last = 1.0;
    for step in [0.005, 0.05, 0.3, 1.0] {
        let o = LangevinOptions { step, temperature: 0.5, samples: 2000, burn_in: 0, thin: 1, seed: 3 };
        let a = mala(double_well, &[1.0], &o).unwrap().acceptance;
        assert!(a < last, "step {step}: acceptance {a} not below {last}");
        if step == 0.005 {
            assert!(a > 0.95, "a small step is almost always accepted: {a}");
        }
        last = a;
    }
    assert!(last < 0.5, "a large step is mostly rejected: {last}");
}

#[test]
fn with_no_force_a_step_is_gaussian_noise_of_std_sqrt_2_eta_t() {
    let (eta, t) = (0.02, 1.5);
    let flat = |x: &Tensor| x.sum_all()? * 0.0;
    let o = LangevinOptions { step: eta, temperature: t, samples: 5000, burn_in: 0, thin: 1, seed: 4 };
    let chain = ula(flat, &[0.0], &o).unwrap();
    let xs: Vec<f64> = chain.samples.iter().map(|s| s[0]).collect();
    let steps: Vec<f64> = xs.windows(2).map(|w| w[1] - w[0]).collect();
    let (m, v) = mean_var(&steps);
    let want = 0.06; // 2 eta T
    assert!(m.abs() < 5.0 * (want / steps.len() as f64).sqrt(), "mean step {m}");
    assert!((v / want - 1.0).abs() < 5.0 * (2.0 / steps.len() as f64).sqrt(), "step variance {v}, 2 eta T = {want}");
    assert_eq!(chain.acceptance, 1.0);
}

#[test]
fn bad_settings_are_errors() {
    let o = LangevinOptions { step: -1.0, ..LangevinOptions::default() };
    assert!(ula(double_well, &[0.0], &o).is_err());
    let o = LangevinOptions { temperature: 0.0, ..LangevinOptions::default() };
    assert!(mala(double_well, &[0.0], &o).is_err());
    assert!(mala(double_well, &[], &LangevinOptions::default()).is_err());
}
