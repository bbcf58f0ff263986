//! `thermoformer import`.

use std::path::PathBuf;

use anyhow::Result;

use crate::import::{self, ImportRequest};

/// Options of `thermoformer import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// What to import: a Hugging Face GPT-2-family directory (config.json, model.safetensors,
    /// tokenizer.json) or a nanoGPT checkpoint file (ckpt.pt).
    #[arg(value_name = "SRC")]
    pub source: PathBuf,
    /// Run directory to write (the same files as a trained run, without optimizer state).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// nanoGPT's char vocabulary, meta.pkl (its stoi/itos), for a char-level ckpt.pt.
    #[arg(long, value_name = "FILE")]
    pub meta: Option<PathBuf>,
    /// A tokenizer.json to use: for a BPE nanoGPT checkpoint, or instead of a Hugging Face
    /// directory's own.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Replace whatever --out already holds instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub report: super::ReportArgs,
}

/// `thermoformer import`.
pub fn run_import(args: &ImportArgs) -> Result<()> {
    let req = ImportRequest {
        source: args.source.clone(),
        out: args.out.clone(),
        meta: args.meta.clone(),
        tokenizer: args.tokenizer.clone(),
        overwrite: args.overwrite,
    };
    let r = import::import(&req)?;
    if args.report.json() {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("imported {} into {}", r.origin, r.out.display());
        println!(
            "{} parameters: {} layers x {} heads x {} wide, context {}, vocabulary {} (tokenizer {}), biases {}, head {}",
            r.params,
            r.n_layer,
            r.n_head,
            r.d_model,
            r.context,
            r.vocab_size,
            r.tokenizer_vocab_size,
            if r.bias { "yes" } else { "no" },
            if r.tied_head { "tied" } else { "untied" }
        );
        println!("sequences start with {}; every head starts at T = 1", r.start);
    }
    Ok(())
}
