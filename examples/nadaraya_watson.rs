//! Nadaraya-Watson regression of a noisy sine through the model's attention code, as a
//! temperature sweep: a cold kernel (small h, T = 2h^2) follows the noise (variance), a hot one
//! flattens the sine towards its mean (bias); the fit error is smallest in between.
//!
//!   cargo run --release --example nadaraya_watson

use anyhow::Result;
use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use thermoformer::physics::nadaraya_watson::{direct, temperature, via_attention};

fn main() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let noise = Normal::new(0.0, 0.3)?;
    let two_pi = 2.0 * std::f64::consts::PI;
    let n = 200;
    let x: Vec<Vec<f64>> = (0..n).map(|_| vec![rng.random_range(0.0..two_pi)]).collect();
    let y: Vec<f64> = x.iter().map(|p| p[0].sin() + noise.sample(&mut rng)).collect();
    let grid: Vec<Vec<f64>> = (0..400).map(|i| vec![two_pi * (i as f64 + 0.5) / 400.0]).collect();
    println!("Noisy sine: {n} points, y = sin x + N(0, 0.3^2) on [0, 2 pi]; fit error against sin x on 400 grid points.");
    println!("{:>8} {:>10} {:>14} {:>14} {:>22}", "h", "T = 2h^2", "RMSE vs sin", "RMSE vs data", "|attention - direct|");
    for h in [0.01, 0.03, 0.1, 0.2, 0.3, 0.6, 1.0, 3.0, 10.0] {
        let fit = via_attention(&x, &y, &grid, h, &Device::Cpu)?;
        let check = direct(&x, &y, &grid, h)?;
        let on_data = via_attention(&x, &y, &x, h, &Device::Cpu)?;
        let rmse = |a: &[f64], b: &mut dyn Iterator<Item = f64>| (a.iter().zip(b).map(|(u, v)| (u - v).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        let err = rmse(&fit, &mut grid.iter().map(|p| p[0].sin()));
        let train = rmse(&on_data, &mut y.iter().copied());
        let gap = fit.iter().zip(&check).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{h:>8} {:>10.4} {err:>14.4} {train:>14.4} {gap:>22.1e}", temperature(h));
    }
    println!("Cold (small h): the fit passes through the noisy points (training error -> 0, variance).");
    println!("Hot (large h): every point weighs the same and the fit tends to the mean of y (bias).");
    Ok(())
}
