//! Nadaraya-Watson regression computed from the distances and through the model's attention code.

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thermoformer::physics::nadaraya_watson::{bandwidth, direct, temperature, via_attention};

fn points(rng: &mut ChaCha8Rng, n: usize, d: usize, spread: f64) -> Vec<Vec<f64>> {
    (0..n).map(|_| (0..d).map(|_| rng.random_range(-spread..spread)).collect()).collect()
}

#[test]
fn attention_and_the_direct_estimate_agree_on_random_data() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (d, h) in [(1, 0.2), (3, 0.5), (3, 1.0), (8, 2.0), (2, 10.0)] {
        let x = points(&mut rng, 60, d, 2.0);
        let y: Vec<f64> = (0..60).map(|_| rng.random_range(-3.0..3.0)).collect();
        let q = points(&mut rng, 25, d, 2.5);
        let a = direct(&x, &y, &q, h).unwrap();
        let b = via_attention(&x, &y, &q, h, &Device::Cpu).unwrap();
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            assert!((u - v).abs() < 1e-5, "d {d}, h {h}, query {i}: direct {u}, attention {v}");
        }
    }
}

#[test]
fn a_narrow_kernel_returns_the_nearest_neighbours_label() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let x = points(&mut rng, 40, 2, 1.0);
    let y: Vec<f64> = (0..40).map(|i| i as f64).collect();
    let q = points(&mut rng, 30, 2, 1.0);
    let est = via_attention(&x, &y, &q, 1e-3, &Device::Cpu).unwrap();
    for (qi, e) in q.iter().zip(&est) {
        let dist = |p: &Vec<f64>| p.iter().zip(qi).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        let nearest = (0..40).min_by(|&i, &j| dist(&x[i]).total_cmp(&dist(&x[j]))).unwrap();
        assert!((e - y[nearest]).abs() < 1e-6, "estimate {e}, nearest neighbour's label {}", y[nearest]);
    }
}

#[test]
fn a_wide_kernel_returns_the_global_mean() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let x = points(&mut rng, 50, 3, 1.0);
    let y: Vec<f64> = (0..50).map(|_| rng.random_range(-1.0..4.0)).collect();
    let mean = y.iter().sum::<f64>() / 50.0;
    for e in via_attention(&x, &y, &points(&mut rng, 10, 3, 1.0), 1e4, &Device::Cpu).unwrap() {
        assert!((e - mean).abs() < 1e-6, "estimate {e}, mean {mean}");
    }
}

#[test]
fn temperature_is_twice_the_squared_bandwidth() {
    assert_eq!(temperature(0.5), 0.5);
    assert!((bandwidth(temperature(0.37)) - 0.37).abs() < 1e-15);
    // Halving h quarters T: the weights of a point at squared distance E scale as exp(-E / T).
    let x = vec![vec![0.0], vec![1.0]];
    let y = [0.0, 1.0];
    let at = |h: f64| direct(&x, &y, &[vec![0.0]], h).unwrap()[0];
    let want = |t: f64| (-1.0 / t).exp() / (1.0 + (-1.0 / t).exp());
    for h in [0.3, 0.6, 1.2] {
        assert!((at(h) - want(temperature(h))).abs() < 1e-12);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let x = vec![vec![0.0, 1.0]];
    assert!(direct(&x, &[1.0, 2.0], &[vec![0.0, 0.0]], 1.0).is_err(), "label count");
    assert!(direct(&x, &[1.0], &[vec![0.0]], 1.0).is_err(), "dimension");
    assert!(via_attention(&x, &[1.0], &[vec![0.0, 0.0]], 0.0, &Device::Cpu).is_err(), "h = 0");
}
