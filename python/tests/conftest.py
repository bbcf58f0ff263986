"""Shared fixtures: the thermoformer binary to compare with, a small corpus, a run trained here and
the imported GPT-2 fixture. `tests/python.rs` starts this suite from `cargo test` and sets
THERMOFORMER_BIN and THERMOFORMER_CACHE; run alone, it uses target/release/thermoformer."""

import json
import os
import pathlib
import subprocess

import pytest

import thermoformer

ROOT = pathlib.Path(os.environ.get("THERMOFORMER_ROOT") or pathlib.Path(__file__).resolve().parents[2])
BIN = os.environ.get("THERMOFORMER_BIN") or str(ROOT / "target" / "release" / "thermoformer")
GPT2 = ROOT / "tests" / "fixtures" / "import" / "gpt2-tied"

# A few lines of the corpus: short, long (past a 32-token context: scored in windows), spaced.
LINES = [
    "First Citizen:",
    "Before we proceed any further, hear me speak.",
    "You are all resolved rather to die than to famish? Resolved. resolved. First, you know Caius Marcius is chief enemy to the people.",
    "  two  spaces   and trailing  ",
    "",
    "What light through yonder window breaks?",
]

# A small run's shape: two layers of four heads, so that layer != head picks out a wrong index.
TRAIN = dict(steps=40, layers=2, heads=4, d_model=32, context=32, batch_size=8, eval_every=40, eval_batches=2, sample_tokens=20, seed=7, no_progress=True)


def cli(*args, stdin=None, check=True):
    """Run the thermoformer binary; returns the finished process (stdout and stderr as text)."""
    done = subprocess.run([BIN, *map(str, args)], input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"thermoformer {' '.join(map(str, args))} failed: {done.stderr}")
    return done


def cli_error(*args):
    """The one error line the binary prints for a failing command, without its "error: "."""
    done = cli(*args, check=False)
    assert done.returncode != 0, f"expected thermoformer {args} to fail"
    lines = [l for l in done.stderr.splitlines() if l.startswith("error")]
    assert len(lines) == 1, done.stderr
    return lines[0].removeprefix("error: ")


def jsonl(done):
    return [json.loads(l) for l in done.stdout.splitlines() if l.strip()]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text()[:40_000]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus):
    """A run trained through the Python module, and its report."""
    out = tmp_path_factory.mktemp("runs") / "py"
    report = thermoformer.train(corpus=corpus, out=out, **TRAIN)
    return out, report


@pytest.fixture(scope="session")
def run_dir(trained):
    return trained[0]


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gpt2"
    thermoformer.import_model(GPT2, out)
    return out


@pytest.fixture(scope="session", params=["trained", "gpt2"])
def any_run(request):
    """Each run in turn: one trained here (char tokenizer) and an imported GPT-2 (byte-level BPE)."""
    return request.getfixturevalue("run_dir" if request.param == "trained" else "gpt2_dir")


@pytest.fixture(scope="session")
def lines_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lines") / "lines.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path
