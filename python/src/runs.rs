//! `thermoformer.train` and `thermoformer.import_model`: the functions that write run
//! directories.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use thermoformer::cli::{self, Command};
use thermoformer::import::{self, ImportRequest};

use crate::model::Model;
use crate::{detached, to_py, value_error};

/// `train`'s keyword arguments as the command line `thermoformer train` would get them: each
/// key is a flag in snake_case (`d_model=128` is `--d-model 128`); True gives a switch, False or
/// None leaves it out, and a list repeats the flag. The parse is clap's own, so the defaults,
/// the checks and the messages are the CLI's.
fn command_line(options: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
    let mut command = cli::command();
    command.build(); // fills in each argument's value count
    let train = command.find_subcommand("train").expect("the CLI has a train command");
    let mut argv = vec!["thermoformer".to_string(), "train".to_string()];
    let Some(options) = options else { return Ok(argv) };
    for (key, value) in options.iter() {
        let key: String = key.extract()?;
        let arg = train
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .find(|a| a.get_long().is_some_and(|long| long.replace('-', "_") == key))
            .ok_or_else(|| value_error(format!("train() got an unknown option {key:?}: its options are `thermoformer train --help`'s flags in snake_case")))?;
        let flag = format!("--{}", arg.get_long().expect("found by its long name"));
        if value.is_none() {
            continue;
        }
        let switch = !arg.get_action().takes_values() || arg.get_num_args().is_some_and(|n| n.max_values() == 0);
        if switch {
            let on: bool = value.extract().map_err(|_| value_error(format!("{key} is a switch: give True or False")))?;
            if on {
                argv.push(flag);
            }
            continue;
        }
        let items: Vec<Bound<'_, PyAny>> = if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
            value.try_iter()?.collect::<PyResult<_>>()?
        } else {
            vec![value]
        };
        for item in items {
            argv.push(flag.clone());
            argv.push(item.str()?.to_string());
        }
    }
    Ok(argv)
}

/// Train a model and save its run directory, as `thermoformer train` does with the same
/// options: every keyword is a flag of `thermoformer train --help` in snake_case (corpus,
/// out, steps, d_model, n_layer, preset, resume, ...), with the same defaults (with none:
/// the default model on data/tinyshakespeare.txt into checkpoints/shakespeare, relative to the
/// working directory). Progress and evaluations go to stderr.
///
/// Returns `train --format json`'s report as a dict (out, steps, params, val_ce,
/// tokens_per_sec, wall_secs, ..., sample). Raises ValueError for a bad option (with the CLI's
/// message), FileNotFoundError for a missing corpus. Ctrl-C (KeyboardInterrupt) stops it before
/// the next step, checkpointed at the last step taken: `resume=True` continues it.
#[pyfunction]
#[pyo3(signature = (**options))]
pub fn train<'py>(py: Python<'py>, options: Option<Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
    let argv = command_line(options.as_ref())?;
    let parsed = cli::try_parse_from(&argv).map_err(|e| {
        let line = cli::one_line(&e.to_string());
        value_error(line.strip_prefix("error: ").unwrap_or(&line).to_string())
    })?;
    let Command::Train(args) = parsed.command else { unreachable!("argv names the train command") };
    let (report, sample) = detached(py, |signals| cli::train_and_sample_with(&args, || signals.check()))?;
    let mut json = serde_json::to_value(&report).map_err(|e| to_py(e.into()))?;
    json["sample"] = sample.into();
    py.import("json")?.call_method1("loads", (json.to_string(),))
}

/// Import a model trained elsewhere into a run directory `out`, as `thermoformer import` does,
/// and load it: a Hugging Face directory (GPT-2, GPT-Neo, GPT-NeoX/Pythia, Llama, Qwen2/3) or a
/// nanoGPT ckpt.pt (with `meta`, its meta.pkl, for a char-level one). `tokenizer` names a
/// tokenizer.json to use instead of the source's; `overwrite` replaces what `out` holds.
#[pyfunction]
#[pyo3(signature = (src, out, meta = None, tokenizer = None, overwrite = false, precision = "f32"))]
pub fn import_model(py: Python<'_>, src: PathBuf, out: PathBuf, meta: Option<PathBuf>, tokenizer: Option<PathBuf>, overwrite: bool, precision: &str) -> PyResult<Model> {
    let request = ImportRequest { source: src, out: out.clone(), meta, tokenizer, overwrite };
    detached(py, |_| import::import(&request))?;
    Model::open(py, out, precision)
}
