//! A corpus: the documents a run trains on, from text files, directories of them and JSON Lines
//! exports, read as one stream of text in bounded memory.
//!
//! - A text file is one document. A file named `*.jsonl` holds one document per line: the string
//!   field `--text-field` (default `text`, as Hugging Face dataset exports write them) of each
//!   JSON record. Blank lines are skipped.
//! - A directory stands for its files, recursively, in path order; names starting with `.` and
//!   links to directories are skipped.
//! - Documents are joined in the order given, with a newline between two documents when the
//!   first does not already end with one. A corpus of one file is therefore that file's text,
//!   byte for byte, and hashes as it always has ([`super::corpus_hash`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};

/// Bytes of text handed to the reader's callback at a time (at most, for text files).
pub const PIECE: usize = 1 << 20;

/// The files of a corpus, as found on disk when it was opened.
#[derive(Debug, Clone)]
pub struct Corpus {
    sources: Vec<Source>,
    text_field: String,
    name: String,
}

#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    json_lines: bool,
    bytes: u64,
    /// Modification time, nanoseconds since the epoch (0 where the platform gives none).
    modified: u128,
    /// Inode and change time (unix; 0 elsewhere).
    changed: u128,
}

/// FNV-1a, 64 bits, fed in pieces: the corpus fingerprint `state.json` records. Written here
/// because it must stay the function earlier runs were fingerprinted with.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The FNV-1a hex of one string.
pub fn fnv_hex(s: &str) -> String {
    let mut h = Fnv::default();
    h.update(s.as_bytes());
    h.hex()
}

impl Corpus {
    /// The corpus of `paths` (files and directories). Missing paths and directories with no
    /// files are errors naming them; the files are only stat'ed here, read by [`Corpus::read`].
    pub fn open(paths: &[PathBuf], json_field: Option<&str>) -> Result<Self> {
        if paths.is_empty() {
            bail!("no corpus given; name one or more files or directories with --corpus");
        }
        let mut sources = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).with_context(|| format!("reading corpus {}", path.display()))?;
            if meta.is_dir() {
                let mut files = Vec::new();
                walk(path, &mut files)?;
                if files.is_empty() {
                    bail!("corpus directory {} holds no files", path.display());
                }
                files.sort();
                for f in files {
                    sources.push(Source::stat(&f, json_field.is_some())?);
                }
            } else {
                sources.push(Source::stat(path, json_field.is_some())?);
            }
        }
        let name = match paths {
            [one] => one.display().to_string(),
            [first, rest @ ..] => format!("{} and {} more", first.display(), rest.len()),
            [] => unreachable!("checked above"),
        };
        Ok(Self { sources, text_field: json_field.unwrap_or_default().to_string(), name })
    }

    /// The corpus as the command line named it, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of all its files.
    pub fn bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.bytes).sum()
    }

    /// Files it reads.
    pub fn files(&self) -> usize {
        self.sources.len()
    }

    /// A fingerprint of what is on disk without reading it: every file's absolute path, size,
    /// modification time, inode and change time, and the JSON field read. Equal fingerprints mean the token file made
    /// from it still holds; any edit, added or removed file changes it.
    pub fn identity(&self) -> String {
        let mut id = String::from("corpus v1");
        for s in &self.sources {
            let abs = s.path.canonicalize().unwrap_or_else(|_| s.path.clone());
            id.push_str(&format!("\n{}\t{}\t{}\t{}\t{}", abs.display(), s.bytes, s.modified, s.changed, s.json_lines));
        }
        if self.sources.iter().any(|s| s.json_lines) {
            id.push_str(&format!("\nfield {}", self.text_field));
        }
        fnv_hex(&id)
    }

    /// Read the joined text of every document in order, handing it to `f` in pieces (at most
    /// [`PIECE`] bytes from a text file; a JSON record's text whole) with the file bytes read so
    /// far. Non-UTF-8 text, malformed records and a corpus with no text are errors naming the
    /// file. Returns the FNV-1a fingerprint of the joined text.
    pub fn read(&self, mut f: impl FnMut(&str, u64) -> Result<()>) -> Result<String> {
        let mut joined = Joiner { hash: Fnv::default(), ends_in_newline: true, any: false, text: false };
        let mut done = 0u64;
        for s in &self.sources {
            let mut emit = |piece: &str, first: bool, read: u64| -> Result<()> {
                joined.push(piece, first, &mut |p| f(p, done + read))
            };
            if s.json_lines {
                read_json_lines(s, &self.text_field, &mut emit)?;
            } else {
                read_text(s, &mut emit)?;
            }
            done += s.bytes;
        }
        if !joined.text {
            bail!("corpus {} is empty", self.name);
        }
        Ok(joined.hash.hex())
    }

    /// The whole joined text in memory: for small corpora and tests.
    pub fn read_to_string(&self) -> Result<String> {
        let mut text = String::new();
        self.read(|p, _| {
            text.push_str(p);
            Ok(())
        })?;
        Ok(text)
    }
}

/// Joins documents: a newline between two when the first does not end with one.
struct Joiner {
    hash: Fnv,
    ends_in_newline: bool,
    /// Whether any text was emitted yet.
    any: bool,
    /// Whether any non-whitespace text was seen.
    text: bool,
}

impl Joiner {
    /// `piece` of a document (`first`: its first piece); empty pieces are dropped, so an empty
    /// document adds nothing.
    fn push(&mut self, piece: &str, first: bool, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        if first && self.any && !self.ends_in_newline {
            self.hash.update(b"\n");
            f("\n")?;
        }
        self.hash.update(piece.as_bytes());
        self.any = true;
        self.text = self.text || !piece.trim().is_empty();
        self.ends_in_newline = piece.ends_with('\n');
        f(piece)
    }
}

impl Source {
    fn stat(path: &Path, json_lines: bool) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading corpus {}", path.display()))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        // The inode and the change time too, where there are: an edit that keeps the size and
        // sets the modification time back (`cp -p`, `touch -r`) still changes the change time.
        #[cfg(unix)]
        let changed = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino() as u128) << 64 | (meta.ctime() as u128 * 1_000_000_000 + meta.ctime_nsec() as u128)
        };
        #[cfg(not(unix))]
        let changed = 0;
        let json_lines = json_lines && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
        Ok(Self { path: path.to_path_buf(), json_lines, bytes: meta.len(), modified, changed })
    }
}

/// The files under `dir`, recursively, skipping names that start with `.` and links to directories.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading corpus directory {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading corpus directory {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().with_context(|| format!("reading corpus {}", path.display()))?;
        if kind.is_dir() {
            walk(&path, files)?;
        } else if kind.is_symlink() && path.is_dir() {
            // A linked directory is not entered: a link to a parent would never end.
            continue;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

type Emit<'a> = dyn FnMut(&str, bool, u64) -> Result<()> + 'a;

/// A text file in pieces of at most [`PIECE`] bytes, cut on character boundaries.
fn read_text(s: &Source, emit: &mut Emit) -> Result<()> {
    let mut file = std::fs::File::open(&s.path).with_context(|| format!("reading corpus {}", s.path.display()))?;
    let mut buf = vec![0u8; PIECE];
    let (mut filled, mut offset, mut first) = (0usize, 0u64, true);
    loop {
        let n = file.read(&mut buf[filled..]).with_context(|| format!("reading corpus {}", s.path.display()))?;
        let end = filled + n;
        let valid = match std::str::from_utf8(&buf[..end]) {
            Ok(_) => end,
            // A character cut by the end of the buffer is completed by the next read.
            Err(e) if e.error_len().is_none() && n > 0 => e.valid_up_to(),
            Err(e) => bail!("corpus {} is not UTF-8 text (bad byte at offset {})", s.path.display(), offset + e.valid_up_to() as u64),
        };
        // Safe: checked just above.
        let text = std::str::from_utf8(&buf[..valid]).expect("validated");
        emit(text, first, offset + valid as u64)?;
        first = first && text.is_empty();
        offset += valid as u64;
        buf.copy_within(valid..end, 0);
        filled = end - valid;
        if n == 0 {
            return Ok(());
        }
    }
}

/// A JSON Lines file: each record's `field` string is a document.
fn read_json_lines(s: &Source, field: &str, emit: &mut Emit) -> Result<()> {
    let file = std::fs::File::open(&s.path).with_context(|| format!("reading corpus {}", s.path.display()))?;
    json_lines(std::io::BufReader::with_capacity(PIECE, file), &s.path, field, emit)
}

/// The documents of a JSON Lines stream (`path` names it in errors): each record's `field`
/// string, given to `emit` with the bytes read so far.
pub fn json_lines(mut reader: impl std::io::BufRead, path: &Path, field: &str, emit: &mut dyn FnMut(&str, bool, u64) -> Result<()>) -> Result<()> {
    let (mut line, mut number, mut read) = (Vec::new(), 0usize, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).with_context(|| format!("reading corpus {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        read += n as u64;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: serde_json::Value = serde_json::from_slice(&line)
            .map_err(|e| anyhow::anyhow!("corpus {} line {number} is not a JSON record ({e})", path.display()))?;
        let Some(text) = record.get(field).and_then(|v| v.as_str()) else {
            bail!("corpus {} line {number} has no string field {field:?} (name the field with --text-field)", path.display());
        };
        emit(text, true, read)?;
    }
}
