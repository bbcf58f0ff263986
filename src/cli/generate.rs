//! `thermoformer generate`: Boltzmann sampling, streamed.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::ModelArgs;
use crate::error::UsageError;
use crate::physics::generate::{Generator, SampleOptions};

/// Options of `thermoformer generate`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    /// Text to continue (printed first); empty starts from BOS alone. A prompt longer than the
    /// context keeps its last 3/4 context of tokens.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Number of tokens to sample.
    #[arg(long, default_value_t = 500)]
    pub tokens: usize,
    /// Sampling temperature T: tokens are drawn from p(x|ctx)^(1/T) / Z_T; 1 is the model's own
    /// distribution, 0 is greedy (always the most probable token).
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample only among the K most probable tokens. BOS (the start-of-sequence marker) is never
    /// sampled, so these are the K most probable tokens other than BOS (an imported nanoGPT
    /// model's start is its newline, which is text and may be sampled).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Nucleus sampling: only among the most probable tokens whose probabilities (after
    /// --temperature and --top-k) add up to P, in (0, 1].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Random seed; the same seed, checkpoint and flags give the same text.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// After the text, print to stderr the continuation's energy -ln p under the model (T = 1,
    /// normalised over the whole vocabulary, BOS included), in nats, the mean entropy of the
    /// sampling distributions, and tokens/s. Past the context each token is conditioned on the
    /// generator's window (BOS + the last 3/4 context, growing), so long continuations can differ
    /// slightly from what `score` gives with its stride.
    #[arg(long)]
    pub show_energy: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `thermoformer generate`.
pub fn run_generate(args: &GenerateArgs) -> Result<()> {
    let opts = SampleOptions { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p };
    opts.validate().map_err(|e| UsageError(e.to_string()))?;
    let loaded = args.model.load()?;
    let tok = &loaded.tokenizer;
    let prompt = tok.encode(&args.prompt).context("the prompt")?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    let start = Instant::now();
    let mut generator = Generator::new(&loaded.model, tok.bos(), &prompt)?;
    // Byte-level tokens may end inside a UTF-8 character: print once the pending ids decode cleanly.
    let mut pending: Vec<u32> = Vec::new();
    let generation = generator.generate(args.tokens, opts, &mut rng, |id, _| {
        pending.push(id);
        let text = tok.decode(&pending)?;
        if !text.ends_with('\u{FFFD}') || pending.len() >= 16 {
            write!(out, "{text}")?;
            out.flush()?;
            pending.clear();
        }
        Ok(())
    })?;
    if !pending.is_empty() {
        write!(out, "{}", tok.decode(&pending)?)?;
    }
    writeln!(out)?;
    out.flush()?;
    let secs = start.elapsed().as_secs_f64();
    if args.show_energy {
        let n = generation.ids.len();
        crate::progress::note(format!(
            "energy {:.4} nats over {n} tokens ({} nats/token) under the model at T = 1; mean sampling entropy {:.4} nats; {:.0} tokens/s",
            generation.energy(),
            if n > 0 { format!("{:.4}", generation.energy() / n as f64) } else { "-".into() },
            generation.mean_entropy(),
            n as f64 / secs.max(1e-9)
        ));
    }
    Ok(())
}
