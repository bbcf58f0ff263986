//! The token cache as a user sees it: what is in it ([`list`]) and removing entries
//! ([`clean`]). Entries are token files (`tokens-*.bin`, [`super::tokens`]), tokenizers trained
//! for a corpus (`tokenizer-*.json`, [`super::corpus_tokenizer`]) and temporary files of writers
//! (`*.tmp`): a live writer holds a lock on its temporary file, so one whose lock can be taken
//! was left by a killed run.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use super::tokens::{self, TokenFile};

/// What a cache entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A corpus's token file.
    Tokens,
    /// A tokenizer trained for a corpus.
    Tokenizer,
    /// A temporary file a writer still holds.
    Writing,
    /// A temporary file of a writer that died.
    Stale,
}

/// One file of the cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub bytes: u64,
    /// Seconds since it was last written.
    pub age_seconds: u64,
    /// The corpus it was made from, as named when it was (token files, and tokenizers whose
    /// corpus has a token file too).
    pub corpus: Option<String>,
    /// Tokens in a token file.
    pub tokens: Option<u64>,
}

/// Every entry of the cache `dir` (none if it does not exist), oldest first.
pub fn list(dir: &Path) -> Result<Vec<Entry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the token cache {}", dir.display())),
    };
    let now = SystemTime::now();
    let mut out = Vec::new();
    for entry in read.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let kind = if name.ends_with(".tmp") {
            if tokens::held_by_a_writer(&path) { Kind::Writing } else { Kind::Stale }
        } else if name.starts_with("tokens-") && name.ends_with(".bin") {
            Kind::Tokens
        } else if name.starts_with("tokenizer-") && name.ends_with(".json") {
            Kind::Tokenizer
        } else {
            continue; // not ours: left alone
        };
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        let header = (kind == Kind::Tokens).then(|| TokenFile::header_of(&path)).flatten();
        out.push(Entry {
            path,
            kind,
            bytes: meta.len(),
            age_seconds: age.as_secs(),
            corpus: header.as_ref().map(|h| h.corpus.clone()),
            tokens: header.as_ref().map(|h| h.tokens),
        });
    }
    // A tokenizer is named by its corpus's identity, as that corpus's token files are.
    let named: Vec<(String, String)> = out
        .iter()
        .filter_map(|e| Some((identity(&e.path, "tokens-")?, e.corpus.clone()?)))
        .collect();
    for e in out.iter_mut().filter(|e| e.kind == Kind::Tokenizer) {
        let id = identity(&e.path, "tokenizer-");
        e.corpus = named.iter().find(|(i, _)| Some(i) == id.as_ref()).map(|(_, c)| c.clone());
    }
    out.sort_by(|a, b| b.age_seconds.cmp(&a.age_seconds).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// The corpus identity in a cache file's name, after `prefix`.
fn identity(path: &Path, prefix: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?.strip_prefix(prefix)?;
    Some(name.split(['-', '.']).next()?.to_string())
}

/// Remove the entries of `dir` last written more than `older_than` ago (None: all of them), and
/// every temporary file no writer holds whatever its age; a temporary file a writer holds is
/// kept. Returns what was removed.
pub fn clean(dir: &Path, older_than: Option<Duration>) -> Result<Vec<Entry>> {
    let mut removed = Vec::new();
    for e in list(dir)? {
        let old = older_than.is_none_or(|d| e.age_seconds >= d.as_secs());
        let remove = match e.kind {
            Kind::Writing => false,
            Kind::Stale => true,
            Kind::Tokens | Kind::Tokenizer => old,
        };
        if remove {
            std::fs::remove_file(&e.path).with_context(|| format!("removing {}", e.path.display()))?;
            removed.push(e);
        }
    }
    Ok(removed)
}

/// A duration as `--older-than` takes it: a number and a unit, s, m, h, d or w (`30d`, `12h`).
pub fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("expected a number and a unit s, m, h, d or w (e.g. 30d, 12h), got {s:?}");
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return Err(bad()),
    };
    let secs = n * unit;
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}
