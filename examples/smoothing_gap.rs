//! Where label smoothing's cost comes from, on two runs of one recipe: one trained without
//! smoothing (p) and one with eps > 0 (q).
//!
//! Smoothing's optimum is not the data law but the mixture (1 - eps) p + eps/V: a floor of eps/V
//! under every token, a finite-temperature correction that costs validation energy on every
//! token the model is sure of. This example measures, on the whole validation split (the tokens
//! training's val CE counts):
//! - the two runs' energies and their gap;
//! - the floor alone: the unsmoothed run's predictions mixed after training, (1 - eps) p + eps/V;
//! - the gap by how sure the unsmoothed run was of the observed token.
//!
//!   cargo run --release --example smoothing_gap -- PLAIN_RUN SMOOTHED_RUN

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, D};
use thermoformer::{checkpoint, data};

/// A run's log-probabilities `(V,)` for each validation token training's val CE counts.
fn log_probs(run: &checkpoint::Loaded, batches: &[data::Batch]) -> Result<Vec<Vec<f64>>> {
    let mut rows = Vec::new();
    for b in batches {
        let (_, t) = b.targets.dims2()?;
        // Every position but the first, predicted from BOS alone: training's val CE.
        let logits = run.model.forward(&b.inputs)?.i((.., 1..t, ..))?.to_dtype(DType::F64)?; // (B, T-1, V)
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.flatten_to(1)?; // (B*(T-1), V)
        rows.extend(lp.to_vec2::<f64>()?);
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: smoothing_gap PLAIN_RUN SMOOTHED_RUN");
    }
    let dev = Device::Cpu;
    let plain = checkpoint::load(&PathBuf::from(&args[1]), &dev)?;
    let smooth = checkpoint::load(&PathBuf::from(&args[2]), &dev)?;
    let eps = smooth.config.train.label_smoothing;
    if plain.config.train.label_smoothing != 0.0 || eps == 0.0 {
        bail!("the first run must be trained without label smoothing and the second with it");
    }
    if plain.config.train.corpus != smooth.config.train.corpus || plain.config.model.context != smooth.config.model.context {
        bail!("the two runs must share a corpus and a context");
    }
    let context = plain.config.model.context;
    let hash = plain.state.as_ref().map(|s| s.corpus_hash.as_str());
    let val = data::validation_split(&plain.config, &plain.tokenizer, hash, None).context("the runs' corpus is needed for its validation split")?;
    let batches = data::tiled_batches(val.tokens(), None, 32, context, plain.tokenizer.bos(), &dev)?;
    let targets: Vec<usize> = batches
        .iter()
        .map(|b| Ok(b.targets.i((.., 1..))?.flatten_all()?.to_vec1::<u32>()?))
        .collect::<Result<Vec<_>>>()?
        .concat()
        .into_iter()
        .map(|t| t as usize)
        .collect();
    let (p, q) = (log_probs(&plain, &batches)?, log_probs(&smooth, &batches)?);
    let v = p[0].len() as f64;
    let n = targets.len() as f64;

    let (mut e_p, mut e_q, mut e_floor) = (0.0, 0.0, 0.0);
    let mut by_confidence = [(0usize, 0.0f64); 10]; // tokens and summed gap, by p(observed) decile
    for ((lp, lq), &y) in p.iter().zip(&q).zip(&targets) {
        e_p -= lp[y];
        e_q -= lq[y];
        e_floor -= ((1.0 - eps) * lp[y].exp() + eps / v).ln();
        let bin = &mut by_confidence[((lp[y].exp() * 10.0) as usize).min(9)];
        bin.0 += 1;
        bin.1 += lp[y] - lq[y];
    }
    println!("{} validation tokens of {}, V = {v}, eps = {eps}", targets.len(), val.corpus);
    println!("{:<52} {:>8} {:>8}", "", "E/token", "- plain");
    let row = |label: &str, e: f64| println!("{label:<52} {:>8.4} {:>+8.4}", e / n, (e - e_p) / n);
    row("plain run, p", e_p);
    row("smoothed run, q", e_q);
    row("plain run with the floor, (1-eps) p + eps/V", e_floor);
    println!("\ngap q - p by the plain run's probability of the observed token:");
    println!("{:>12} {:>8} {:>10} {:>14}", "p(observed)", "share", "gap/token", "share of gap");
    for (k, (count, gap)) in by_confidence.iter().enumerate() {
        if *count > 0 {
            println!("{:>5.1}-{:<6.1} {:>8.3} {:>+10.4} {:>+14.4}", k as f64 / 10.0, (k + 1) as f64 / 10.0, *count as f64 / n, gap / *count as f64, gap / n);
        }
    }
    Ok(())
}
