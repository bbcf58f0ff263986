//! thermoformer: train tiny decoder-only transformers on candle and read them the way a
//! statistical physicist would.
//!
//! Data flows one way: corpus -> [`tokenizer`] -> [`data`] batches -> [`model`] -> [`loss`] ->
//! [`optim`] -> [`checkpoint`]; and checkpoint -> forward-only users. Nothing below [`cli`] knows
//! about clap, and nothing in [`model`] knows about files.

pub mod bench;
pub mod calibrate;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod golden;
pub mod inspect;
pub mod kernels;
pub mod langevin;
pub mod loss;
pub mod memory;
pub mod model;
pub mod nadaraya_watson;
pub mod optim;
pub mod params;
pub mod rl;
pub mod rng;
pub mod plot;
pub mod progress;
pub mod rope;
pub mod score;
pub mod thermo;
pub mod tokenizer;
pub mod train;

pub use config::{ModelConfig, RunConfig, TokenizerKind, TrainConfig, TrainOptions};
pub use model::Gpt;
pub use tokenizer::Tok;

/// Fix the thread count candle uses, once, and shorten how long its idle workers spin. candle
/// asks for the thread count on every tensor operation and, unless `RAYON_NUM_THREADS` is set,
/// works it out afresh from /proc each time, which costs more than the operation itself for small
/// tensors. Its barrier-pool workers spin 25,000 times before sleeping, and matmuls run on a
/// second (rayon) pool, so on a 2-core machine a spinning worker takes a core from the matmul;
/// this sets 1,000 spins (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, which a user may still set). The
/// README's "Where the speed comes from" has the measurements. Call this at the start of
/// `main`, before any other thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}
