//! `thermoformer.Model`: a loaded run directory and what can be read from it.

// Each argument is a Python keyword argument with a default, as the CLI's flags are.
#![allow(clippy::too_many_arguments)]

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard};

use anyhow::Context;
use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rand::SeedableRng;

use thermoformer::checkpoint::Loaded;
use thermoformer::cli::{check_temperature, DeviceArg, ModelArgs};
use thermoformer::config::Precision;
use thermoformer::error::UsageError;
use thermoformer::model::HeadTemperature;
use thermoformer::physics::generate::{Generator, SampleOptions};
use thermoformer::physics::score::{self, ScoreOptions, Scored};
use thermoformer::Gpt;

use crate::{detached, to_py, value_error};

/// A trained or imported model, loaded from its run directory.
///
/// Load one with `Model.load(dir)`. Methods that run the model release the GIL, so other
/// threads (scoring with the same model, say) run meanwhile; `set_head_temperature` waits until
/// they are done.
#[pyclass(frozen, module = "thermoformer")]
pub struct Model {
    run: RwLock<Loaded>,
    dir: PathBuf,
}

/// One text, or a list of them.
#[derive(FromPyObject)]
pub(crate) enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(t) => vec![t],
            Texts::Many(ts) => ts,
        }
    }
}

impl Model {
    /// Load `dir` as `--checkpoint DIR --precision P` does.
    pub(crate) fn open(py: Python<'_>, dir: PathBuf, precision: &str) -> PyResult<Self> {
        let precision = match precision {
            "f32" => Precision::F32,
            "bf16" => Precision::Bf16,
            other => return Err(value_error(format!("precision must be \"f32\" or \"bf16\", got {other:?}"))),
        };
        let args = ModelArgs { checkpoint: dir.clone(), attn_temperature: None, head_temperature: Vec::new(), device: DeviceArg::Cpu, precision };
        let loaded = detached(py, |_| args.load())?;
        Ok(Self { run: RwLock::new(loaded), dir })
    }

    fn read(&self) -> RwLockReadGuard<'_, Loaded> {
        self.run.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-call changes to a model: head temperatures and the length scaling, applied to a copy.
struct Overrides {
    heads: Vec<HeadTemperature>,
    log_n_scaling: f64,
}

impl Overrides {
    /// `head_temperatures` as a dict {(layer, head): T} or an (L, H) array of every head's T,
    /// for a model of `shape` (L, H).
    fn parse(head_temperatures: Option<&Bound<'_, PyAny>>, log_n_scaling: f64, shape: (usize, usize)) -> PyResult<Self> {
        let mut heads = Vec::new();
        if let Some(given) = head_temperatures {
            if let Ok(dict) = given.cast::<PyDict>() {
                for (key, value) in dict.iter() {
                    let (layer, head): (usize, usize) =
                        key.extract().map_err(|_| value_error(format!("head_temperatures keys are (layer, head) pairs, got {key}")))?;
                    let temperature: f64 = value.extract().map_err(|_| value_error(format!("head_temperatures[{layer}, {head}] must be a number")))?;
                    heads.push(HeadTemperature { layer, head, temperature });
                }
            } else {
                let grid: Vec<Vec<f64>> = given
                    .extract()
                    .map_err(|_| value_error("head_temperatures must be a dict {(layer, head): T} or an (L, H) array of temperatures"))?;
                if grid.len() != shape.0 || grid.iter().any(|row| row.len() != shape.1) {
                    let got: Vec<usize> = grid.iter().map(Vec::len).collect();
                    return Err(value_error(format!(
                        "head_temperatures as an array must be (L, H) = ({}, {}), one T per head; got {} rows of {got:?}",
                        shape.0,
                        shape.1,
                        grid.len()
                    )));
                }
                for (layer, row) in grid.into_iter().enumerate() {
                    heads.extend(row.into_iter().enumerate().map(|(head, temperature)| HeadTemperature { layer, head, temperature }));
                }
            }
        }
        for h in &heads {
            check_temperature(&format!("head_temperatures[{}, {}]", h.layer, h.head), h.temperature).map_err(to_py)?;
        }
        Ok(Self { heads, log_n_scaling })
    }

    /// `model` itself when nothing changes, else a changed copy (the weights are shared).
    fn apply<'m>(&self, model: &'m Gpt) -> anyhow::Result<Cow<'m, Gpt>> {
        if self.heads.is_empty() && self.log_n_scaling == 0.0 {
            return Ok(Cow::Borrowed(model));
        }
        let mut m = model.clone();
        if !self.heads.is_empty() {
            m.override_temperatures(None, &self.heads).map_err(|e| UsageError(e.to_string()))?;
        }
        if self.log_n_scaling != 0.0 {
            m.set_log_n_scaling(self.log_n_scaling).map_err(|e| UsageError(format!("log_n_scaling: {e}")))?;
        }
        Ok(Cow::Owned(m))
    }
}

#[pymethods]
impl Model {
    /// Load a run directory written by `thermoformer train` or `thermoformer import`.
    ///
    /// precision: "f32" (the default; energies as PyTorch computes them, to 1e-5) or "bf16"
    /// (bf16 operands with f32 accumulation, the same bits on every CPU).
    /// Raises FileNotFoundError when `dir` is missing, ValueError when its files are not a
    /// run's.
    #[staticmethod]
    #[pyo3(signature = (dir, precision = "f32"))]
    fn load(py: Python<'_>, dir: PathBuf, precision: &str) -> PyResult<Self> {
        Self::open(py, dir, precision)
    }

    fn __repr__(&self) -> String {
        let run = self.read();
        let c = &run.config.model;
        format!("Model({:?}: {} layers x {} heads x {} wide, context {}, vocabulary {})", self.dir, c.n_layer, c.n_head, c.d_model, c.context, c.vocab_size)
    }

    /// The run's config.json as a dict: "model" (the architecture), "train" (how it was
    /// trained) and, for an imported model, "imported_from".
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = serde_json::to_string(&self.read().config).map_err(|e| to_py(e.into()))?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Layers, heads per layer, and the context in positions (the start token included).
    #[getter]
    fn n_layer(&self) -> usize {
        self.read().config.model.n_layer
    }

    #[getter]
    fn n_head(&self) -> usize {
        self.read().config.model.n_head
    }

    #[getter]
    fn context(&self) -> usize {
        self.read().config.model.context
    }

    /// Token ids of `text`, as the model reads it (the start token not included).
    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.read().tokenizer.encode(text).map_err(to_py)
    }

    /// The text of token ids.
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.read().tokenizer.decode(&ids).map_err(to_py)
    }

    /// Each token of `text` as text (the start token not included).
    fn tokenize(&self, text: &str) -> PyResult<Vec<String>> {
        let run = self.read();
        Ok(run.tokenizer.encode(text).map_err(to_py)?.into_iter().map(|id| run.tokenizer.token_text(id)).collect())
    }

    /// Every head's attention temperature T_h, as an (L, H) float64 array.
    fn temperatures<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let temps = self.read().model.temperatures().map_err(|e| to_py(e.into()))?;
        PyArray2::from_vec2(py, &temps).map_err(|e| value_error(e.to_string()))
    }

    /// Set head `head` of layer `layer` (0-based) to attention temperature T (finite, at least
    /// 0.001) in this Model, for every later call; the run directory is not changed.
    fn set_head_temperature(&self, py: Python<'_>, layer: usize, head: usize, temperature: f64) -> PyResult<()> {
        check_temperature("temperature", temperature).map_err(to_py)?;
        let run = &self.run;
        detached(py, |_| {
            let mut run = run.write().unwrap_or_else(|p| p.into_inner());
            Ok(run.model.override_temperatures(None, &[HeadTemperature { layer, head, temperature }]).map_err(|e| UsageError(e.to_string()))?)
        })
    }

    /// Set every head to attention temperature T, as `--attn-temperature T` does.
    fn set_temperature(&self, py: Python<'_>, temperature: f64) -> PyResult<()> {
        check_temperature("temperature", temperature).map_err(to_py)?;
        let run = &self.run;
        detached(py, |_| {
            let mut run = run.write().unwrap_or_else(|p| p.into_inner());
            Ok(run.model.override_temperatures(Some(temperature), &[])?)
        })
    }

    /// Sequence energies E = -ln p(start + tokens), in nats, as `thermoformer score` gives them.
    ///
    /// texts: a str or a list of str. Returns a float64 array of shape (len(texts),).
    /// per_token / words: return a dict instead, with "energy" (n,) and
    ///   - per_token: "tokens" (a list per text of its tokens as text) and "token_energies" (a
    ///     list per text of float64 arrays (n_tokens,), surprisal -ln p in nats);
    ///   - words: "words" and "word_energies" (nats) per text, minicons's word rule as
    ///     `score --words` applies it (a token opening with a space opens a word).
    /// temperature: score under p_T(x|ctx) = p(x|ctx)^(1/T) / Z_T(ctx).
    /// head_temperatures: {(layer, head): T} or an (L, H) array, for this call only.
    /// log_n_scaling: beta_h(n) = beta_h (1 + S ln n), for this call only.
    /// stride, batch_size: as `score --stride` and `--batch-size`.
    /// Ctrl-C (KeyboardInterrupt) stops it at the next batch.
    #[pyo3(signature = (texts, per_token = false, words = false, temperature = 1.0, head_temperatures = None, log_n_scaling = 0.0, stride = None, batch_size = 32))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        texts: Texts,
        per_token: bool,
        words: bool,
        temperature: f64,
        head_temperatures: Option<Bound<'py, PyAny>>,
        log_n_scaling: f64,
        stride: Option<usize>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let texts = texts.into_vec();
        let scored = self.scored(py, &texts, temperature, head_temperatures.as_ref(), log_n_scaling, stride, batch_size)?;
        let energies = PyArray1::from_vec(py, scored.iter().map(Scored::energy).collect());
        if !per_token && !words {
            return Ok(energies.into_any());
        }
        let out = PyDict::new(py);
        out.set_item("energy", energies)?;
        let run = self.read();
        let tok = &run.tokenizer;
        if per_token {
            let tokens: Vec<Vec<String>> = scored.iter().map(|s| s.ids.iter().map(|&id| tok.token_text(id)).collect()).collect();
            out.set_item("tokens", tokens)?;
            let arrays = PyList::empty(py);
            for s in &scored {
                arrays.append(PyArray1::from_slice(py, &s.energies))?;
            }
            out.set_item("token_energies", arrays)?;
        }
        if words {
            let (words, arrays) = (PyList::empty(py), PyList::empty(py));
            for s in &scored {
                let w = score::word_energies(s, tok).map_err(to_py)?;
                words.append(w.iter().map(|w| w.word.clone()).collect::<Vec<_>>())?;
                arrays.append(PyArray1::from_vec(py, w.iter().map(|w| w.energy).collect()))?;
            }
            out.set_item("words", words)?;
            out.set_item("word_energies", arrays)?;
        }
        Ok(out.into_any())
    }

    /// Surprisal of every word, in bits, as rows (text index, word, surprisal) ready for
    /// `pandas.DataFrame(rows, columns=["text", "word", "surprisal"])`: minicons's word rule, as
    /// `score --words` applies it. A word's surprisal is the sum of its tokens'.
    #[pyo3(signature = (texts, temperature = 1.0))]
    fn word_surprisal(&self, py: Python<'_>, texts: Texts, temperature: f64) -> PyResult<Vec<(usize, String, f64)>> {
        let texts = texts.into_vec();
        let scored = self.scored(py, &texts, temperature, None, 0.0, None, ScoreOptions::DEFAULT.batch_size)?;
        let run = self.read();
        let mut rows = Vec::new();
        for (i, s) in scored.iter().enumerate() {
            for w in score::word_energies(s, &run.tokenizer).map_err(to_py)? {
                rows.push((i, w.word, w.bits));
            }
        }
        Ok(rows)
    }

    /// Read every attention head on `text` (start + tokens, at most context - 1 tokens) as a heat
    /// bath, as `inspect --text` does. Returns a dict of NumPy arrays (L layers, H heads, T
    /// positions with the start first), under `inspect --format json`'s names:
    ///   - "tokens": the T tokens as text;
    ///   - "alpha" (L, H, T, T): attention weights, 0 where a key is hidden;
    ///   - "energy" (L, H, T, T): E_ij = -s_ij, +inf where a key is hidden (weight exp(-inf) = 0);
    ///   - "ln_z", "row_entropy", "row_mean_energy", "row_heat_capacity" (L, H, T): per query;
    ///   - (L, H), averaged over queries: "temperature", "entropy", "normalized_entropy",
    ///     "effective_keys", "mean_ln_z", "mean_energy", "heat_capacity", "identity_residual",
    ///     "sink", "entropy_slope", "entropy_intercept".
    /// response=True adds "susceptibility" (chi = dE/d ln T_h), "ablated_hot" and "ablated_cold"
    /// (L, H), in nats, and "text_energy" (-ln p of the text); `layers` and `heads` bound the
    /// ablations (NaN elsewhere). phase=True (or a grid (low, high, points)) adds "t_star",
    /// "c_star", "peak_in_grid" (L, H), "phase_temperatures" (G,) and "phase_heat_capacity",
    /// "phase_entropy", "phase_sink" (L, H, G). Ctrl-C stops the ablations at the next head.
    #[pyo3(signature = (text, response = false, phase = None, layers = None, heads = None, log_n_scaling = 0.0))]
    fn inspect<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        response: bool,
        phase: Option<Bound<'py, PyAny>>,
        layers: Option<Vec<usize>>,
        heads: Option<Vec<usize>>,
        log_n_scaling: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let grid = crate::arrays::phase_grid(phase.as_ref())?;
        let overrides = Overrides { heads: Vec::new(), log_n_scaling };
        let selection = thermoformer::physics::inspect::Selection { layers, heads };
        let run = &self.run;
        let read = detached(py, |signals| {
            let run = run.read().unwrap_or_else(|p| p.into_inner());
            let c = &run.config.model;
            selection.check(c.n_layer, c.n_head).map_err(|e| UsageError(e.to_string()))?;
            let model = overrides.apply(&run.model)?;
            crate::arrays::Inspection::read(&model, &run.tokenizer, text, response.then_some(&selection), grid.as_deref(), || signals.check())
        })?;
        read.into_dict(py)
    }

    /// Sample `tokens` tokens after `prompt` at `temperature` (0: greedy), among the `top_k`
    /// most probable and within nucleus `top_p`, as `thermoformer generate` does with the same
    /// seed. Returns the continuation (the prompt not included). Ctrl-C stops it.
    #[pyo3(signature = (prompt = "", tokens = 500, temperature = 1.0, top_k = None, top_p = None, seed = 1337))]
    fn generate(&self, py: Python<'_>, prompt: &str, tokens: usize, temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> PyResult<String> {
        let opts = SampleOptions { temperature, top_k, top_p };
        opts.validate().map_err(|e| value_error(e.to_string()))?;
        let run = &self.run;
        detached(py, |signals| {
            let run = run.read().unwrap_or_else(|p| p.into_inner());
            let tok = &run.tokenizer;
            let prompt = tok.encode(prompt).context("the prompt")?;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut generator = Generator::new(&run.model, tok.bos(), &prompt)?;
            let generation = generator.generate(tokens, opts, &mut rng, |_, _| signals.check())?;
            tok.decode(&generation.ids)
        })
    }
}

impl Model {
    /// Score `texts` as `thermoformer score` does: in chunks of its size, so the batches (and so
    /// the bits) are the same as for the same lines in a file.
    fn scored(
        &self,
        py: Python<'_>,
        texts: &[String],
        temperature: f64,
        head_temperatures: Option<&Bound<'_, PyAny>>,
        log_n_scaling: f64,
        stride: Option<usize>,
        batch_size: usize,
    ) -> PyResult<Vec<Scored>> {
        check_temperature("temperature", temperature).map_err(to_py)?;
        if batch_size == 0 {
            return Err(value_error("batch_size must be at least 1"));
        }
        let overrides = Overrides::parse(head_temperatures, log_n_scaling, (self.n_layer(), self.n_head()))?;
        let context = self.context();
        if let Some(s) = stride {
            if s == 0 || s > context {
                return Err(value_error(format!("stride must be in 1..={context} (the model's context), got {s}")));
            }
        }
        let opts = ScoreOptions { temperature, stride, batch_size };
        let run = &self.run;
        detached(py, |signals| {
            let run = run.read().unwrap_or_else(|p| p.into_inner());
            let model = overrides.apply(&run.model)?;
            let mut out = Vec::with_capacity(texts.len());
            for (c, chunk) in texts.chunks(score::CHUNK_TEXTS).enumerate() {
                let first = c * score::CHUNK_TEXTS;
                let seqs = score::encode_texts(&model, &run.tokenizer, chunk, &opts, |i| format!("texts[{}]", first + i), "lower batch_size")?;
                out.extend(score::score_ids_with(&model, &seqs, run.tokenizer.bos(), &opts, || signals.check())?);
            }
            Ok(out)
        })
    }
}
