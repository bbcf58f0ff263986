//! Command-line interface: one module per subcommand, each an `Args` struct (clap derive; the `///`
//! docs are the `--help` text) and a `run_*` function that calls the library and formats its
//! results. [`run`] dispatches.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};

use crate::checkpoint::{self, Loaded};
use crate::data;
use crate::error::UsageError;
use crate::config::{valid_temperature, Precision, MIN_TEMPERATURE};
use crate::model::HeadTemperature;

mod bench;
mod cache;
mod calibrate;
mod generate;
mod import;
mod inspect;
mod rl;
mod score;
mod serve;
mod train;

pub use bench::BenchArgs;
pub use cache::CacheArgs;
pub use calibrate::CalibrateArgs;
pub use generate::GenerateArgs;
pub use import::ImportArgs;
pub use inspect::InspectArgs;
pub use rl::RlArgs;
pub use score::ScoreArgs;
pub use serve::ServeArgs;
pub use train::{train_and_sample, train_and_sample_with, TrainArgs};

/// Train tiny decoder-only transformers and read them like a statistical physicist.
///
/// Attention is a Boltzmann distribution per head (alpha_ij = exp(beta_h s_ij) / Z_i with
/// beta_h = 1/T_h), and the language model is a Boltzmann distribution over sequences
/// (E = -ln p, in nats).
#[derive(Debug, Parser)]
#[command(name = "thermoformer", version, about, long_about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// The doc comments are --help text, in the physics notation <E> that rustdoc would read as HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Train a model on a text corpus and save a checkpoint directory.
    ///
    /// With no flags: nanoGPT's CPU recipe shape (char tokenizer, 4 layers x 4 heads x 128 wide,
    /// context 64, batch 12, lr 1e-3 -> 1e-4) with rotary positions for 5000 steps on
    /// data/tinyshakespeare.txt into checkpoints/shakespeare; `--steps 2000` is the recipe itself
    /// (`--positions learned` for nanoGPT's own architecture).
    Train(TrainArgs),
    /// Score sequence energies E = -ln p(BOS + tokens), in nats, one line at a time.
    ///
    /// For each line: energy E, tokens, energy_per_token, perplexity = exp(E/tokens) and
    /// bits = E/ln 2; --per-token adds each token's surprisal.
    Score(ScoreArgs),
    /// Sample text (Boltzmann sampling at --temperature), streamed to stdout as it is drawn.
    Generate(GenerateArgs),
    /// Read every attention head as a heat bath: T, entropy, ln Z, <E>, heat capacity; attention
    /// maps; a sweep of the attention temperature.
    Inspect(InspectArgs),
    /// Fit the output temperature T* that minimises the validation energy (label smoothing as a
    /// finite-temperature correction, measured), with the energy per token and the expected
    /// calibration error before and after; --png draws the reliability diagram.
    Calibrate(CalibrateArgs),
    /// Fine-tune a run toward a reward with maximum-entropy policy gradient or PPO, kept near the
    /// starting model by a KL term; writes an ordinary run directory.
    Rl(RlArgs),
    /// Import a model trained elsewhere (a nanoGPT ckpt.pt, a Hugging Face GPT-2-family
    /// directory) as an ordinary run directory that every command reads.
    Import(ImportArgs),
    /// Measure training, scoring and generation speed (ms/iter, tokens/s, MFU, peak RSS) on named
    /// shapes; `scripts/bench_torch.py` runs the same shapes in PyTorch side by side.
    Bench(BenchArgs),
    /// Explore a model in the browser: turn each head's attention temperature and watch the
    /// attention maps, head statistics and token energies respond (a local web app and a JSON API).
    Serve(ServeArgs),
    /// List or clean the token cache (token files and tokenizers made for corpora, in
    /// $THERMOFORMER_CACHE, else $XDG_CACHE_HOME/thermoformer or ~/.cache/thermoformer).
    Cache(CacheArgs),
}

/// Where tensors live. Accelerators need the crate built with their feature (`--features cuda`
/// or `--features metal`); the CPU build needs nothing beyond crates.io.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU (with `--features mkl` or `accelerate`, through those BLAS libraries).
    #[default]
    Cpu,
    /// The first CUDA GPU (`--features cuda`).
    Cuda,
    /// The Apple GPU (`--features metal`).
    Metal,
}

impl DeviceArg {
    /// The candle device, or a clear error when this build or machine does not have it.
    pub fn device(self) -> Result<Device> {
        let unavailable = |name: &str, feature: &str, e: candle_core::Error| {
            anyhow::anyhow!("--device {name} is not available ({e}); build with `cargo build --release --features {feature}` on a machine that has one")
        };
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda => Device::new_cuda(0).map_err(|e| unavailable("cuda", "cuda", e)),
            DeviceArg::Metal => Device::new_metal(0).map_err(|e| unavailable("metal", "metal", e)),
        }
    }
}

/// How a command that reports results prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns and text, for reading.
    #[default]
    Table,
    /// One JSON object on stdout, for scripts.
    Json,
}

/// `--format` and its older alias `--json`, for every command that reports results.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// How to print the report: a table for reading, or one JSON object on stdout for scripts.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

impl ReportArgs {
    /// The format asked for, by `--format` or by `--json`.
    pub fn format(&self) -> ReportFormat {
        if self.json {
            ReportFormat::Json
        } else {
            self.format
        }
    }

    /// Whether the report goes out as JSON.
    pub fn json(&self) -> bool {
        self.format() == ReportFormat::Json
    }
}

/// Which checkpoint to load and how to override its attention temperatures for this run.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Run directory written by `thermoformer train` or `thermoformer import`.
    #[arg(long, value_name = "DIR", default_value = "checkpoints/shakespeare")]
    pub checkpoint: PathBuf,
    /// Set every head's attention temperature T (> 0) for this run only; the checkpoint is not
    /// changed.
    #[arg(long, value_name = "T")]
    pub attn_temperature: Option<f64>,
    /// Set one head's attention temperature for this run only, as LAYER.HEAD=T (0-based, e.g.
    /// 0.2=0.5); repeatable, applied after --attn-temperature.
    #[arg(long, value_name = "L.H=T")]
    pub head_temperature: Vec<HeadTemperature>,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Arithmetic of the model's products: f32 (the default: energies as PyTorch and
    /// transformers compute them, to 1e-5), or bf16 operands with f32 accumulation, the same bits
    /// on every CPU, with each weight kept in bf16 (half the bytes per generated token). On a CPU
    /// with AMX, THERMOFORMER_BF16_KERNEL=amx runs bf16 on its tiles: several times faster, but
    /// not bit-reproducible.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl ModelArgs {
    /// Load the checkpoint and apply the temperature overrides.
    pub fn load(&self) -> Result<Loaded> {
        if let Some(t) = self.attn_temperature {
            check_temperature("--attn-temperature", t)?;
        }
        let mut loaded = checkpoint::load(&self.checkpoint, &self.device.device()?)?;
        crate::kernels::bf16::require(self.precision)?;
        loaded.model.set_precision(self.precision);
        loaded.model.prepare()?; // a bf16 model's packed weights, made while it loads
        if self.attn_temperature.is_some() || !self.head_temperature.is_empty() {
            loaded
                .model
                .override_temperatures(self.attn_temperature, &self.head_temperature)
                .map_err(|e| UsageError(e.to_string()))?;
        }
        Ok(loaded)
    }
}

/// `--log-n-scaling`, on the commands that read energies of whole texts (score, inspect).
#[derive(Debug, Clone, clap::Args)]
pub struct LengthScalingArgs {
    /// Scale every head's inverse temperature with the number of keys n its query sees:
    /// beta_h(n) = beta_h (1 + S ln n), the length-generalisation intervention (0: none). The
    /// factor must stay positive up to the context.
    #[arg(long, value_name = "S", default_value_t = 0.0, allow_negative_numbers = true)]
    pub log_n_scaling: f64,
}

impl LengthScalingArgs {
    /// Apply the scaling to `model` (nothing for 0); a bad S is a usage error.
    pub fn apply(&self, model: &mut crate::Gpt) -> Result<()> {
        if self.log_n_scaling != 0.0 {
            model.set_log_n_scaling(self.log_n_scaling).map_err(|e| UsageError(format!("--log-n-scaling: {e}")))?;
        }
        Ok(())
    }
}

/// The validation split of `corpus` (default: the checkpoint's training corpus, refused if it
/// changed since training), split as in training, and the corpus's name; `command` names who
/// needs it in the error.
pub(crate) fn validation_tokens(loaded: &Loaded, corpus: Option<&PathBuf>, command: &str) -> Result<data::Validation> {
    let hash = loaded.state.as_ref().map(|s| s.corpus_hash.as_str());
    data::validation_split(&loaded.config, &loaded.tokenizer, hash, corpus.map(PathBuf::as_path))
        .with_context(|| format!("{command} reads the validation split (name another corpus with --corpus)"))
}

/// `--head-temperature L.H=T`.
impl std::str::FromStr for HeadTemperature {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected LAYER.HEAD=T (e.g. 0.1=0.5), got {s:?}");
        let (lh, t) = s.split_once('=').ok_or_else(bad)?;
        let (l, h) = lh.split_once('.').ok_or_else(bad)?;
        let layer = l.trim().parse().map_err(|_| bad())?;
        let head = h.trim().parse().map_err(|_| bad())?;
        let temperature: f64 = t.trim().parse().map_err(|_| bad())?;
        if !crate::config::valid_temperature(temperature) {
            return Err(format!("head temperature must be finite and at least {:?}, got {s:?}", crate::config::MIN_TEMPERATURE));
        }
        Ok(Self { layer, head, temperature })
    }
}

/// A usage error unless `t` is a usable temperature (finite, at least [`MIN_TEMPERATURE`]).
pub fn check_temperature(flag: &str, t: f64) -> Result<()> {
    if valid_temperature(t) {
        Ok(())
    } else {
        Err(UsageError(format!("{flag} must be finite and at least {MIN_TEMPERATURE:?}, got {t:?}")).into())
    }
}

/// A usage error unless `path` can take a PNG: named `*.png`, not a directory, in an existing
/// directory. Checked before the work, so a bad path does not waste it.
pub(crate) fn png_path(flag: &str, path: &std::path::Path) -> Result<()> {
    let usage = |why: &str| -> Result<()> { Err(UsageError(format!("{flag} {}: {why}", path.display())).into()) };
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return usage("the file name must end in .png");
    }
    if path.is_dir() {
        return usage("is a directory");
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => usage("its directory does not exist"),
        _ => Ok(()),
    }
}

/// The command line as clap parses it: the derived [`Cli`] with the `[default: ...]` of every
/// train option that takes its default from the configuration added to its help (those flags
/// are `Option`s, so that `--config` can fill what the command line leaves unset, and clap cannot
/// show a default it does not apply).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().mut_subcommand("train", |mut train| {
        for (id, value) in crate::config::TrainOptions::shown_defaults() {
            train = train.mut_arg(id, |arg| {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                arg.help(format!("{help} [default: {value}]"))
            });
        }
        train
    })
}

/// Parse `args` (the program name first) with [`command`].
pub fn try_parse_from<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut matches = command().try_get_matches_from(args)?;
    <Cli as clap::FromArgMatches>::from_arg_matches_mut(&mut matches)
}

/// clap's multi-line usage error as one line: the message with its indented continuation (the
/// missing arguments, say) and any tip, then a pointer to --help instead of the usage block.
pub fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut out = lines.next().unwrap_or("error: invalid arguments").trim_end_matches(':').to_string();
    let continuation: Vec<&str> = lines.by_ref().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    if !continuation.is_empty() {
        out = format!("{out}: {}", continuation.join(", "));
    }
    for tip in lines.map(str::trim).filter(|l| l.starts_with("tip:")) {
        out = format!("{out} ({tip})");
    }
    format!("{out}; see --help")
}

/// Dispatch a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Train(args) => train::run_train(args),
        Command::Score(args) => score::run_score(args),
        Command::Generate(args) => generate::run_generate(args),
        Command::Inspect(args) => inspect::run_inspect(args),
        Command::Calibrate(args) => calibrate::run_calibrate(args),
        Command::Rl(args) => rl::run_rl(args),
        Command::Import(args) => import::run_import(args),
        Command::Bench(args) => bench::run_bench(args),
        Command::Serve(args) => serve::run_serve(args),
        Command::Cache(args) => cache::run_cache(args),
    }
}
