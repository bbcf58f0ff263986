//! thermoformer: train tiny decoder-only transformers on candle and read them the way a
//! statistical physicist would.
//!
//! Data flows one way, and the folders follow it: corpus -> [`data`] (the tokenizer, splits,
//! batches) -> [`model`] (the network, its parameters, the loss) -> [`train`] (the loop and its
//! optimizers) -> [`checkpoint`] (the run directory, which [`import`] also writes from nanoGPT
//! and GPT-2 models) -> [`physics`] (scoring, sampling and reading
//! a model: score, generate, inspect, thermo, calibrate, Langevin, Nadaraya-Watson) and [`rl`]
//! (fine-tuning toward a reward). [`kernels`] holds the fused CPU kernels the model runs on;
//! [`cli`] parses the command line on top of all of it. Below [`cli`], only the option types
//! carry clap's derives (so that each option is written once), and nothing in [`model`] knows
//! about files. `docs/architecture.md` draws the map.

// Support: settings, errors, resource limits, notes and plots, seeded randomness.
pub mod config;
pub mod error;
pub mod memory;
pub mod plot;
pub mod progress;
pub mod rng;

// The data flow, bottom up.
pub mod kernels;
pub mod data;
pub mod model;
pub mod checkpoint;
pub mod import;
pub mod train;
pub mod physics;
pub mod rl;

// Measuring it, and the command line on top.
pub mod bench;
pub mod golden;
pub mod serve;
pub mod untrusted;
pub mod cli;

pub use config::{ModelConfig, RunConfig, TokenizerKind, TrainConfig, TrainOptions};
pub use model::Gpt;
pub use data::tokenizer::Tok;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h; the Rust
/// binding has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Have mimalloc keep freed memory for reuse instead of handing it back to the OS: a forward
/// pass frees and allocates the same large buffers every layer, and each fresh page costs a fault
/// and a clear (13% of GPT-2-sized scoring on a 2-core EPYC, docs/performance.md). The process
/// keeps its peak memory until it exits. For programs whose global allocator is mimalloc (the
/// binary and the Python module); call it first thing.
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide option of mimalloc, which takes it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Fix the thread count candle uses, once. candle asks for the thread count on every tensor
/// operation and, unless `RAYON_NUM_THREADS` is set, works it out afresh from /proc each time,
/// which costs more than the operation itself for small tensors. Its barrier-pool workers keep
/// candle's own spin (25,000 `pause`s, about a millisecond, before they sleep): since every
/// product runs on that pool ([`kernels::linear`]), a worker that sleeps between two ops costs a
/// futex wake-up, and the longer spin made the small training step 8% and the default model's
/// generation 30% faster than the 1,000 spins this once set (when matmuls ran on rayon's pool,
/// where a spinning worker took a core from them). docs/performance.md has the measurements.
/// Call this at the start of `main`, before any other thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
