//! Shared helpers for the integration tests: the real binary, small corpora, tiny models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use thermoformer::model::params::Params;
use thermoformer::train::TrainRequest;
use thermoformer::{Gpt, ModelConfig, Tok, TrainOptions};

/// The shipped corpus.
pub fn shipped_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt")
}

/// The first `chars` characters of the shipped corpus.
pub fn corpus_text(chars: usize) -> String {
    let text = std::fs::read_to_string(shipped_corpus()).expect("shipped corpus is readable");
    text.chars().take(chars).collect()
}

/// Write the first `chars` characters of the shipped corpus into `dir` and return its path.
pub fn small_corpus(dir: &Path, chars: usize) -> PathBuf {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, corpus_text(chars)).expect("writing the test corpus");
    path
}

/// The token cache the tests' runs share (under the build directory, not the user's cache).
pub const TOKEN_CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/token-cache");

/// The real binary, with the tests' token cache.
pub fn thermoformer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thermoformer"));
    cmd.env("THERMOFORMER_CACHE", TOKEN_CACHE);
    cmd
}

/// Run the real binary with `args`.
pub fn run(args: &[&str]) -> Output {
    thermoformer().args(args).output().expect("running thermoformer")
}

/// Flags for a training run that takes well under a second.
pub fn tiny_train_flags<'a>(corpus: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--corpus", corpus, "--out", out, "--steps", "4", "--layers", "1", "--heads", "2", "--d-model", "16",
        "--context", "16", "--batch-size", "4", "--eval-every", "2", "--eval-batches", "2", "--sample-tokens", "0",
        "--no-progress",
    ]
}

/// Exit code and stderr of a finished process.
pub fn status_and_stderr(out: &Output) -> (i32, String) {
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Assert that a command failed cleanly: the expected exit code, a single `error:` line that
/// contains `needle`, and no panic.
pub fn assert_clean_error(out: &Output, code: i32, needle: &str) {
    let (status, stderr) = status_and_stderr(out);
    assert!(!stderr.contains("panicked"), "panic instead of an error:\n{stderr}");
    assert_eq!(status, code, "exit code; stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(errors[0].contains(needle), "error line {:?} does not mention {needle:?}", errors[0]);
}

/// A char tokenizer over a slice of the corpus and a freshly initialised tiny model.
pub fn tiny_model(learn_temperature: bool) -> (Tok, ModelConfig, Params, Gpt) {
    let tok = Tok::train_char(&corpus_text(5000)).expect("char tokenizer");
    let cfg = ModelConfig { learn_temperature, ..ModelConfig::tiny(tok.vocab_size()) };
    let (params, model) = Params::init(&cfg, 0.02, 7, &Device::Cpu).expect("init");
    (tok, cfg, params, model)
}

/// A deterministic pseudo-random batch of ids `(b, t)` below `vocab`, starting with `bos`.
pub fn random_ids(b: usize, t: usize, vocab: usize, bos: u32, seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if i % t == 0 { bos } else { ((x >> 33) % vocab as u64) as u32 }
        })
        .collect();
    Tensor::from_vec(ids, (b, t), &Device::Cpu).expect("ids tensor")
}

/// Flatten a tensor to a Vec<f32>.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("to_vec")
}

/// Train a tiny run on 4000 characters of the corpus into `dir/run` through the binary; its path.
pub fn trained(dir: &Path) -> PathBuf {
    let corpus = small_corpus(dir, 4000);
    let out = dir.join("run");
    let o = run(&tiny_train_flags(corpus.to_str().unwrap(), out.to_str().unwrap()));
    assert!(o.status.success(), "training failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Options of a small library-level training run (2 layers x 2 heads x 32 wide, context 32).
pub fn small_run_options(corpus: &Path, steps: usize) -> TrainOptions {
    TrainOptions {
        corpus: Some(vec![corpus.to_path_buf()]),
        steps: Some(steps),
        batch_size: Some(8),
        context: Some(32),
        layers: Some(2),
        heads: Some(2),
        d_model: Some(32),
        warmup: Some(10),
        lr: Some(3e-3),
        eval_every: Some(20),
        eval_batches: Some(4),
        sample_tokens: Some(0),
        ..TrainOptions::default()
    }
}

/// A quiet training request into `out`.
pub fn train_request(options: TrainOptions, out: &Path, resume: bool) -> TrainRequest {
    TrainRequest { options, out: out.to_path_buf(), resume, init_from: None, overwrite: false, progress: false, stop_after: None }
}

/// A decoded PNG: width, height and its pixels as RGB.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<[u8; 3]>,
}

/// Decode the PNG at `path` (panics with the path if it is not one).
pub fn decode_png(path: &Path) -> Picture {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let rgb = buf[..info.buffer_size()].chunks(channels).map(|p| if channels >= 3 { [p[0], p[1], p[2]] } else { [p[0]; 3] }).collect();
    Picture { width: info.width, height: info.height, rgb }
}

/// Assert that `path` is a PNG of `size` (when given) with real content: at least `min_ink` of
/// its pixels differ from the background (its most common colour) and it has at least
/// `min_colours` distinct colours (a heat map or several plotted series, not a blank canvas).
pub fn assert_picture(path: &Path, size: Option<(u32, u32)>, min_ink: f64, min_colours: usize) -> Picture {
    let pic = decode_png(path);
    if let Some(size) = size {
        assert_eq!((pic.width, pic.height), size, "{} has the wrong size", path.display());
    }
    let mut counts = std::collections::HashMap::new();
    for p in &pic.rgb {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let background = counts.values().copied().max().unwrap_or(0);
    let ink = 1.0 - background as f64 / pic.rgb.len() as f64;
    assert!(ink >= min_ink, "{}: only {:.2}% of the pixels are drawn on", path.display(), 100.0 * ink);
    assert!(counts.len() >= min_colours, "{}: {} colours, expected at least {min_colours}", path.display(), counts.len());
    pic
}

/// A running server, killed when dropped.
pub struct Server {
    child: std::process::Child,
    pub url: String,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the server to exit: its exit code and what it wrote to stderr.
    pub fn wait(&mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("waiting for the server");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        (status.code(), stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(checkpoint: &str) -> Server {
    let mut child = thermoformer()
        .args(["serve", "--checkpoint", checkpoint, "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}")).trim_end_matches('/').to_string();
    Server { child, url }
}

/// A trained tiny run for the explorer (2 layers x 2 heads, context 16) in `dir`.
pub fn serve_model(dir: &std::path::Path) -> String {
    let corpus = small_corpus(dir, 20_000);
    let out = dir.join("run");
    let mut flags = tiny_train_flags(corpus.to_str().unwrap(), out.to_str().unwrap());
    flags.extend(["--layers", "2", "--steps", "60", "--eval-every", "60", "--lr", "3e-3"]);
    let o = run(&flags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.display().to_string()
}
