//! Langevin sampling (ULA and MALA) of exp(-E/T)/Z at several temperatures, against the exact law:
//! a 1-D double well E = (x^2 - 1)^2 and a 2-D mixture of three Gaussians E = -ln sum_k w_k
//! exp(-|x - mu_k|^2 / (2 s^2)). The energies are closures on candle tensors; gradients come from
//! autodiff.
//!
//!   cargo run --release --example langevin

use anyhow::Result;
use candle_core::{Device, Tensor};
use thermoformer::physics::langevin::{mala, tv_distance_1d, ula, LangevinOptions};

const MODES: [([f64; 2], f64); 3] = [([-1.5, 0.0], 0.5), ([1.5, 0.0], 0.3), ([0.0, 2.0], 0.2)];
const S: f64 = 0.5;

fn double_well(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.sqr()? - 1.0)?.sqr()?.sum_all()
}

fn mixture(x: &Tensor) -> candle_core::Result<Tensor> {
    let dev = x.device();
    let mu = Tensor::new(&[[MODES[0].0[0], MODES[0].0[1]], [MODES[1].0[0], MODES[1].0[1]], [MODES[2].0[0], MODES[2].0[1]]], dev)?; // (3, 2)
    let ln_w = Tensor::new(&[MODES[0].1.ln(), MODES[1].1.ln(), MODES[2].1.ln()], dev)?; // (3,)
    let d2 = mu.broadcast_sub(&x.unsqueeze(0)?)?.sqr()?.sum(1)?; // (3,)
    let logits = (ln_w - (d2 / (2.0 * S * S))?)?;
    let m = logits.max(0)?;
    // -logsumexp, stable
    (logits.broadcast_sub(&m)?.exp()?.sum_all()?.log()? + m)?.neg()
}

fn mixture_energy(x: f64, y: f64) -> f64 {
    -MODES.iter().map(|(mu, w)| w * (-((x - mu[0]).powi(2) + (y - mu[1]).powi(2)) / (2.0 * S * S)).exp()).sum::<f64>().ln()
}

fn bar(p: f64, scale: f64) -> String {
    "#".repeat((p * scale).round() as usize)
}

fn main() -> Result<()> {
    println!("1-D double well E = (x^2 - 1)^2: histograms of 20,000 samples against exp(-E/T)/Z");
    let e1 = |x: f64| (x * x - 1.0).powi(2);
    for t in [0.2, 0.5, 1.0] {
        let o = LangevinOptions { step: 0.05, temperature: t, samples: 20_000, burn_in: 1000, thin: 5, seed: 1 };
        let m = mala(double_well, &[1.0], &o)?;
        let u = ula(double_well, &[1.0], &o)?;
        let xs_m: Vec<f64> = m.samples.iter().map(|s| s[0]).collect();
        let xs_u: Vec<f64> = u.samples.iter().map(|s| s[0]).collect();
        let right = xs_m.iter().filter(|&&x| x > 0.0).count() as f64 / xs_m.len() as f64;
        println!(
            "\nT = {t}: share of MALA samples in the right well {right:.3} (exact 0.5; crossings need exp(-1/T) = {:.4})",
            (-1.0 / t).exp()
        );
        println!(
            "T = {t}: total variation to the exact law (40 bins on [-2.5, 2.5]) MALA {:.3} (acceptance {:.1}%), ULA {:.3}",
            tv_distance_1d(&xs_m, e1, t, -2.5, 2.5, 40)?,
            100.0 * m.acceptance,
            tv_distance_1d(&xs_u, e1, t, -2.5, 2.5, 40)?
        );
        println!("{:>6} {:>7} {:>7}  exact | MALA", "x", "exact", "MALA");
        let (lo, w, bins) = (-2.0, 0.25, 16);
        let z: f64 = (0..4000).map(|i| (-e1(-3.0 + 6.0 * (i as f64 + 0.5) / 4000.0) / t).exp() * 6.0 / 4000.0).sum();
        for b in 0..bins {
            let a = lo + w * b as f64;
            let exact = (0..50).map(|k| (-e1(a + w * (k as f64 + 0.5) / 50.0) / t).exp() * w / 50.0).sum::<f64>() / z;
            let got = xs_m.iter().filter(|&&x| x >= a && x < a + w).count() as f64 / xs_m.len() as f64;
            println!("{:>6.2} {exact:>7.3} {got:>7.3}  {:<30}|{}", a + w / 2.0, bar(exact, 100.0), bar(got, 100.0));
        }
    }

    println!("\n2-D mixture of Gaussians (weights 0.5, 0.3, 0.2, s = 0.5): share of samples nearest each mode");
    println!("{:>5} {:>8} {:>28} {:>28} {:>8}", "T", "sampler", "sampled shares", "exact shares", "TV 2-D");
    for t in [0.5, 1.0, 2.0] {
        // Exact law on a grid, shares of the three nearest-mode cells, and the 2-D histogram TV.
        let (lo, hi, n) = (-4.0, 5.0, 90);
        let h = (hi - lo) / n as f64;
        let cell = |x: f64, y: f64| -> usize {
            (0..3).min_by(|&a, &b| {
                let d = |k: usize| (x - MODES[k].0[0]).powi(2) + (y - MODES[k].0[1]).powi(2);
                d(a).total_cmp(&d(b))
            }).unwrap()
        };
        let mut grid = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                let (x, y) = (lo + h * (i as f64 + 0.5), lo + h * (j as f64 + 0.5));
                grid[i * n + j] = (-mixture_energy(x, y) / t).exp();
            }
        }
        let z: f64 = grid.iter().sum();
        let mut exact = [0f64; 3];
        for i in 0..n {
            for j in 0..n {
                exact[cell(lo + h * (i as f64 + 0.5), lo + h * (j as f64 + 0.5))] += grid[i * n + j] / z;
            }
        }
        for (name, chain) in [
            ("MALA", mala(mixture, &[0.0, 0.0], &LangevinOptions { step: 0.05, temperature: t, samples: 20_000, burn_in: 1000, thin: 10, seed: 2 })?),
            ("ULA", ula(mixture, &[0.0, 0.0], &LangevinOptions { step: 0.05, temperature: t, samples: 20_000, burn_in: 1000, thin: 10, seed: 2 })?),
        ] {
            let mut shares = [0f64; 3];
            let mut hist = vec![0f64; n * n];
            let k = chain.samples.len() as f64;
            for s in &chain.samples {
                shares[cell(s[0], s[1])] += 1.0 / k;
                let (i, j) = (((s[0] - lo) / h).floor(), ((s[1] - lo) / h).floor());
                if i >= 0.0 && j >= 0.0 && (i as usize) < n && (j as usize) < n {
                    hist[i as usize * n + j as usize] += 1.0 / k;
                }
            }
            // Coarse 2-D TV: 9 x 9 blocks of 10 x 10 cells, so that 20,000 samples fill them.
            let block = |v: &[f64], bi: usize, bj: usize| (0..10).flat_map(|a| (0..10).map(move |b| (a, b))).map(|(a, b)| v[(bi * 10 + a) * n + bj * 10 + b]).sum::<f64>();
            let exact_grid: Vec<f64> = grid.iter().map(|g| g / z).collect();
            let tv = 0.5 * (0..9).flat_map(|i| (0..9).map(move |j| (i, j))).map(|(i, j)| (block(&hist, i, j) - block(&exact_grid, i, j)).abs()).sum::<f64>();
            let fmt = |s: &[f64; 3]| format!("{:.3} {:.3} {:.3}", s[0], s[1], s[2]);
            println!("{t:>5} {name:>8} {:>28} {:>28} {tv:>8.3}   acceptance {:.1}%", fmt(&shares), fmt(&exact), 100.0 * chain.acceptance);
        }
    }
    println!("\nAt low T the modes are sampled in proportion to w_k^(1/T) (the heavy mode dominates) if the chain can cross the barriers;");
    println!("at high T the shares even out. Device: {:?}", Device::Cpu);
    Ok(())
}
