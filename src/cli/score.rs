//! `thermoformer score`: sequence energies as a table, JSON lines or CSV.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use super::{check_temperature, ModelArgs};
use crate::error::UsageError;
use crate::physics::inspect::token_label;
use crate::memory;
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

fn read_lines(args: &ScoreArgs) -> Result<Vec<String>> {
    let text = match (&args.text, args.input.as_deref()) {
        (Some(t), _) => return Ok(vec![t.clone()]),
        (None, Some("-")) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading stdin (is it UTF-8 text?)")?;
            if s.is_empty() {
                anyhow::bail!("stdin is empty: nothing to score");
            }
            s
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            if bytes.is_empty() {
                anyhow::bail!("{path} is empty: nothing to score");
            }
            String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{path} is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))?
        }
        (None, None) => return Err(UsageError("give a FILE to score, - for stdin, or --text \"...\"".into()).into()),
    };
    Ok(text.lines().map(str::to_string).collect())
}

/// `thermoformer score`.
pub fn run_score(args: &ScoreArgs) -> Result<()> {
    check_temperature("--temperature", args.temperature)?;
    if args.batch_size == 0 {
        return Err(UsageError("--batch-size must be at least 1".into()).into());
    }
    let lines = read_lines(args)?;
    let loaded = args.model.load()?;
    let context = loaded.model.config().context;
    if let Some(s) = args.stride {
        if s == 0 || s > context {
            return Err(UsageError(format!("--stride must be in 1..={context} (the model's context), got {s}")).into());
        }
    }
    let tok = &loaded.tokenizer;
    let seqs = lines
        .iter()
        .enumerate()
        .map(|(i, l)| tok.encode(l).with_context(|| format!("line {}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    let opts = ScoreOptions { temperature: args.temperature, stride: args.stride, batch_size: args.batch_size };
    // The first forward pass is the largest: the longest windows, as many as fit the batch.
    let stride = args.stride.unwrap_or_else(|| score::default_stride(context));
    let windows: usize = seqs.iter().map(|ids| Ok(score::windows(ids.len(), context, stride)?.len())).sum::<Result<usize>>()?;
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0).clamp(1, context);
    let batch = args.batch_size.min(windows.max(1));
    let shape = crate::ModelConfig { context: longest, ..loaded.model.config().clone() };
    memory::ensure_fits_on(loaded.model.device(), &format!("scoring {batch} windows of {longest} tokens at once"), shape.forward_bytes(batch), "lower --batch-size")?;
    let started = std::time::Instant::now();
    let scored = score::score_ids(&loaded.model, &seqs, tok.bos(), &opts)?;
    let secs = started.elapsed().as_secs_f64();
    let detail = match (args.per_token, args.words) {
        (true, _) => Detail::Tokens,
        (false, true) => Detail::Words,
        (false, false) => Detail::Lines,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        ScoreFormat::Jsonl => {
            for s in &scored {
                writeln!(out, "{}", serde_json::to_string(&record(s, tok, detail)?)?)?;
            }
        }
        ScoreFormat::Csv => write_csv(&mut out, &scored, tok, detail)?,
        ScoreFormat::Table => write_table(&mut out, &lines, &scored, tok, detail)?,
    }
    out.flush()?;
    if args.show_speed {
        let tokens: usize = scored.iter().map(Scored::tokens).sum();
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

fn write_csv(out: &mut impl Write, scored: &[Scored], tok: &Tok, detail: Detail) -> Result<()> {
    if detail == Detail::Words {
        writeln!(out, "line,word_index,word,tokens,energy,bits")?;
        for (i, s) in scored.iter().enumerate() {
            for (w, word) in score::word_energies(s, tok)?.iter().enumerate() {
                writeln!(out, "{},{w},{},{},{},{}", i + 1, csv_field(&word.word), word.tokens, word.energy, word.bits)?;
            }
        }
    } else if detail == Detail::Tokens {
        writeln!(out, "line,position,token,energy")?;
        for (i, s) in scored.iter().enumerate() {
            for (p, (&id, e)) in s.ids.iter().zip(&s.energies).enumerate() {
                writeln!(out, "{},{},{},{e}", i + 1, p, csv_field(&tok.token_text(id)))?;
            }
        }
    } else {
        writeln!(out, "line,tokens,energy,energy_per_token,perplexity,bits")?;
        for (i, s) in scored.iter().enumerate() {
            writeln!(out, "{},{},{},{},{},{}", i + 1, s.tokens(), s.energy(), opt(s.energy_per_token()), opt(s.perplexity()), s.bits())?;
        }
    }
    Ok(())
}

fn write_table(out: &mut impl Write, lines: &[String], scored: &[Scored], tok: &Tok, detail: Detail) -> Result<()> {
    let f = |x: Option<f64>, w: usize| x.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.4}"));
    writeln!(out, "{:>6} {:>7} {:>12} {:>9} {:>10} {:>12}  text", "line", "tokens", "energy", "E/token", "perplexity", "bits")?;
    for (i, (s, line)) in scored.iter().zip(lines).enumerate() {
        let shown: String = line.chars().take(48).collect();
        let ellipsis = if line.chars().count() > 48 { "..." } else { "" };
        writeln!(
            out,
            "{:>6} {:>7} {:>12.4} {} {} {:>12.4}  {shown}{ellipsis}",
            i + 1,
            s.tokens(),
            s.energy(),
            f(s.energy_per_token(), 9),
            f(s.perplexity(), 10),
            s.bits()
        )?;
        if detail == Detail::Tokens {
            for (&id, e) in s.ids.iter().zip(&s.energies) {
                writeln!(out, "{:>14} {:>12.4}  {}", "", e, token_label(tok, id))?;
            }
        }
        if detail == Detail::Words {
            for w in score::word_energies(s, tok)? {
                writeln!(out, "{:>14} {:>12.4}  {} ({:.3} bits)", "", w.energy, w.word, w.bits)?;
            }
        }
    }
    let tokens: usize = scored.iter().map(Scored::tokens).sum();
    let energy: f64 = scored.iter().map(Scored::energy).sum();
    let per = (tokens > 0).then(|| energy / tokens as f64);
    writeln!(
        out,
        "{:>6} {:>7} {:>12.4} {} {} {:>12.4}  ({} lines)",
        "total",
        tokens,
        energy,
        f(per, 9),
        f(per.map(f64::exp), 10),
        energy / std::f64::consts::LN_2,
        scored.len()
    )?;
    Ok(())
}
