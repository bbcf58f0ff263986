//! thermoformer: train tiny decoder-only transformers on candle and read them the way a
//! statistical physicist would.
//!
//! Data flows one way: corpus -> [`tokenizer`] -> [`data`] batches -> [`model`] -> [`loss`] ->
//! [`optim`] -> [`checkpoint`]; and checkpoint -> forward-only users. Nothing below [`cli`] knows
//! about clap, and nothing in [`model`] knows about files.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod golden;
pub mod inspect;
pub mod loss;
pub mod model;
pub mod optim;
pub mod params;
pub mod plot;
pub mod score;
pub mod thermo;
pub mod tokenizer;
pub mod train;

pub use config::{ModelConfig, RunConfig, TokenizerKind, TrainConfig, TrainOptions};
pub use model::Gpt;
pub use tokenizer::Tok;
