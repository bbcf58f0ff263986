//! `thermoformer score`: sequence energies as a table, JSON lines or CSV.

use std::io::Write;

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use super::{check_temperature, ModelArgs};
use crate::error::UsageError;
use crate::physics::inspect::token_label;
use crate::physics::score::{self, ScoreOptions, Scored, WordEnergy};
use crate::data::tokenizer::Tok;

/// Output format of `score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoreFormat {
    /// Aligned columns with a totals row.
    Table,
    /// One JSON object per input line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// Options of `thermoformer score`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct ScoreArgs {
    /// Text file to score line by line, or - for stdin.
    #[arg(value_name = "FILE|-", conflicts_with = "text")]
    pub input: Option<String>,
    /// Score this one string instead of a file.
    #[arg(long)]
    pub text: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub length: super::LengthScalingArgs,
    /// Score under the tempered model p_T(x|ctx) = p(x|ctx)^(1/T) / Z_T(ctx), normalised at every
    /// step; 1 is the plain model.
    #[arg(long, value_name = "T", default_value_t = ScoreOptions::DEFAULT.temperature)]
    pub temperature: f64,
    /// Add each token and its energy (surprisal -ln p, nats). In jsonl: `token_energies`, a list of
    /// {"token", "energy"}; in csv: one row per token (line,position,token,energy) instead of one
    /// per line; in the table: an indented row per token.
    #[arg(long)]
    pub per_token: bool,
    /// Add each word and its energy (surprisal, nats and bits), as minicons's word_score: a
    /// byte-level BPE token that starts with a space opens a word, and with a char tokenizer every
    /// space does (its energy counts toward the word it opens). In jsonl: `word_energies`, a list
    /// of {"word", "tokens", "energy", "bits"}; in csv: one row per word
    /// (line,word_index,word,tokens,energy,bits); in the table: an indented row per word.
    #[arg(long, conflicts_with = "per_token")]
    pub words: bool,
    /// Output format. jsonl objects have exactly the fields energy, tokens, energy_per_token,
    /// perplexity, bits (and token_energies with --per-token, word_energies with --words); an empty line has 0 tokens, energy 0
    /// and null per-token figures.
    #[arg(long, value_enum, default_value_t = ScoreFormat::Table)]
    pub format: ScoreFormat,
    /// Lines longer than the context are scored with a sliding window: each window is BOS + up to
    /// context-1 tokens, windows start STRIDE tokens apart, and every token is scored once, in the
    /// first window that reaches it. Tokens of the first window see everything before them; every
    /// later token sees at least context-STRIDE tokens. 1 <= STRIDE <= context: 1 gives every token
    /// the full context at the cost of one window per token; the default halves the cost per token
    /// and keeps at least half the context [default: context/2].
    #[arg(long)]
    pub stride: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = ScoreOptions::DEFAULT.batch_size)]
    pub batch_size: usize,
    /// After the report, print to stderr the tokens scored, the seconds the scoring took (loading
    /// the model and tokenizing excluded) and tokens/s.
    #[arg(long)]
    pub show_speed: bool,
}

#[derive(Serialize)]
struct TokenEnergy {
    token: String,
    energy: f64,
}

#[derive(Serialize)]
struct Record {
    energy: f64,
    tokens: usize,
    energy_per_token: Option<f64>,
    perplexity: Option<f64>,
    bits: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_energies: Option<Vec<TokenEnergy>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    word_energies: Option<Vec<WordEnergy>>,
}

/// What to add under each line: nothing, its tokens, or its words.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Detail {
    Lines,
    Tokens,
    Words,
}

/// Lines scored in one chunk at most: the most held in memory at once, so a file of any size is
/// scored in bounded memory, its results written (and flushed) chunk by chunk.
const CHUNK_LINES: usize = score::CHUNK_TEXTS;

/// One line read, or why reading stopped.
type Line = Result<String>;

/// The input, read a chunk of lines at a time. A file or stdin is read by a thread of its own
/// into a bounded queue. A regular file (named, or redirected to stdin) is scored in full chunks
/// of [`CHUNK_LINES`], so the batches, and with them the last bits of every energy, are the same
/// on every run (and the same as the Python module's for the same lines). From a pipe or a
/// terminal a chunk is whatever lines have arrived (at least one): a slow pipe gets each line's
/// result as soon as the line is read, never held back waiting for more.
struct Input {
    /// `--text`, returned once.
    text: Option<String>,
    lines: Option<std::sync::mpsc::Receiver<Line>>,
    /// Whether a chunk waits for [`CHUNK_LINES`] lines (or the end): the input is a regular file.
    whole_chunks: bool,
    /// Lines read so far (an empty input is an error).
    read: usize,
    /// "stdin" or the file's path, for messages.
    name: String,
}

impl Input {
    fn open(args: &ScoreArgs) -> Result<Self> {
        let (reader, name): (Box<dyn std::io::BufRead + Send>, String) = match (&args.text, args.input.as_deref()) {
            (Some(t), _) => return Ok(Self { text: Some(t.clone()), lines: None, whole_chunks: true, read: 0, name: "--text".into() }),
            (None, Some("-")) => (Box::new(std::io::BufReader::new(std::io::stdin())), "stdin".into()),
            (None, Some(path)) => {
                let file = std::fs::File::open(path).with_context(|| format!("reading {path}"))?;
                (Box::new(std::io::BufReader::new(file)), path.to_string())
            }
            (None, None) => return Err(UsageError("give a FILE to score, - for stdin, or --text \"...\"".into()).into()),
        };
        // stdin redirected from a file is a regular file too (Linux names it /dev/stdin).
        let regular = if name == "stdin" { "/dev/stdin" } else { name.as_str() };
        let whole_chunks = std::fs::metadata(regular).is_ok_and(|m| m.is_file());
        let (send, receive) = std::sync::mpsc::sync_channel(CHUNK_LINES);
        let what = name.clone();
        // The thread ends at the end of the input, at an error, or when the queue is dropped.
        std::thread::spawn(move || read_lines(reader, &what, &send));
        Ok(Self { text: None, lines: Some(receive), whole_chunks, read: 0, name })
    }

    /// The next lines (as `str::lines` splits them: no `\n`, no trailing `\r`), at most
    /// [`CHUNK_LINES`]: from a regular file, as many as there are; from a pipe, one waited for
    /// and then those already read. None at the end; an empty input is an error.
    fn next_chunk(&mut self) -> Result<Vec<String>> {
        if let Some(t) = self.text.take() {
            return Ok(vec![t]);
        }
        let Some(queue) = self.lines.as_ref() else { return Ok(Vec::new()) };
        let mut lines = Vec::new();
        match queue.recv() {
            Ok(line) => lines.push(line?),
            Err(_) => {
                self.lines = None;
                if self.read == 0 {
                    anyhow::bail!("{} is empty: nothing to score", self.name);
                }
                return Ok(lines);
            }
        }
        while lines.len() < CHUNK_LINES {
            let next = if self.whole_chunks {
                queue.recv().map_err(|_| std::sync::mpsc::TryRecvError::Disconnected)
            } else {
                queue.try_recv()
            };
            match next {
                Ok(line) => lines.push(line?),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.lines = None;
                    break;
                }
            }
        }
        self.read += lines.len();
        Ok(lines)
    }
}

/// Send `reader`'s lines into `send` until the end, an error (sent as the last item) or a
/// dropped receiver.
fn read_lines(mut reader: Box<dyn std::io::BufRead + Send>, name: &str, send: &std::sync::mpsc::SyncSender<Line>) {
    let mut offset = 0usize;
    loop {
        let mut buf = Vec::new();
        let line = match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let start = offset;
                offset += n;
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                String::from_utf8(buf).map_err(|e| anyhow::anyhow!("{name} is not UTF-8 text (invalid byte at offset {})", start + e.utf8_error().valid_up_to()))
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {name}"))),
        };
        let stop = line.is_err();
        if send.send(line).is_err() || stop {
            return;
        }
    }
}

/// Where results go: the format, the detail, the lines written so far and the running totals.
struct Report<'a, W: Write> {
    out: W,
    tok: &'a Tok,
    format: ScoreFormat,
    detail: Detail,
    lines: usize,
    tokens: usize,
    energy: f64,
}

impl<'a, W: Write> Report<'a, W> {
    fn new(mut out: W, tok: &'a Tok, format: ScoreFormat, detail: Detail) -> Result<Self> {
        match (format, detail) {
            (ScoreFormat::Csv, Detail::Words) => writeln!(out, "line,word_index,word,tokens,energy,bits")?,
            (ScoreFormat::Csv, Detail::Tokens) => writeln!(out, "line,position,token,energy")?,
            (ScoreFormat::Csv, Detail::Lines) => writeln!(out, "line,tokens,energy,energy_per_token,perplexity,bits")?,
            (ScoreFormat::Table, _) => writeln!(out, "{:>6} {:>7} {:>12} {:>9} {:>10} {:>12}  text", "line", "tokens", "energy", "E/token", "perplexity", "bits")?,
            (ScoreFormat::Jsonl, _) => {}
        }
        Ok(Self { out, tok, format, detail, lines: 0, tokens: 0, energy: 0.0 })
    }

    /// Write the results of a chunk of lines, then flush them.
    fn write(&mut self, lines: &[String], scored: &[Scored]) -> Result<()> {
        let tok = self.tok;
        for (line, s) in lines.iter().zip(scored) {
            self.lines += 1;
            self.tokens += s.tokens();
            self.energy += s.energy();
            let n = self.lines;
            let out = &mut self.out;
            match self.format {
                ScoreFormat::Jsonl => writeln!(out, "{}", serde_json::to_string(&record(s, tok, self.detail)?)?)?,
                ScoreFormat::Csv => match self.detail {
                    Detail::Words => {
                        for (w, word) in score::word_energies(s, tok)?.iter().enumerate() {
                            writeln!(out, "{n},{w},{},{},{},{}", csv_field(&word.word), word.tokens, word.energy, word.bits)?;
                        }
                    }
                    Detail::Tokens => {
                        for (p, (&id, e)) in s.ids.iter().zip(&s.energies).enumerate() {
                            writeln!(out, "{n},{p},{},{e}", csv_field(&tok.token_text(id)))?;
                        }
                    }
                    Detail::Lines => writeln!(out, "{n},{},{},{},{},{}", s.tokens(), s.energy(), opt(s.energy_per_token()), opt(s.perplexity()), s.bits())?,
                },
                ScoreFormat::Table => {
                    let shown: String = line.chars().take(48).collect();
                    let ellipsis = if line.chars().count() > 48 { "..." } else { "" };
                    writeln!(out, "{n:>6} {:>7} {:>12.4} {} {} {:>12.4}  {shown}{ellipsis}", s.tokens(), s.energy(), fmt(s.energy_per_token(), 9), fmt(s.perplexity(), 10), s.bits())?;
                    if self.detail == Detail::Tokens {
                        for (&id, e) in s.ids.iter().zip(&s.energies) {
                            writeln!(out, "{:>14} {:>12.4}  {}", "", e, token_label(tok, id))?;
                        }
                    }
                    if self.detail == Detail::Words {
                        for w in score::word_energies(s, tok)? {
                            writeln!(out, "{:>14} {:>12.4}  {} ({:.3} bits)", "", w.energy, w.word, w.bits)?;
                        }
                    }
                }
            }
        }
        self.out.flush()?;
        Ok(())
    }

    /// The table's totals row.
    fn finish(mut self) -> Result<()> {
        if self.format == ScoreFormat::Table {
            let per = (self.tokens > 0).then(|| self.energy / self.tokens as f64);
            writeln!(
                self.out,
                "{:>6} {:>7} {:>12.4} {} {} {:>12.4}  ({} lines)",
                "total",
                self.tokens,
                self.energy,
                fmt(per, 9),
                fmt(per.map(f64::exp), 10),
                self.energy / std::f64::consts::LN_2,
                self.lines
            )?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// A figure in a column of width `w`, or `-` where it is undefined.
fn fmt(x: Option<f64>, w: usize) -> String {
    x.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.4}"))
}

/// `thermoformer score`: the input is read, scored and written a chunk of lines at a time.
pub fn run_score(args: &ScoreArgs) -> Result<()> {
    check_temperature("--temperature", args.temperature)?;
    if args.batch_size == 0 {
        return Err(UsageError("--batch-size must be at least 1".into()).into());
    }
    let mut input = Input::open(args)?;
    let mut chunk = input.next_chunk()?; // an empty or unreadable input fails before the model loads
    let mut loaded = args.model.load()?;
    args.length.apply(&mut loaded.model)?;
    let context = loaded.model.config().context;
    if let Some(s) = args.stride {
        if s == 0 || s > context {
            return Err(UsageError(format!("--stride must be in 1..={context} (the model's context), got {s}")).into());
        }
    }
    let tok = &loaded.tokenizer;
    let opts = ScoreOptions { temperature: args.temperature, stride: args.stride, batch_size: args.batch_size };
    let detail = match (args.per_token, args.words) {
        (true, _) => Detail::Tokens,
        (false, true) => Detail::Words,
        (false, false) => Detail::Lines,
    };
    let mut report = Report::new(std::io::BufWriter::new(std::io::stdout().lock()), tok, args.format, detail)?;
    let mut secs = 0.0;
    while !chunk.is_empty() {
        let first = report.lines;
        let seqs = score::encode_texts(&loaded.model, tok, &chunk, &opts, |i| format!("line {}", first + i + 1), "lower --batch-size")?;
        let started = std::time::Instant::now();
        let scored = score::score_ids(&loaded.model, &seqs, tok.bos(), &opts)?;
        secs += started.elapsed().as_secs_f64();
        report.write(&chunk, &scored)?;
        chunk = input.next_chunk()?;
    }
    let tokens = report.tokens;
    report.finish()?;
    if args.show_speed {
        crate::progress::note(format!("scored {tokens} tokens in {secs:.3} s: {:.1} tokens/s", tokens as f64 / secs.max(1e-9)));
    }
    Ok(())
}

fn token_energies(s: &Scored, tok: &Tok) -> Vec<TokenEnergy> {
    s.ids.iter().zip(&s.energies).map(|(&id, &e)| TokenEnergy { token: tok.token_text(id), energy: e }).collect()
}

fn record(s: &Scored, tok: &Tok, detail: Detail) -> Result<Record> {
    Ok(Record {
        energy: s.energy(),
        tokens: s.tokens(),
        energy_per_token: s.energy_per_token(),
        perplexity: s.perplexity(),
        bits: s.bits(),
        token_energies: (detail == Detail::Tokens).then(|| token_energies(s, tok)),
        word_energies: if detail == Detail::Words { Some(score::word_energies(s, tok)?) } else { None },
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or(String::new(), |v| format!("{v}"))
}
