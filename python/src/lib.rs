//! The Python module `thermoformer`: the library's own functions, called from Python with NumPy
//! arrays in and out. Nothing here computes a figure: every number comes from the function the
//! CLI calls for it, so `Model.score` and `thermoformer score` agree to the bit.
//!
//! - [`model`]: the `Model` class (load, score, word surprisal, inspect, temperatures, generate).
//! - [`runs`]: `train` and `import_model`, which write run directories.
//! - [`arrays`]: `inspect`'s nested results as NumPy arrays.
//! - here: errors as Python exceptions, and running work with the GIL released.

use std::sync::Mutex;

use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyIsADirectoryError, PyKeyboardInterrupt, PyNotADirectoryError, PyOSError,
    PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;

// The binary's allocator, for the same reason (thermoformer::keep_freed_memory): the Rust side's
// buffers, NumPy arrays made from them included, come from mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod arrays;
mod model;
mod runs;

/// A Python exception for a library error, with the message the CLI prints for it (its first
/// line, without "error: "): a file that is missing or unreadable is an `OSError` (the subclass
/// for its kind), a diverged run a `RuntimeError`, and anything else the input's fault, a
/// `ValueError`.
pub(crate) fn to_py(err: anyhow::Error) -> PyErr {
    let message = format!("{err:#}");
    let message = message.lines().next().unwrap_or_default().to_string();
    if err.chain().any(|e| e.is::<thermoformer::error::Diverged>()) {
        return PyRuntimeError::new_err(message);
    }
    if !err.chain().any(|e| e.is::<thermoformer::error::UsageError>()) {
        if let Some(io) = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()) {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::NotFound => return PyFileNotFoundError::new_err(message),
                K::PermissionDenied => return PyPermissionError::new_err(message),
                K::AlreadyExists => return PyFileExistsError::new_err(message),
                K::IsADirectory => return PyIsADirectoryError::new_err(message),
                K::NotADirectory => return PyNotADirectoryError::new_err(message),
                // Bytes that are there but wrong: bad input, not a file-system problem.
                K::InvalidData | K::InvalidInput | K::UnexpectedEof => {}
                _ => return PyOSError::new_err(message),
            }
        }
    }
    PyValueError::new_err(message)
}

/// A `ValueError` with `message`.
pub(crate) fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// What stopped a piece of work that [`Signals::check`] interrupted.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Python's pending signals, looked at between batches of detached work: Ctrl-C in a notebook
/// (a `KeyboardInterrupt`) stops the work at the next batch instead of after all of it.
pub(crate) struct Signals {
    raised: Mutex<Option<PyErr>>,
}

impl Signals {
    /// Take the GIL for a moment and run Python's signal handlers; an exception from one (a
    /// `KeyboardInterrupt`) is kept and the work is told to stop. Outside the main thread Python
    /// runs no handlers, and this does nothing.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => Ok(()),
            Err(e) => {
                *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(Interrupted.into())
            }
        }
    }
}

/// Run `work` with the GIL released, so other Python threads run meanwhile (and can score with
/// the same model at once). Its error becomes a Python exception ([`to_py`]); an exception a
/// signal handler raised during it (a `KeyboardInterrupt`) is raised as it was; a panic, which
/// would be a bug, becomes a `RuntimeError` rather than crossing into Python.
pub(crate) fn detached<T: Send>(py: Python<'_>, work: impl FnOnce(&Signals) -> anyhow::Result<T> + Send) -> PyResult<T> {
    let signals = Signals { raised: Mutex::new(None) };
    let outcome = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&signals))));
    if let Some(e) = signals.raised.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is::<Interrupted>() => Err(PyKeyboardInterrupt::new_err("interrupted")),
        Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(PyRuntimeError::new_err(format!("thermoformer hit an internal error (a bug, please report it): {}", what.unwrap_or_default())))
        }
    }
}

/// Train tiny decoder-only transformers and read them like a statistical physicist.
///
/// `Model.load(dir)` opens a run directory that `thermoformer train` or `thermoformer import`
/// wrote (or `train(...)` and `import_model(...)` here); its methods score sequence energies
/// (-ln p, nats), surprisal per word, every attention head's thermodynamics, and sample text.
/// Every figure comes from the same Rust functions as the command line's.
#[pymodule]
fn _thermoformer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // candle reads the thread count on every tensor operation unless it is fixed: fixed once
    // here, on import, as the CLI's `main` does.
    thermoformer::pin_thread_count();
    thermoformer::keep_freed_memory();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(runs::train, m)?)?;
    m.add_function(wrap_pyfunction!(runs::import_model, m)?)?;
    Ok(())
}
