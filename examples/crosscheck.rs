//! Print thermoformer's golden values of a checkpoint as JSON, for `scripts/crosscheck_torch.py`.
//!
//! cargo run --release --example crosscheck -- [FIXTURE_DIR]   (default tests/fixtures/crosscheck)
//!
//! The texts come from FIXTURE_DIR/texts.json; the checkpoint files are in FIXTURE_DIR itself.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "tests/fixtures/crosscheck".into()));
    let texts_path = dir.join("texts.json");
    let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&texts_path).with_context(|| format!("reading {}", texts_path.display()))?)?;
    let golden = thermoformer::golden::compute(&dir, &texts)?;
    writeln!(std::io::stdout(), "{}", serde_json::to_string(&golden)?)?;
    Ok(())
}
