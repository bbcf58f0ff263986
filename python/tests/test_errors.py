"""Bad input raises a Python exception with the CLI's message: OSError (its subclass for the
kind) for a missing file, ValueError for bad contents and bad arguments; never a panic."""

import shutil

import numpy as np
import pytest

import thermoformer
from conftest import cli_error


def test_missing_checkpoint_is_file_not_found_with_the_cli_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        thermoformer.Model.load(missing)
    assert str(e.value) == cli_error("score", "--text", "x", "--checkpoint", missing)


def test_a_file_for_a_checkpoint_is_not_a_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        thermoformer.Model.load(path)
    assert str(e.value) == cli_error("score", "--text", "x", "--checkpoint", path)
    assert isinstance(e.value, OSError)


@pytest.mark.parametrize("damage", ["config", "weights", "tokenizer"])
def test_corrupt_run_is_value_error_with_the_cli_message(run_dir, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    if damage == "config":
        (bad / "config.json").write_text("{ not json")
    elif damage == "weights":
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (bad / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError) as e:
        thermoformer.Model.load(bad)
    assert str(e.value) == cli_error("score", "--text", "x", "--checkpoint", bad)


def test_text_longer_than_the_context(run_dir):
    m = thermoformer.Model.load(run_dir)
    text = "a" * (m.context + 5)
    with pytest.raises(ValueError) as e:
        m.inspect(text)
    assert str(e.value) == cli_error("inspect", "--checkpoint", run_dir, "--text", text)


def test_bad_temperatures_name_the_head(run_dir):
    m = thermoformer.Model.load(run_dir)
    with pytest.raises(ValueError) as e:
        m.set_head_temperature(5, 0, 1.0)
    assert str(e.value) == cli_error("score", "--checkpoint", run_dir, "--text", "x", "--head-temperature", "5.0=1")
    with pytest.raises(ValueError) as e:
        m.score(["x"], head_temperatures={(0, 9): 2.0})
    assert str(e.value) == cli_error("score", "--checkpoint", run_dir, "--text", "x", "--head-temperature", "0.9=2")
    for bad in [0.0, -1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="temperature must be finite and at least 1e-6"):
            m.set_head_temperature(0, 0, bad)
        with pytest.raises(ValueError, match="temperature must be finite and at least 1e-6"):
            m.score(["x"], temperature=bad)
    with pytest.raises(ValueError, match="head_temperatures"):
        m.score(["x"], head_temperatures="hot")
    with pytest.raises(ValueError, match=r"must be \(L, H\) = \(2, 4\)"):
        m.score(["x"], head_temperatures=np.ones((2, 2)))
    # Nothing was changed by the refused calls.
    assert (m.temperatures() == thermoformer.Model.load(run_dir).temperatures()).all()


def test_bad_score_and_generate_arguments(run_dir):
    m = thermoformer.Model.load(run_dir)
    with pytest.raises(ValueError, match=r"stride must be in 1..=32"):
        m.score(["x"], stride=0)
    with pytest.raises(ValueError, match=r"stride must be in 1..=32"):
        m.score(["x"], stride=33)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        m.score(["x"], batch_size=0)
    with pytest.raises(ValueError) as e:
        m.generate("x", tokens=3, top_p=1.5)
    assert str(e.value) == cli_error("generate", "--checkpoint", run_dir, "--tokens", "3", "--top-p", "1.5")
    with pytest.raises(ValueError, match="precision"):
        thermoformer.Model.load(run_dir, precision="f16")
    with pytest.raises(ValueError, match="phase"):
        m.inspect("x", phase=(10, 1, 5))
    with pytest.raises(ValueError) as e:
        m.inspect("x", response=True, layers=[7])
    assert str(e.value) == cli_error("inspect", "--checkpoint", run_dir, "--text", "x", "--response", "--layers", "7")
    with pytest.raises(TypeError):
        m.score(123)


def test_bad_train_options_get_the_cli_message(corpus, tmp_path):
    with pytest.raises(ValueError, match='unknown option "help"'):
        thermoformer.train(help=True)
    with pytest.raises(ValueError, match='unknown option "dmodel"'):
        thermoformer.train(corpus=corpus, out=tmp_path / "a", dmodel=3)
    with pytest.raises(ValueError) as e:
        thermoformer.train(corpus=corpus, out=tmp_path / "a", steps="many")
    assert str(e.value) == cli_error("train", "--corpus", corpus, "--out", tmp_path / "a", "--steps", "many")
    with pytest.raises(ValueError) as e:
        thermoformer.train(corpus=corpus, out=tmp_path / "a", heads=3, d_model=32)
    assert str(e.value) == cli_error("train", "--corpus", corpus, "--out", tmp_path / "a", "--heads", "3", "--d-model", "32")
    missing = tmp_path / "no-corpus.txt"
    with pytest.raises(FileNotFoundError) as e:
        thermoformer.train(corpus=missing, out=tmp_path / "a", steps=2)
    assert str(e.value) == cli_error("train", "--corpus", missing, "--out", tmp_path / "a", "--steps", "2")


def test_a_run_is_not_overwritten(run_dir, corpus):
    before = (run_dir / "model.safetensors").read_bytes()
    with pytest.raises(Exception) as e:
        thermoformer.train(corpus=corpus, out=run_dir, steps=2)
    assert str(e.value) == cli_error("train", "--corpus", corpus, "--out", run_dir, "--steps", "2")
    assert (run_dir / "model.safetensors").read_bytes() == before


def test_import_of_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        thermoformer.import_model(tmp_path / "nothing", tmp_path / "out")
    assert str(e.value) == cli_error("import", tmp_path / "nothing", "--out", tmp_path / "out")
