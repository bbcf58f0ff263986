//! `thermoformer train`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::config::TrainOptions;
use crate::train::{self, TrainRequest};

/// Options of `thermoformer train`. Unset options come from --config, else the defaults shown
/// (on --resume, from the checkpoint).
#[derive(Debug, clap::Args)]
#[command(args_override_self = true, allow_negative_numbers = true)]
pub struct TrainArgs {
    /// Run directory for the checkpoint and metrics.jsonl.
    #[arg(long, value_name = "DIR", default_value = "checkpoints/shakespeare")]
    pub out: PathBuf,
    /// TOML or JSON file of training options, keys as the flags in snake_case (e.g.
    /// `d_model = 128`); flags given on the command line override it. --out, --resume,
    /// --overwrite, --stop-after, --format, --json, --no-progress and --device are command-line only.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the checkpoint in --out: weights, AdamW moments, step, schedule and data RNG are
    /// restored. --steps may be raised; options that change the model may not.
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune the run directory DIR (trained here or imported) on --corpus: its weights and
    /// tokenizer with a fresh optimizer and schedule (nanoGPT's init_from). Options that shape the
    /// model or its tokenizer may not be given.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Replace a checkpoint already in --out instead of refusing.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// A family's block, filling in the architecture flags not given: gpt (the default shape),
    /// llama (RMSNorm, SwiGLU 8/3 d wide, two query heads per key/value head) or pythia (the
    /// parallel residual, rotary on a quarter of each head). Flags and --config still win.
    #[arg(long, value_enum, value_name = "FAMILY", conflicts_with_all = ["resume", "init_from"])]
    pub preset: Option<crate::config::Preset>,
    /// The training options (each also a `--config` key).
    #[command(flatten)]
    pub options: TrainOptions,
    /// End this session after step N (checkpointed there), keeping the learning-rate schedule of
    /// --steps; continue later with --resume.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    #[command(flatten)]
    pub report: super::ReportArgs,
    /// Do not draw the progress bar (evaluation lines still go to stderr).
    #[arg(long)]
    pub no_progress: bool,
    /// Device to train on.
    #[arg(long, value_enum, default_value_t = super::DeviceArg::Cpu)]
    pub device: super::DeviceArg,
}


/// The run's `sample_tokens` tokens drawn at temperature 0.8 from its saved weights, on the
/// run's own sampling stream (None when `sample_tokens` is 0).
fn sample_of(dir: &std::path::Path, dev: &candle_core::Device) -> Result<Option<String>> {
    let run = crate::checkpoint::load(dir, dev)?;
    let n = run.config.train.sample_tokens;
    if n == 0 {
        return Ok(None);
    }
    let mut rng = crate::rng::rng(run.config.train.seed, crate::rng::RngStream::Sample);
    let opts = crate::physics::generate::SampleOptions::with_temperature(0.8);
    let ids = crate::physics::generate::sample(&run.model, run.tokenizer.bos(), &[], n, opts, &mut rng)?;
    Ok(Some(run.tokenizer.decode(&ids)?))
}

/// Train as `args` say and checkpoint, then draw the run's sample: what `thermoformer train`
/// reports (and what the Python module's `train` returns).
pub fn train_and_sample(args: &TrainArgs) -> Result<(train::TrainReport, Option<String>)> {
    train_and_sample_with(args, || Ok(()))
}

/// [`train_and_sample`], calling `between_steps` before every step ([`train::train_with`]).
pub fn train_and_sample_with(args: &TrainArgs, between_steps: impl FnMut() -> Result<()>) -> Result<(train::TrainReport, Option<String>)> {
    let file = match &args.config {
        Some(path) => TrainOptions::from_file(path)?,
        None => TrainOptions::default(),
    };
    let options = file.overlay(&args.options);
    let request = TrainRequest {
        options: match args.preset {
            Some(preset) => preset.fill(options),
            None => options,
        },
        out: args.out.clone(),
        resume: args.resume,
        init_from: args.init_from.clone(),
        overwrite: args.overwrite,
        progress: !args.no_progress,
        stop_after: args.stop_after,
    };
    let dev = args.device.device()?;
    let report = train::train_with(&request, &dev, between_steps)?;
    let sample = sample_of(&report.out, &dev)?;
    Ok((report, sample))
}

/// `thermoformer train`: train, checkpoint, print a report and a sample.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let (report, sample) = train_and_sample(args)?;
    let mut stdout = std::io::stdout().lock();
    if args.report.json() {
        // The report's fields in their order, then the sample.
        #[derive(serde::Serialize)]
        struct WithSample<'a> {
            #[serde(flatten)]
            report: &'a train::TrainReport,
            sample: &'a Option<String>,
        }
        writeln!(stdout, "{}", serde_json::to_string(&WithSample { report: &report, sample: &sample })?)?;
    } else {
        if let Some(sample) = &sample {
            writeln!(stdout, "--- sample (temperature 0.8) ---\n{sample}\n-------------------------------")?;
        }
        writeln!(
            stdout,
            "trained {} parameters to step {}: val CE {:.4} nats/token, {:.0} tokens/s, {:.1} s; checkpoint in {}",
            report.params,
            report.steps,
            report.val_ce,
            report.tokens_per_sec,
            report.wall_secs,
            report.out.display()
        )?;
    }
    Ok(())
}

