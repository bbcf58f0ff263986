//! Token files: a corpus tokenized once, streaming and in parallel, into a file of ids that every
//! later run reads through a memory map (nanoGPT's `train.bin`, with a header).
//!
//! # Format
//! - Bytes 0..4096: the header. The magic `THERMOFORMER-TOKENS\n`, a little-endian u32 length,
//!   then that many bytes of JSON ([`Header`]), zero-padded.
//! - From byte 4096: the ids, little-endian, one byte each when the vocabulary has at most 256
//!   tokens, two up to 65,536, four beyond.
//!
//! The split into training head and validation tail is not in the file: it follows from the
//! number of tokens and the run's `--val-fraction`, so one file serves every split.
//!
//! # Where they live
//! In the cache directory ([`cache_dir`]): `$THERMOFORMER_CACHE`, else
//! `$XDG_CACHE_HOME/thermoformer`, else `~/.cache/thermoformer`. A token file is named by the
//! corpus's identity (paths, sizes and modification times: [`Corpus::identity`]) and the
//! tokenizer's hash, so a later run on the same files and tokenizer finds it, and an edited
//! corpus or another tokenizer never does. It is written to a temporary name and renamed, so a
//! killed run leaves no half file under the real name; one that is truncated or whose header
//! does not match its name is rebuilt.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::corpus::{fnv_hex, Corpus};
use crate::data::tokenizer::Tok;

#[cfg(target_endian = "big")]
compile_error!("token files are little-endian and mapped as native ids");

const MAGIC: &[u8] = b"THERMOFORMER-TOKENS\n";
const HEADER_BYTES: usize = 4096;
const VERSION: u32 = 1;
/// Text per encoding job: large enough that threads rarely wait, small enough that a few in
/// flight stay far below the memory bound.
const CHUNK: usize = 4 << 20;
/// A job is cut here even with no safe cut point, so memory stays bounded whatever the text.
const HARD_LIMIT: usize = 64 << 20;

/// What a token file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// Bytes per id: 1, 2 or 4.
    pub width: usize,
    pub tokens: u64,
    /// The tokenizer's vocabulary size; every id is below it.
    pub vocab_size: usize,
    /// FNV-1a hex of the tokenizer's JSON.
    pub tokenizer: String,
    /// The corpus as named, its identity ([`Corpus::identity`]), files and bytes.
    pub corpus: String,
    pub identity: String,
    pub files: usize,
    pub bytes: u64,
    /// FNV-1a hex of the joined text: what `state.json` records as `corpus_hash`.
    pub text_hash: String,
}

/// The ids of a corpus, memory-mapped.
pub struct TokenFile {
    path: PathBuf,
    header: Header,
    map: memmap2::Mmap,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).field("header", &self.header).finish()
    }
}

/// A run of token ids, whatever their stored width.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    ids: Ids<'a>,
    /// Ids at or above this are a corrupt file (u32::MAX: not checked).
    bound: u32,
}

#[derive(Debug, Clone, Copy)]
enum Ids<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
}

impl<'a> From<&'a [u32]> for Tokens<'a> {
    fn from(ids: &'a [u32]) -> Self {
        Self { ids: Ids::U32(ids), bound: u32::MAX }
    }
}

impl<'a> From<&'a Vec<u32>> for Tokens<'a> {
    fn from(ids: &'a Vec<u32>) -> Self {
        ids.as_slice().into()
    }
}

impl<'a> Tokens<'a> {
    pub fn len(&self) -> usize {
        match self.ids {
            Ids::U8(s) => s.len(),
            Ids::U16(s) => s.len(),
            Ids::U32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `range` of these.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Tokens<'a> {
        let ids = match self.ids {
            Ids::U8(s) => Ids::U8(&s[range]),
            Ids::U16(s) => Ids::U16(&s[range]),
            Ids::U32(s) => Ids::U32(&s[range]),
        };
        Tokens { ids, bound: self.bound }
    }

    /// Append tokens `range` to `out`; an id outside the vocabulary is an error (a corrupt file).
    pub fn extend_into(&self, range: std::ops::Range<usize>, out: &mut Vec<u32>) -> Result<()> {
        let from = out.len();
        match self.ids {
            Ids::U8(s) => out.extend(s[range.clone()].iter().map(|&i| i as u32)),
            Ids::U16(s) => out.extend(s[range.clone()].iter().map(|&i| i as u32)),
            Ids::U32(s) => out.extend_from_slice(&s[range.clone()]),
        }
        if let Some(k) = out[from..].iter().position(|&id| id >= self.bound) {
            bail!(
                "the token file is corrupt: token {} is id {}, outside the {}-token vocabulary; delete it from the cache ({}) to rebuild it",
                range.start + k,
                out[from + k],
                self.bound,
                cache_dir().display()
            );
        }
        Ok(())
    }

    /// All of them as u32.
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_into(0..self.len(), &mut out)?;
        Ok(out)
    }
}

impl TokenFile {
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.header.tokens as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every id in the file.
    pub fn tokens(&self) -> Tokens<'_> {
        let body = &self.map[HEADER_BYTES..];
        // The map is page-aligned and the body starts at 4096, so these casts cannot fail.
        let ids = match self.header.width {
            1 => Ids::U8(body),
            2 => Ids::U16(bytemuck::cast_slice(body)),
            _ => Ids::U32(bytemuck::cast_slice(body)),
        };
        Tokens { ids, bound: self.header.vocab_size as u32 }
    }

    /// Open the file at `path` if it is a whole token file with exactly the header fields
    /// `expect` checks; `Ok(None)` with the reason when it is missing or must be rebuilt.
    fn open(path: &Path, expect: impl Fn(&Header) -> bool) -> Result<std::result::Result<Self, String>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(String::new())),
            Err(e) => return Err(e).with_context(|| format!("opening token file {}", path.display())),
        };
        // Safety: token files are only ever written under another name and renamed into place,
        // so a mapped file is never modified by this program.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping token file {}", path.display()))?;
        // Windows are read at random offsets: no read-ahead around them, so the process maps
        // only the pages it reads (a hint; ignored where unsupported).
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        let header = match parse_header(&map) {
            Ok(h) => h,
            Err(why) => return Ok(Err(why)),
        };
        if !expect(&header) {
            return Ok(Err("its header does not match its name".into()));
        }
        let Some(want) = header.tokens.checked_mul(header.width as u64).and_then(|b| b.checked_add(HEADER_BYTES as u64)) else {
            return Ok(Err(format!("its header counts {} tokens, more than any file holds", header.tokens)));
        };
        if map.len() as u64 != want {
            return Ok(Err(format!("it has {} bytes where its header says {want}", map.len())));
        }
        Ok(Ok(Self { path: path.to_path_buf(), header, map }))
    }
}

impl TokenFile {
    /// The header of the token file at `path`, if it has a readable one (the ids are not read).
    pub fn header_of(path: &Path) -> Option<Header> {
        use std::io::Read;
        let mut head = vec![0u8; HEADER_BYTES];
        std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
        parse_header(&head).ok()
    }
}

/// A token file's header from its first bytes, or why it is not one.
pub fn parse_header(map: &[u8]) -> std::result::Result<Header, String> {
    if map.len() < HEADER_BYTES || !map.starts_with(MAGIC) {
        return Err("it is not a token file (no header)".into());
    }
    let at = MAGIC.len();
    let len = u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes")) as usize;
    let json = map.get(at + 4..at + 4 + len).filter(|_| at + 4 + len <= HEADER_BYTES).ok_or("its header is cut short")?;
    let header: Header = serde_json::from_slice(json).map_err(|e| format!("its header is not readable ({e})"))?;
    if header.version != VERSION || ![1, 2, 4].contains(&header.width) {
        return Err(format!("its header (version {}, width {}) is not this build's", header.version, header.width));
    }
    Ok(header)
}

/// Bytes per id for a vocabulary of `vocab_size` tokens.
fn width_for(vocab_size: usize) -> usize {
    match vocab_size {
        0..=256 => 1,
        257..=65_536 => 2,
        _ => 4,
    }
}

/// Where token files (and tokenizers trained for a corpus) are kept.
pub fn cache_dir() -> PathBuf {
    let from_env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    from_env("THERMOFORMER_CACHE")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|d| d.join("thermoformer")))
        .or_else(|| from_env("HOME").map(|d| d.join(".cache").join("thermoformer")))
        .unwrap_or_else(|| std::env::temp_dir().join("thermoformer-cache"))
}

/// A fresh temporary name beside `path` (unique across processes and threads).
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Remove what killed runs left of `path`: the temporary files [`temp_beside`] named for it that
/// no writer holds. A writer holds an exclusive lock on its temporary file until it has renamed
/// it, so a file whose lock can be taken is a dead writer's (across processes and containers
/// sharing the directory, whatever their process ids).
pub(crate) fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let ours = entry.file_name().to_str().and_then(|f| f.strip_prefix(name)).is_some_and(|r| r.starts_with('.') && r.ends_with(".tmp"));
        if !ours {
            continue;
        }
        if !held_by_a_writer(&entry.path()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether a live writer holds the temporary file `path` (its lock cannot be taken now). A file
/// that cannot be opened counts as held: it is left alone.
pub(crate) fn held_by_a_writer(path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(f) => f.try_lock().is_err(),
        Err(_) => true,
    }
}

/// Write `bytes` to `path` through a temporary file beside it, locked while it is written and
/// renamed into place, after removing what dead writers left of `path` ([`remove_stale_temps`]).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    remove_stale_temps(path);
    let tmp = temp_beside(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.lock()?;
        f.write_all(bytes)?;
        // Renamed while its lock is held, so no cleaner takes it for a dead writer's.
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The cache directory `dir` (default [`cache_dir`]), created if need be.
pub(crate) fn ensure_cache(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.map_or_else(cache_dir, Path::to_path_buf);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the token cache {}; set THERMOFORMER_CACHE to a writable directory", dir.display()))?;
    Ok(dir)
}

/// The token file of `corpus` under `tok` in the cache ([`cache_dir`]): the cached one when it is
/// whole and matches, else tokenized now (with a progress bar when `progress`).
pub fn tokenize(corpus: &Corpus, tok: &Tok, progress: bool) -> Result<Arc<TokenFile>> {
    tokenize_in(None, corpus, tok, progress)
}

/// [`tokenize`] with the cache in `cache` (None: [`cache_dir`]).
pub fn tokenize_in(cache: Option<&Path>, corpus: &Corpus, tok: &Tok, progress: bool) -> Result<Arc<TokenFile>> {
    let tokenizer = fnv_hex(&tok.to_json()?);
    let identity = corpus.identity();
    let path = ensure_cache(cache)?.join(format!("tokens-{identity}-{tokenizer}.bin"));
    match TokenFile::open(&path, |h| h.identity == identity && h.tokenizer == tokenizer && h.vocab_size == tok.vocab_size())? {
        Ok(file) => return Ok(Arc::new(file)),
        Err(why) if !why.is_empty() => crate::progress::note(format!("token file {} cannot be used: {why}; rebuilding it", path.display())),
        Err(_) => {}
    }
    let header = Header {
        version: VERSION,
        width: width_for(tok.vocab_size()),
        tokens: 0,
        vocab_size: tok.vocab_size(),
        tokenizer: tokenizer.clone(),
        corpus: corpus.name().to_string(),
        identity: identity.clone(),
        files: corpus.files(),
        bytes: corpus.bytes(),
        text_hash: String::new(),
    };
    remove_stale_temps(&path);
    let tmp = temp_beside(&path);
    let started = std::time::Instant::now();
    let held = match write(&tmp, corpus, tok, header, progress) {
        Ok(held) => held,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // Renamed while its lock is held, so no cleaner takes it for a dead writer's.
    std::fs::rename(&tmp, &path).with_context(|| format!("moving the token file into {}", path.display()))?;
    drop(held);
    let file = match TokenFile::open(&path, |h| h.identity == identity && h.tokenizer == tokenizer)? {
        Ok(file) => file,
        Err(why) => bail!("the token file just written to {} cannot be read back: {why}", path.display()),
    };
    let secs = started.elapsed().as_secs_f64();
    crate::progress::note(format!(
        "tokenized {} ({:.1} MB) into {} tokens in {secs:.1} s ({:.0} MB/s): {}",
        corpus.name(),
        corpus.bytes() as f64 / 1e6,
        file.len(),
        corpus.bytes() as f64 / 1e6 / secs.max(1e-9),
        path.display()
    ));
    Ok(Arc::new(file))
}

/// Where a cut between two encoding jobs is known to change no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutRule {
    /// Anywhere: a char tokenizer encodes each character alone.
    Anywhere,
    /// Where GPT-2's pre-tokenizer always splits, so no merge crosses the cut: before a single
    /// space between two non-whitespace characters (the space opens the next pre-token), or
    /// after a newline between two non-whitespace characters (a newline alone is a pre-token).
    Gpt2,
    /// Nowhere: a tokenizer whose pipeline is not known here is given the text whole.
    Never,
}

impl CutRule {
    /// The rule for `tok`.
    pub fn of(tok: &Tok) -> Self {
        if tok.kind() == crate::config::TokenizerKind::Char {
            CutRule::Anywhere
        } else if tok.is_gpt2_bpe() {
            CutRule::Gpt2
        } else {
            CutRule::Never
        }
    }

    /// Whether `text` may be cut at byte `i` (a character boundary, 0 < i < len).
    fn allows(self, text: &str, i: usize) -> bool {
        match self {
            CutRule::Anywhere => true,
            CutRule::Never => false,
            CutRule::Gpt2 => {
                let (before, after) = text.split_at(i);
                let mut back = before.chars().rev();
                let mut fwd = after.chars();
                let solid = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
                match (back.next(), fwd.next()) {
                    // Before a lone space: "a| b".
                    (b, Some(' ')) => solid(b) && solid(fwd.next()),
                    // After a lone newline: "a\n|b".
                    (Some('\n'), a) => solid(back.next()) && solid(a),
                    _ => false,
                }
            }
        }
    }
}

/// Cuts a stream of text into encoding jobs of about `chunk` bytes at the cut points of a
/// [`CutRule`], scanning each byte once. Past `hard_limit` bytes with no cut point (a text with
/// no spaces or newlines in it, or a tokenizer cut nowhere) it cuts anyway, on a character
/// boundary, and says so: tokens may then differ at that one place.
pub struct Chunker {
    rule: CutRule,
    chunk: usize,
    hard_limit: usize,
    pending: String,
    /// Bytes of `pending` already searched for cut points.
    scanned: usize,
    /// The last cut point found in `pending`.
    last_cut: Option<usize>,
    /// Forced cuts so far.
    pub forced: usize,
}

impl Chunker {
    pub fn new(rule: CutRule, chunk: usize, hard_limit: usize) -> Self {
        Self { rule, chunk: chunk.max(1), hard_limit: hard_limit.max(chunk), pending: String::new(), scanned: 0, last_cut: None, forced: 0 }
    }

    /// Add `text`; the jobs now complete.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut jobs = Vec::new();
        while self.pending.len() >= self.chunk {
            // Search the bytes not yet searched (a cut needs a character of context either side,
            // so the last few bytes are searched again next time). Only a space or a newline
            // can be a cut point other than anywhere.
            let end = self.pending.len();
            match self.rule {
                CutRule::Anywhere => self.last_cut = Some(end),
                CutRule::Never => {}
                CutRule::Gpt2 => {
                    let from = self.scanned.saturating_sub(8);
                    for (k, &b) in self.pending.as_bytes()[from..].iter().enumerate() {
                        let i = match b {
                            b' ' => from + k,
                            b'\n' => from + k + 1,
                            _ => continue,
                        };
                        if i > 0 && i < end && self.rule.allows(&self.pending, i) {
                            self.last_cut = Some(i);
                        }
                    }
                }
            }
            self.scanned = end;
            let cut = match self.last_cut {
                Some(c) if self.rule == CutRule::Anywhere || c >= self.chunk / 2 || end >= self.hard_limit => c,
                None if end >= self.hard_limit => {
                    self.forced += 1;
                    let mut c = self.chunk;
                    while !self.pending.is_char_boundary(c) {
                        c += 1;
                    }
                    c
                }
                _ => break,
            };
            let rest = self.pending.split_off(cut);
            jobs.push(std::mem::replace(&mut self.pending, rest));
            self.last_cut = None;
            // The remainder was searched before the cut: look again from its start.
            self.scanned = 0;
        }
        jobs
    }

    /// The last job.
    pub fn finish(self) -> String {
        self.pending
    }
}

/// Split `text` into the jobs [`tokenize`] would encode, fed to a [`Chunker`] in pieces of
/// `piece` bytes (exposed for the tests that the jobs' tokens are the whole text's).
pub fn chunks(text: &str, rule: CutRule, chunk: usize, piece: usize) -> Vec<String> {
    let mut chunker = Chunker::new(rule, chunk, 16 * chunk);
    let mut jobs = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = piece.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        jobs.extend(chunker.push(&rest[..end]));
        rest = &rest[end..];
    }
    jobs.push(chunker.finish());
    jobs
}

/// Tokenize `corpus` into `path`: a reader thread reads, fingerprints and cuts the text into
/// jobs; the jobs are encoded in parallel, a group at a time, and written in order.
fn write(path: &Path, corpus: &Corpus, tok: &Tok, mut header: Header, progress: bool) -> Result<std::fs::File> {
    let file = std::fs::File::create(path).with_context(|| format!("creating token file {}", path.display()))?;
    file.lock().with_context(|| format!("locking token file {}", path.display()))?;
    // The header must fit its 4 KiB whatever the counts turn out to be.
    let widest = Header { tokens: u64::MAX, text_hash: "0".repeat(16), ..header.clone() };
    if MAGIC.len() + 4 + serde_json::to_vec(&widest)?.len() > HEADER_BYTES {
        bail!("the token file header for corpus {} does not fit {HEADER_BYTES} bytes (its name is too long)", corpus.name());
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(&[0u8; HEADER_BYTES])?;
    let rule = CutRule::of(tok);
    let threads = rayon::current_num_threads().max(1);
    let pb = crate::progress::bytes_bar(corpus.bytes(), &format!("tokenizing {}", corpus.name()), progress);
    // Jobs: text, file bytes read when it was cut, and its byte offset in the joined text.
    let (send, receive) = std::sync::mpsc::sync_channel::<(String, u64, u64)>(2 * threads);
    let mut tokens = 0u64;
    let hash = std::thread::scope(|scope| -> Result<String> {
        let reader = scope.spawn(move || -> Result<String> {
            let mut chunker = Chunker::new(rule, CHUNK, HARD_LIMIT);
            let mut offset = 0u64;
            let hash = corpus.read(|piece, read| {
                for job in chunker.push(piece) {
                    let len = job.len() as u64;
                    // A closed channel means the writer failed: its error is the one to report.
                    send.send((job, read, offset)).map_err(|_| anyhow!("tokenizing stopped"))?;
                    offset += len;
                }
                Ok(())
            })?;
            if chunker.forced > 0 {
                crate::progress::note(format!(
                    "note: {} had {} stretches of {} MiB with no place where a cut is known to change no token; they were cut anyway, which may change a token or two at each cut",
                    corpus.name(),
                    chunker.forced,
                    HARD_LIMIT >> 20
                ));
            }
            send.send((chunker.finish(), corpus.bytes(), offset)).map_err(|_| anyhow!("tokenizing stopped"))?;
            Ok(hash)
        });
        let written = (|| -> Result<()> {
            let mut group: Vec<(String, u64, u64)> = Vec::with_capacity(threads);
            let mut open = true;
            while open {
                group.clear();
                while group.len() < threads {
                    match receive.recv() {
                        Ok(job) => group.push(job),
                        Err(_) => {
                            open = false;
                            break;
                        }
                    }
                }
                let encoded: Vec<Vec<u32>> = group
                    .par_iter()
                    .map(|(text, _, at)| tok.encode(text).with_context(|| format!("in the text from byte {at} of the corpus")))
                    .collect::<Result<_>>()?;
                for ids in &encoded {
                    write_ids(&mut out, ids, header.width)?;
                    tokens += ids.len() as u64;
                }
                if let Some((_, read, _)) = group.last() {
                    pb.set_position(*read);
                }
            }
            Ok(())
        })();
        drop(receive);
        let hash = reader.join().map_err(|_| anyhow!("the corpus reader panicked"))?;
        written?;
        hash
    })
    .with_context(|| format!("tokenizing corpus {}", corpus.name()))?;
    pb.finish_and_clear();
    header.tokens = tokens;
    header.text_hash = hash;
    let mut file = out.into_inner().map_err(|e| anyhow!("writing token file {}: {}", path.display(), e.error()))?;
    let json = serde_json::to_vec(&header)?;
    let mut head = Vec::with_capacity(HEADER_BYTES);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    if head.len() > HEADER_BYTES {
        bail!("the token file header is {} bytes, more than {HEADER_BYTES}", head.len());
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&head)?;
    file.sync_all().with_context(|| format!("writing token file {}", path.display()))?;
    Ok(file)
}

fn write_ids(out: &mut impl Write, ids: &[u32], width: usize) -> Result<()> {
    let bytes: Vec<u8> = match width {
        1 => ids.iter().map(|&i| i as u8).collect(),
        2 => ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect(),
        _ => ids.iter().flat_map(|&i| i.to_le_bytes()).collect(),
    };
    out.write_all(&bytes).context("writing the token file")?;
    Ok(())
}
