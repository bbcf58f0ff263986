//! `thermoformer cache`: list and clean the token cache.

use std::io::Write;

use anyhow::Result;

use crate::data::cache::{self, Entry, Kind};
use crate::data::tokens::cache_dir;

/// Options of `thermoformer cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheAction {
    /// List the cache's files, oldest first: kind (token file, tokenizer, a temporary file being
    /// written, or one a killed run left), size, age and the corpus it was made from.
    List {
        #[command(flatten)]
        report: super::ReportArgs,
    },
    /// Remove cache files: every one, or with --older-than only those last written longer ago.
    /// Temporary files that killed runs left are removed whatever their age; those a running
    /// writer holds are kept. A later run rebuilds what it needs.
    Clean {
        /// Only files last written at least this long ago: a number and a unit, s, m, h, d or w
        /// (e.g. 30d, 12h).
        #[arg(long, value_name = "AGE", value_parser = cache::parse_age)]
        older_than: Option<std::time::Duration>,
        #[command(flatten)]
        report: super::ReportArgs,
    },
}

/// `thermoformer cache`.
pub fn run_cache(args: &CacheArgs) -> Result<()> {
    let dir = cache_dir();
    let mut out = std::io::stdout().lock();
    match &args.action {
        CacheAction::List { report } => {
            let entries = cache::list(&dir)?;
            if report.json() {
                writeln!(out, "{}", serde_json::json!({ "cache": dir, "entries": entries }))?;
            } else {
                writeln!(out, "{} ({} files, {})", dir.display(), entries.len(), size(entries.iter().map(|e| e.bytes).sum()))?;
                write_entries(&mut out, &entries)?;
            }
        }
        CacheAction::Clean { older_than, report } => {
            let removed = cache::clean(&dir, *older_than)?;
            let bytes: u64 = removed.iter().map(|e| e.bytes).sum();
            if report.json() {
                writeln!(out, "{}", serde_json::json!({ "cache": dir, "removed": removed, "bytes": bytes }))?;
            } else {
                writeln!(out, "removed {} files ({}) from {}", removed.len(), size(bytes), dir.display())?;
                write_entries(&mut out, &removed)?;
            }
        }
    }
    Ok(())
}

fn write_entries(out: &mut impl Write, entries: &[Entry]) -> Result<()> {
    for e in entries {
        let kind = match e.kind {
            Kind::Tokens => "tokens",
            Kind::Tokenizer => "tokenizer",
            Kind::Writing => "writing",
            Kind::Stale => "stale temp",
        };
        let what = match (&e.corpus, e.tokens) {
            (Some(c), Some(n)) => format!("{c} ({n} tokens)"),
            (Some(c), None) => c.clone(),
            _ => "-".into(),
        };
        let name = e.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        writeln!(out, "{kind:>10} {:>10} {:>8}  {what}  {name}", size(e.bytes), age(e.age_seconds))?;
    }
    Ok(())
}

/// Bytes as B, kB, MB or GB.
fn size(b: u64) -> String {
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        _ => format!("{:.2} GB", b as f64 / 1e9),
    }
}

/// Seconds as the largest whole unit.
fn age(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
