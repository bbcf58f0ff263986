//! The Python module, tested from the one test command: build it into a virtualenv with the
//! README's install line (`pip install ./python`), run its pytest suite (python/tests/) against
//! this build's binary, and run the worked example in examples/python/.
//!
//! The virtualenv lives in the build directory and is reused; the first run fetches numpy,
//! pytest and matplotlib (and pip fetches maturin to build the module) from PyPI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python that makes the virtualenv: `$THERMOFORMER_PYTHON`, else `python3`.
fn python() -> Option<String> {
    let python = std::env::var("THERMOFORMER_PYTHON").unwrap_or_else(|_| "python3".into());
    let works = Command::new(&python).args(["-c", "import venv, sys; assert sys.version_info >= (3, 9)"]).output().is_ok_and(|o| o.status.success());
    works.then_some(python)
}

/// Run `cmd` in the repository root, without the variables cargo sets for this test (the
/// module's own build under pip must see a plain environment), and fail with its output if it
/// fails. Returns stdout.
fn run(cmd: &mut Command, what: &str) -> String {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(key);
        }
    }
    let out = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

/// A virtualenv with the module built from this tree, and the test dependencies.
fn virtualenv(python: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let bin = venv.join("bin").join("python");
    if !bin.exists() {
        run(Command::new(python).args(["-m", "venv"]).arg(&venv), "making the virtualenv");
    }
    let ready = Command::new(&bin).args(["-c", "import numpy, pytest, matplotlib"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        run(Command::new(&bin).args(["-m", "pip", "install", "--quiet", "numpy", "pytest", "matplotlib"]), "installing numpy, pytest and matplotlib");
    }
    // The README's install line, so that it is what the tests exercise.
    run(Command::new(&bin).args(["-m", "pip", "install", "--quiet", "./python"]), "pip install ./python");
    bin
}

#[test]
fn the_python_module_passes_its_tests_and_runs_its_example() {
    let Some(python) = python() else {
        assert!(std::env::var_os("CI").is_none(), "CI needs python3 (3.9 or later, with venv) for the Python module's tests");
        eprintln!("SKIPPED: no python3 with venv here; the Python module was not tested");
        return;
    };
    let bin = virtualenv(&python);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let env = |cmd: &mut Command| {
        cmd.env("THERMOFORMER_BIN", env!("CARGO_BIN_EXE_thermoformer"))
            .env("THERMOFORMER_CACHE", common::TOKEN_CACHE)
            .env("THERMOFORMER_ROOT", env!("CARGO_MANIFEST_DIR"));
    };

    let mut pytest = Command::new(&bin);
    pytest.args(["-m", "pytest", "python/tests", "-q", "-p", "no:cacheprovider", "--basetemp"]).arg(tmp.path().join("pytest"));
    env(&mut pytest);
    let report = run(&mut pytest, "pytest python/tests");
    println!("{report}");
    assert!(report.contains(" passed"), "pytest reported no tests:\n{report}");

    let out = tmp.path().join("example");
    let mut example = Command::new(&bin);
    example.arg("examples/python/surprisal_and_temperature.py").arg(&out);
    env(&mut example);
    let printed = run(&mut example, "examples/python/surprisal_and_temperature.py");
    println!("{printed}");
    assert!(printed.contains("surprisal_bits") && printed.contains("horse"), "no surprisal table:\n{printed}");
    assert!(printed.contains("C peaks near T ="), "no temperature scan:\n{printed}");
    common::assert_picture(&out.join("entropy_vs_temperature.png"), Some((600, 400)), 0.01, 3);
}
