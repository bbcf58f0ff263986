//! Energy per token as a function of how much context the model has seen.
//!
//! Every sequence starts with BOS, so the first token is predicted from nothing and pays roughly
//! the corpus's unigram entropy; each further token of context lowers the energy. This example
//! tiles the whole validation split with windows (BOS + context - 1 tokens), and prints the mean
//! energy -ln p at each position, the mean over all positions (what training logs as val CE) and
//! the mean with the BOS-only first position left out (the protocol of trainers without BOS, such
//! as nanoGPT, whose first prediction already has one token of context).
//!
//! cargo run --release --example context_energy -- [CHECKPOINT_DIR] [val|train]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use thermoformer::model::loss;
use thermoformer::{checkpoint, data};

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "checkpoints/shakespeare".into()));
    let dev = Device::Cpu;
    let run = checkpoint::load(&dir, &dev)?;
    let context = run.config.model.context;
    let hash = run.state.as_ref().map(|s| s.corpus_hash.as_str());
    let v = data::validation_split(&run.config, &run.tokenizer, hash, None).context("the run's corpus is needed for its validation split")?;
    let (val, train_split) = (v.splits.val(), v.splits.train());

    // Non-overlapping windows: each validation token is a target exactly once.
    let split_name = std::env::args().nth(2).unwrap_or_else(|| "val".into());
    let tokens = match split_name.as_str() {
        "val" => val,
        "train" => train_split.slice(0..val.len().min(train_split.len())), // a same-sized slice of the training head
        other => anyhow::bail!("unknown split {other:?}: use val or train"),
    };
    let starts: Vec<usize> = (0..=tokens.len() - context).step_by(context).collect();
    let mut sum = vec![0f64; context];
    let mut count = 0usize;
    for chunk in starts.chunks(32) {
        let batch = data::batch_at(tokens, chunk, context, run.tokenizer.bos(), &dev)?;
        let logits = run.model.forward(&batch.inputs)?.flatten_to(1)?; // (B*T, V)
        let energies = loss::token_energies(&logits, &batch.targets.flatten_all()?)?; // (B*T,)
        let e: Vec<f32> = energies.reshape((chunk.len(), context))?.sum(0)?.to_vec1()?;
        for (s, x) in sum.iter_mut().zip(e) {
            *s += x as f64;
        }
        count += chunk.len();
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
    println!("{count} windows of BOS + {} tokens over the {split_name} split of {}", context - 1, v.corpus);
    println!("position  context  energy (nats)");
    let mut p = 0;
    while p < context {
        println!("{p:>8}  {p:>7}  {:.4}", mean[p]);
        p = if p == 0 { 1 } else { p * 2 };
    }
    println!("{:>8}  {:>7}  {:.4}", context - 1, context - 1, mean[context - 1]);
    let all = mean.iter().sum::<f64>() / context as f64;
    let without_first = mean[1..].iter().sum::<f64>() / (context - 1) as f64;
    println!("mean over all positions (val_ce_bos):                 {all:.4} nats/token");
    println!("mean without the BOS-only position (val_ce, nanoGPT): {without_first:.4} nats/token");
    Ok(())
}
