//! The one place that saves and loads a run directory.
//!
//! A run directory holds a self-describing checkpoint:
//!
//! | file                    | what                                                        |
//! |-------------------------|-------------------------------------------------------------|
//! | `config.json`           | format version, model config, training config              |
//! | `tokenizer.json`        | the tokenizer, loadable by Python's `tokenizers`           |
//! | `model.safetensors`     | weights, named by struct path (`blocks.0.attn.qkv.weight`) |
//! | `optimizer.safetensors` | AdamW moments `m.<param>`, `v.<param>`                     |
//! | `state.json`            | step, RNG position, timings                                |
//! | `metrics.jsonl`         | one record per evaluation (appended, not part of a commit) |
//!
//! Saving is a small write-ahead commit, so a crash at any moment leaves a whole checkpoint:
//! every file is first written to `<name>.tmp` and synced; then the marker `.commit` is created
//! atomically (the commit point); then each `.tmp` is renamed over its final name, and the marker
//! is removed. A writer that opens the directory later finishes an interrupted commit (marker
//! present: rename the remaining `.tmp` files) or discards a half-written one (no marker). Each
//! rename is atomic, so a reader never sees a partly written file.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, FORMAT_VERSION};
use crate::error::UsageError;
use crate::memory;
use crate::model::Gpt;
use crate::model::params::Params;
use crate::data::tokenizer::Tok;

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const MODEL: &str = "model.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const STATE: &str = "state.json";
pub const METRICS: &str = "metrics.jsonl";
const COMMIT_MARKER: &str = ".commit";

/// Files of one commit, in the order they are renamed into place: what inference needs first.
const COMMIT_FILES: [&str; 5] = [CONFIG, TOKENIZER, MODEL, OPTIMIZER, STATE];

/// Training progress saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Seed of the batch-sampling RNG.
    pub rng_seed: u64,
    /// Position of the batch-sampling RNG in its stream (a decimal u128): restoring it replays
    /// exactly the batches an uninterrupted run would have drawn.
    pub rng_word_pos: String,
    /// Training tokens processed so far.
    pub tokens_seen: u64,
    /// Wall-clock seconds spent training so far (all sessions).
    pub elapsed_secs: f64,
    /// Last validation cross-entropy (nats/token), if evaluated.
    pub val_ce: Option<f64>,
    /// FNV-1a hash of the corpus text the run trains on (hex): a resume on changed text is refused.
    pub corpus_hash: String,
}

pub use crate::data::corpus_hash;

/// What a forward-only user (score, generate, inspect) needs from a run directory.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: RunConfig,
    pub tokenizer: Tok,
    pub model: Gpt,
    /// The training state, where `state.json` is there and readable (it says which corpus text
    /// the run was trained on); forward-only use does not need it.
    pub state: Option<TrainState>,
}

/// Everything needed to continue training.
#[derive(Debug)]
pub struct Resumable {
    pub config: RunConfig,
    pub tokenizer: Tok,
    pub params: Params,
    pub model: Gpt,
    pub optimizer_state: HashMap<String, Tensor>,
    pub state: TrainState,
}

/// Whether `dir` holds a checkpoint (possibly one whose commit must be finished).
pub fn exists(dir: &Path) -> bool {
    dir.join(CONFIG).exists() || dir.join(COMMIT_MARKER).exists()
}

/// The environment variable that makes writing one file of a save fail with ENOSPC (tests only).
#[doc(hidden)]
pub const INJECT_ENOSPC: &str = "THERMOFORMER_TEST_ENOSPC";

fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // A fault-injection hook for the tests where no small filesystem can be mounted: writing the
    // file this variable names fails as a full disk would.
    if std::env::var_os(INJECT_ENOSPC).is_some_and(|name| path.file_name() == Some(name.as_os_str())) {
        return Err(std::io::Error::from_raw_os_error(28)).with_context(|| format!("writing {}", path.display()));
    }
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// Serialise named tensors to safetensors bytes (sorted by name, so the bytes are reproducible).
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let contiguous: Vec<(String, Tensor)> =
        named.into_iter().map(|(n, t)| Ok((n.clone(), t.contiguous()?))).collect::<Result<_>>()?;
    safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| anyhow!("serialising tensors: {e}"))
}

/// A moment inside a save at which [`save_interrupted`] stops, leaving the directory as a crash
/// there would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Every `.tmp` file written and synced, no commit marker yet.
    TmpWritten,
    /// The marker in place, nothing renamed.
    Committed,
    /// The first file renamed into place, the others not.
    Renaming,
}

/// Marks where an interrupted save stopped (not an error a user sees: only
/// [`save_interrupted`] returns it, and it turns it into `Ok`).
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("save interrupted on purpose")
    }
}

impl std::error::Error for Interrupted {}

fn stop_at(stage: Stage, stop: Option<Stage>) -> Result<()> {
    if stop == Some(stage) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Finish or discard an interrupted commit in `dir` (see the module docs).
pub fn recover(dir: &Path) -> Result<()> {
    recover_until(dir, None)
}

fn recover_until(dir: &Path, stop: Option<Stage>) -> Result<()> {
    let marker = dir.join(COMMIT_MARKER);
    if marker.exists() {
        for name in COMMIT_FILES {
            let tmp = tmp_path(dir, name);
            if tmp.exists() {
                fs::rename(&tmp, dir.join(name)).with_context(|| format!("finishing the interrupted save of {}", tmp.display()))?;
                stop_at(Stage::Renaming, stop)?;
            }
        }
        sync_dir(dir)?;
        fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    } else {
        for name in COMMIT_FILES.iter().copied().chain([COMMIT_MARKER]) {
            let _ = fs::remove_file(tmp_path(dir, name)); // half-written leftovers of a save that never committed
        }
    }
    Ok(())
}

/// Save a whole checkpoint into `dir` atomically (see the module docs).
pub fn save(dir: &Path, config: &RunConfig, tok: &Tok, params: &Params, optimizer: HashMap<String, Tensor>, state: &TrainState) -> Result<()> {
    save_until(dir, config, tok, params, optimizer, state, None)
}

/// [`save`], stopped at `stage` as if the process had been killed there: the files stay as such
/// a crash leaves them, for tests of recovery. Nothing in the binary calls it: fault injection is
/// a library call rather than an environment variable the shipped program would read.
#[allow(clippy::too_many_arguments)] // save's arguments and the stage
pub fn save_interrupted(dir: &Path, config: &RunConfig, tok: &Tok, params: &Params, optimizer: HashMap<String, Tensor>, state: &TrainState, stage: Stage) -> Result<()> {
    match save_until(dir, config, tok, params, optimizer, state, Some(stage)) {
        Err(e) if e.is::<Interrupted>() => Ok(()),
        Ok(()) => bail!("the save finished before reaching {stage:?}"),
        Err(e) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)] // save's arguments and where to stop
fn save_until(dir: &Path, config: &RunConfig, tok: &Tok, params: &Params, optimizer: HashMap<String, Tensor>, state: &TrainState, stop: Option<Stage>) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating run directory {}", dir.display()))?;
    recover(dir)?;
    let contents: [(&str, Vec<u8>); 5] = [
        (CONFIG, serde_json::to_vec_pretty(config)?),
        (TOKENIZER, tok.to_json()?.into_bytes()),
        (MODEL, safetensors_bytes(&params.tensors())?),
        (OPTIMIZER, safetensors_bytes(&optimizer)?),
        (STATE, serde_json::to_vec_pretty(state)?),
    ];
    let marker_tmp = tmp_path(dir, COMMIT_MARKER);
    let written = (|| -> Result<()> {
        for (name, bytes) in &contents {
            write_synced(&tmp_path(dir, name), bytes)?;
        }
        sync_dir(dir)?; // the .tmp entries are durable before the marker can be
        stop_at(Stage::TmpWritten, stop)?;
        write_synced(&marker_tmp, format!("step {}\n", state.step).as_bytes())
    })();
    if let Err(e) = written {
        if stop.is_some() {
            return Err(e); // an interruption the tests asked for: left as a crash would leave it
        }
        // Before the commit point the previous checkpoint is untouched: free what this one wrote.
        for name in contents.iter().map(|(n, _)| *n).chain([COMMIT_MARKER]) {
            let _ = fs::remove_file(tmp_path(dir, name));
        }
        return Err(e.context(format!(
            "saving the checkpoint of step {} in {} failed before it was committed; the previous checkpoint there is kept",
            state.step,
            dir.display()
        )));
    }
    // The commit point: once the marker exists, every .tmp file is whole and will be renamed.
    fs::rename(&marker_tmp, dir.join(COMMIT_MARKER)).context("committing the checkpoint")?;
    sync_dir(dir)?;
    stop_at(Stage::Committed, stop)?;
    recover_until(dir, stop)
}

/// The path of `name` as committed: during an interrupted or ongoing commit (marker present) the
/// `.tmp` file if it is still there, else the file itself.
fn committed_path(dir: &Path, name: &str) -> PathBuf {
    let tmp = tmp_path(dir, name);
    if dir.join(COMMIT_MARKER).exists() && tmp.is_file() {
        return tmp;
    }
    dir.join(name)
}

/// Bytes of `name` as committed ([`committed_path`]).
fn read_committed(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = committed_path(dir, name);
    fs::read(&path).with_context(|| format!("reading {}", dir.join(name).display()))
}

fn read_config(dir: &Path) -> Result<RunConfig> {
    let config = parse_config(&read_committed(dir, CONFIG)?, &dir.join(CONFIG))?;
    // Before any tensor is read: a shape this machine cannot run is refused, not aborted on.
    // At up to LOAD_CHECK_CONTEXT positions: a model with a long context (Qwen's 32,768) runs
    // shorter inputs in far less; commands that read longer ones check their own shapes.
    let shape = crate::ModelConfig { context: config.model.context.min(LOAD_CHECK_CONTEXT), ..config.model.clone() };
    memory::ensure_fits(
        &format!("running the model in {} (on {} positions)", dir.display(), shape.context),
        shape.forward_bytes(1),
        "the checkpoint's shape is too large for this machine",
    )?;
    Ok(config)
}

/// A run's config.json from its bytes (`path` names it in errors): UTF-8 JSON with a format
/// version this build reads, a valid model and training config.
pub fn parse_config(bytes: &[u8], path: &Path) -> Result<RunConfig> {
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    match version {
        None => bail!("{} has no format_version: it is not a thermoformer checkpoint", path.display()),
        Some(v) if v > FORMAT_VERSION as u64 => bail!(
            "{} has format version {v}, newer than this build's {FORMAT_VERSION}; HINT: upgrade thermoformer to load it",
            path.display()
        ),
        Some(_) => {}
    }
    let config: RunConfig = serde_json::from_value(value).with_context(|| format!("reading {}", path.display()))?;
    // A bad config in a checkpoint is a broken file, not a usage error: report it as such.
    config.model.validate_as(&crate::config::Spelling::RUN).map_err(|e| anyhow!("invalid model config in {}: {e}", path.display()))?;
    config.train.validate().map_err(|e| anyhow!("invalid training config in {}: {e}", path.display()))?;
    Ok(config)
}

/// Positions of the forward pass a load must have room for.
const LOAD_CHECK_CONTEXT: usize = 2048;

/// The tensors of a safetensors file of the run (f32, little-endian as the format is, on a
/// little-endian host), read straight from the file into the tensors' own buffers: the weights
/// are in memory once, as the tensors. (A memory map would be simpler, but its pages count as
/// resident while they are copied, doubling the peak for a large model; and the safetensors
/// crate parses a header only out of the whole file's bytes, so the header is read here.)
fn read_tensors(dir: &Path, name: &str, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(name);
    let file = File::open(committed_path(dir, name)).with_context(|| format!("reading {}", path.display()))?;
    let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    read_safetensors(file, len, &path, dev)
}

/// The f32 tensors of a safetensors stream of `len` bytes (`path` names it in errors): the
/// header is read and every tensor's shape held to its byte range before anything is allocated.
pub fn read_safetensors(mut file: impl Read + Seek, len: u64, path: &Path, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let corrupt = |why: &str| anyhow!("{} is not a valid safetensors file ({why}); it may be truncated or corrupted", path.display());
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| corrupt("no header"))?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100 << 20 {
        return Err(corrupt(&format!("a header of {n} bytes in a file of {len}")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|_| corrupt("truncated header"))?;
    // In name order, then in the file's order: the first tensor reported wrong is the same on
    // every run, and the file is read front to back.
    let header: std::collections::BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| corrupt(&format!("header: {e}")))?;
    let mut entries = header
        .into_iter()
        .filter(|(tensor, _)| tensor != "__metadata__")
        .map(|(tensor, info)| serde_json::from_value::<TensorInfo>(info).map(|info| (tensor.clone(), info)).map_err(|e| corrupt(&format!("{tensor}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    entries.sort_by_key(|(_, info)| info.data_offsets[0]);
    let data_start = 8 + n;
    let mut out = HashMap::new();
    for (tensor, info) in entries {
        let [begin, end] = info.data_offsets;
        let elems = info.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(|| corrupt(&format!("{tensor}: shape overflows")))?;
        let fits = begin <= end && data_start.checked_add(end).is_some_and(|e| e <= len);
        if info.dtype != "F32" || !fits || end - begin != elems.saturating_mul(4) {
            return Err(corrupt(&format!("{tensor}: {} {:?} at bytes {begin}..{end} of {}", info.dtype, info.shape, len - data_start)));
        }
        let mut values = vec![0f32; elems as usize];
        file.seek(SeekFrom::Start(data_start + begin)).with_context(|| format!("reading {}", path.display()))?;
        file.read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(|_| corrupt(&format!("{tensor}: truncated")))?;
        out.insert(tensor, Tensor::from_vec(values, info.shape, dev)?);
    }
    Ok(out)
}

/// One tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The weights of a run directory, by name.
pub fn read_model_tensors(dir: &Path, dev: &Device) -> Result<HashMap<String, Tensor>> {
    check_dir(dir)?;
    read_tensors(dir, MODEL, dev)
}

/// A usage error when `out`, where a run is to be written, is a file rather than a directory.
fn check_out_dir(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(UsageError(format!("--out {} is a file; the run directory must be a directory", out.display())).into());
    }
    Ok(())
}

/// A usage error unless a new run may be written into `out`: a directory (or nothing yet) that
/// holds no checkpoint, or one that may be replaced (`overwrite`). `instead` says what else the
/// user can pass (e.g. "--resume to continue it or --overwrite to start again").
pub fn check_writable(out: &Path, overwrite: bool, instead: &str) -> Result<()> {
    check_out_dir(out)?;
    if exists(out) && !overwrite {
        return Err(UsageError(format!("{} already holds a checkpoint; pass {instead}", out.display())).into());
    }
    Ok(())
}

fn check_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        let message = format!("checkpoint {} is a file, not a run directory", dir.display());
        return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, message).into());
    }
    if !dir.is_dir() {
        return Err(crate::error::not_found(format!(
            "checkpoint directory {} does not exist (train one with `thermoformer train --out {}`)",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

fn read_tokenizer(dir: &Path, config: &RunConfig) -> Result<Tok> {
    let path = dir.join(TOKENIZER);
    let json = String::from_utf8(read_committed(dir, TOKENIZER)?).map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))?;
    let tok = Tok::from_json_with_start(&json, &config.model.start).with_context(|| format!("parsing tokenizer {}", path.display()))?;
    // An imported model's embedding may be padded past its tokenizer (nanoGPT pads GPT-2's
    // 50257 tokens to 50304); one trained here matches exactly.
    let fits = if config.imported_from.is_some() { tok.vocab_size() <= config.model.vocab_size } else { tok.vocab_size() == config.model.vocab_size };
    if !fits {
        bail!(
            "{} has {} tokens but the model in {} expects {}: the files come from different runs",
            dir.join(TOKENIZER).display(),
            tok.vocab_size(),
            dir.display(),
            config.model.vocab_size
        );
    }
    Ok(tok)
}

/// Load a run directory for forward-only use.
pub fn load(dir: &Path, dev: &Device) -> Result<Loaded> {
    check_dir(dir)?;
    let config = read_config(dir)?;
    let tokenizer = read_tokenizer(dir, &config)?;
    let tensors = read_tensors(dir, MODEL, dev)?;
    let model = Params::model_from_tensors(&config.model, tensors, dev)
        .with_context(|| format!("loading weights from {}", dir.join(MODEL).display()))?;
    let state = read_committed(dir, STATE).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(Loaded { config, tokenizer, model, state })
}

/// A run directory's weights as trainable parameters, and its training state, read without
/// writing anything (an interrupted commit is read as committed, not finished): what a
/// fine-tuning run (`rl`) starts from while the directory stays its frozen reference.
#[derive(Debug)]
pub struct Source {
    pub config: RunConfig,
    pub tokenizer: Tok,
    pub params: Params,
    pub model: Gpt,
    pub state: TrainState,
}

/// Read a run directory for fine-tuning, leaving it untouched.
pub fn load_source(dir: &Path, dev: &Device) -> Result<Source> {
    check_dir(dir)?;
    let config = read_config(dir)?;
    let tokenizer = read_tokenizer(dir, &config)?;
    let tensors = read_tensors(dir, MODEL, dev)?;
    let (params, model) = Params::from_tensors(&config.model, tensors, dev)
        .with_context(|| format!("loading weights from {}", dir.join(MODEL).display()))?;
    let state_path = dir.join(STATE);
    let state_text = String::from_utf8(read_committed(dir, STATE)?).map_err(|_| anyhow!("{} is not UTF-8 text", state_path.display()))?;
    let state: TrainState = serde_json::from_str(&state_text).with_context(|| format!("parsing {}", state_path.display()))?;
    Ok(Source { config, tokenizer, params, model, state })
}

/// Load a run directory to continue training it (finishing an interrupted save first). A run
/// saved without optimizer state (an `rl` output) has an empty `optimizer_state`.
pub fn load_resumable(dir: &Path, dev: &Device) -> Result<Resumable> {
    check_dir(dir)?;
    recover(dir)?;
    let Source { config, tokenizer, params, model, state } = load_source(dir, dev)?;
    let optimizer_state = read_tensors(dir, OPTIMIZER, dev)?;
    Ok(Resumable { config, tokenizer, params, model, optimizer_state, state })
}
