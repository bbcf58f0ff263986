//! Rewards on sampled continuations: the [`Reward`] trait, the four kinds `--reward` names
//! (`regex:`, `contains:`, `length:`, `energy:`), and their parser.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::checkpoint;
use crate::data::tokenizer::Tok;
use crate::error::UsageError;
use crate::model::Gpt;
use crate::physics::score::{self, ScoreOptions};

/// A reward on sampled continuations. Implement it to plug in your own.
pub trait Reward: Send + Sync {
    /// The reward of one continuation: its decoded text and its token ids (prompt not included).
    fn reward(&self, text: &str, ids: &[u32]) -> Result<f64>;

    /// The rewards of a batch of continuations, `(text, ids)` each. The default scores them one
    /// at a time; override it where one batched call is cheaper (a model-based reward).
    fn rewards(&self, batch: &[(&str, &[u32])]) -> Result<Vec<f64>> {
        batch.iter().map(|&(text, ids)| self.reward(text, ids)).collect()
    }
}

/// `regex:PATTERN`: the number of (non-overlapping) matches.
pub struct RegexReward(pub regex::Regex);

impl Reward for RegexReward {
    fn reward(&self, text: &str, _: &[u32]) -> Result<f64> {
        Ok(self.0.find_iter(text).count() as f64)
    }
}

/// `contains:WORD`: 1 if the text contains the word, else 0.
pub struct ContainsReward(pub String);

impl Reward for ContainsReward {
    fn reward(&self, text: &str, _: &[u32]) -> Result<f64> {
        Ok(f64::from(u8::from(text.contains(&self.0))))
    }
}

/// `length:N`: closeness of the first line's length to N tokens, -|n - N| / N, where n counts the
/// tokens before the continuation's first newline (all of them if there is none).
pub struct LengthReward {
    pub target: usize,
    /// The newline token, if the vocabulary has one.
    pub newline: Option<u32>,
}

impl Reward for LengthReward {
    fn reward(&self, _: &str, ids: &[u32]) -> Result<f64> {
        let n = self.newline.and_then(|nl| ids.iter().position(|&i| i == nl)).unwrap_or(ids.len());
        Ok(-(n as f64 - self.target as f64).abs() / self.target as f64)
    }
}

/// `energy:DIR`: minus the energy per token of the text under another checkpoint (a reward model
/// in miniature: text that model finds likely scores high).
pub struct EnergyReward {
    pub model: Gpt,
    pub tokenizer: Tok,
}

impl Reward for EnergyReward {
    fn reward(&self, text: &str, ids: &[u32]) -> Result<f64> {
        Ok(self.rewards(&[(text, ids)])?[0])
    }

    /// One batched scoring pass over every continuation.
    fn rewards(&self, batch: &[(&str, &[u32])]) -> Result<Vec<f64>> {
        let seqs = batch
            .iter()
            .map(|(text, _)| self.tokenizer.encode(text).context("energy reward: the reward model's tokenizer cannot encode the sample"))
            .collect::<Result<Vec<_>>>()?;
        let scored = score::score_ids(&self.model, &seqs, self.tokenizer.bos(), &ScoreOptions::default())?;
        Ok(scored.iter().map(|s| s.energy_per_token().map_or(0.0, |e| -e)).collect())
    }
}

/// Parse `--reward SPEC` (see the four kinds above) for a policy with tokenizer `tok`.
pub fn parse_reward(spec: &str, tok: &Tok, dev: &Device) -> Result<Box<dyn Reward>> {
    let usage = |m: String| -> anyhow::Error { UsageError(m).into() };
    let (kind, arg) = spec.split_once(':').ok_or_else(|| usage(format!("--reward {spec:?}: expected KIND:ARG, one of regex:PATTERN, contains:WORD, length:N, energy:DIR")))?;
    Ok(match kind {
        "regex" => Box::new(RegexReward(regex::Regex::new(arg).map_err(|e| {
            // The parser's message spans several lines (the pattern, a caret); keep its last.
            let why = e.to_string().lines().last().unwrap_or_default().trim_start_matches("error: ").to_string();
            usage(format!("--reward regex: invalid pattern {arg:?}: {why}"))
        })?)),
        "contains" if !arg.is_empty() => Box::new(ContainsReward(arg.to_string())),
        "contains" => return Err(usage("--reward contains: needs a non-empty word".into())),
        "length" => {
            let target: usize = arg.parse().ok().filter(|&n| n > 0).ok_or_else(|| usage(format!("--reward length:N needs a whole number N >= 1, got {arg:?}")))?;
            let newline = tok.encode("\n").ok().and_then(|ids| (ids.len() == 1).then(|| ids[0]));
            Box::new(LengthReward { target, newline })
        }
        "energy" => {
            let loaded = checkpoint::load(Path::new(arg), dev).with_context(|| format!("--reward energy: loading the reward model {arg}"))?;
            Box::new(EnergyReward { model: loaded.model, tokenizer: loaded.tokenizer })
        }
        other => return Err(usage(format!("--reward: unknown kind {other:?}; use regex:, contains:, length: or energy:"))),
    })
}

