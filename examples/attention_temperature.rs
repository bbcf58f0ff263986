//! Attention as a heat bath: sweep every head's temperature T and watch the attention entropy.
//!
//! Loads a trained run, overrides every head's T at inference (the weights are untouched), and for
//! each T prints the mean attention entropy H of each layer over the queries of a text (the first
//! query, with a single allowed key, left out), next to ln(number of allowed keys), the entropy of
//! the uniform row that T -> infinity approaches.
//!
//! cargo run --release --example attention_temperature -- [CHECKPOINT_DIR] [TEXT]

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use thermoformer::checkpoint;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "checkpoints/shakespeare".into()));
    let text = args.next().unwrap_or_else(|| "First Citizen:\nBefore we proceed any further, hear me speak.".into());
    let dev = Device::Cpu;
    let mut run = checkpoint::load(&dir, &dev)?;
    let cfg = run.config.model.clone();
    let mut ids = run.tokenizer.encode_with_bos(&text)?;
    ids.truncate(cfg.context);
    let t = ids.len();
    let input = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?; // (1, T)
    let uniform: f64 = (1..t).map(|i| ((i + 1) as f64).ln()).sum::<f64>() / (t - 1) as f64;

    println!("{t} tokens; trained temperatures {:?}", run.model.temperatures()?);
    print!("{:>8}", "T");
    for l in 0..cfg.n_layer {
        print!("  layer {l} H");
    }
    println!("  uniform ln(keys)");
    for temp in [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0] {
        run.model.set_temperatures(&vec![vec![temp; cfg.n_head]; cfg.n_layer])?;
        let (_, stats) = run.model.forward_with_stats(&input)?;
        print!("{temp:>8}");
        for s in &stats {
            let alpha: Vec<f32> = s.alpha.flatten_all()?.to_vec1()?; // (1, H, T, T) flattened
            let mut h = 0f64;
            for (r, row) in alpha.chunks(t).enumerate() {
                if r % t == 0 {
                    continue; // the first query has one key: H = 0 at any T
                }
                h -= row.iter().filter(|&&p| p > 0.0).map(|&p| p as f64 * (p as f64).ln()).sum::<f64>();
            }
            print!("  {:>9.4}", h / (cfg.n_head * (t - 1)) as f64);
        }
        println!("  {uniform:>16.4}");
    }
    Ok(())
}
