"""The module gives the CLI's numbers: both call the same library functions, so energies, word
surprisals, head statistics, samples and trained weights agree (to 1e-9, and in practice exactly)."""

import json

import numpy as np
import pytest

import thermoformer
from conftest import GPT2, LINES, TRAIN, cli, jsonl

TOL = 1e-9


def test_score_equals_cli_score(any_run, lines_file):
    m = thermoformer.Model.load(any_run)
    got = m.score(LINES)
    want = [r["energy"] for r in jsonl(cli("score", lines_file, "--checkpoint", any_run, "--format", "jsonl"))]
    assert got.dtype == np.float64 and got.shape == (len(LINES),)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_tempered_strided_score_equals_cli(any_run, lines_file):
    m = thermoformer.Model.load(any_run)
    got = m.score(LINES, temperature=1.7, stride=5, batch_size=3)
    want = [r["energy"] for r in jsonl(cli("score", lines_file, "--checkpoint", any_run, "--format", "jsonl", "--temperature", "1.7", "--stride", "5", "--batch-size", "3"))]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    assert not np.allclose(got, m.score(LINES)), "the temperature changed nothing"


def test_per_token_and_words_equal_cli(any_run, lines_file):
    m = thermoformer.Model.load(any_run)
    got = m.score(LINES, per_token=True, words=True)
    tokens = jsonl(cli("score", lines_file, "--checkpoint", any_run, "--format", "jsonl", "--per-token"))
    words = jsonl(cli("score", lines_file, "--checkpoint", any_run, "--format", "jsonl", "--words"))
    for i in range(len(LINES)):
        assert got["tokens"][i] == [t["token"] for t in tokens[i]["token_energies"]]
        np.testing.assert_allclose(got["token_energies"][i], [t["energy"] for t in tokens[i]["token_energies"]], rtol=0, atol=TOL)
        assert got["words"][i] == [w["word"] for w in words[i]["word_energies"]]
        np.testing.assert_allclose(got["word_energies"][i], [w["energy"] for w in words[i]["word_energies"]], rtol=0, atol=TOL)


def test_word_surprisal_rows_equal_cli_bits(any_run, lines_file):
    m = thermoformer.Model.load(any_run)
    rows = m.word_surprisal(LINES)
    words = jsonl(cli("score", lines_file, "--checkpoint", any_run, "--format", "jsonl", "--words"))
    want = [(i, w["word"], w["bits"]) for i, r in enumerate(words) for w in r["word_energies"]]
    assert [(i, w) for i, w, _ in rows] == [(i, w) for i, w, _ in want]
    np.testing.assert_allclose([b for *_, b in rows], [b for *_, b in want], rtol=0, atol=TOL)


def test_head_temperatures_equal_cli_flags(any_run, lines_file):
    """Layer 0, head 1 and layer 1, head 0: a temperature put on the wrong head fails here."""
    m = thermoformer.Model.load(any_run)
    flags = ["--head-temperature", "0.1=0.4", "--head-temperature", "1.0=2.5"]
    want = [r["energy"] for r in jsonl(cli("score", lines_file, "--checkpoint", any_run, "--format", "jsonl", *flags))]
    np.testing.assert_allclose(m.score(LINES, head_temperatures={(0, 1): 0.4, (1, 0): 2.5}), want, rtol=0, atol=TOL)
    grid = m.temperatures()
    grid[0, 1], grid[1, 0] = 0.4, 2.5
    np.testing.assert_allclose(m.score(LINES, head_temperatures=grid), want, rtol=0, atol=TOL)
    # A per-call override leaves the model as it was.
    np.testing.assert_array_equal(m.temperatures(), thermoformer.Model.load(any_run).temperatures())
    m.set_head_temperature(0, 1, 0.4)
    m.set_head_temperature(1, 0, 2.5)
    expected = thermoformer.Model.load(any_run).temperatures()
    expected[0, 1], expected[1, 0] = 0.4, 2.5
    np.testing.assert_allclose(m.temperatures(), expected, rtol=1e-6)  # kept as f32 ln beta
    np.testing.assert_allclose(m.score(LINES), want, rtol=0, atol=TOL)


def test_set_temperature_equals_attn_temperature(run_dir, lines_file):
    m = thermoformer.Model.load(run_dir)
    m.set_temperature(0.6)
    want = [r["energy"] for r in jsonl(cli("score", lines_file, "--checkpoint", run_dir, "--format", "jsonl", "--attn-temperature", "0.6"))]
    np.testing.assert_allclose(m.score(LINES), want, rtol=0, atol=TOL)


def test_inspect_equals_cli_inspect(any_run):
    m = thermoformer.Model.load(any_run)
    text = LINES[1][:20]
    got = m.inspect(text, response=True, phase=(0.1, 10, 9))
    want = json.loads(cli("inspect", "--checkpoint", any_run, "--text", text, "--format", "json", "--response", "--phase", "--grid", "0.1,10,9").stdout)
    L, H = m.n_layer, m.n_head
    T = len(want["tokens"])
    assert got["tokens"] == want["tokens"]
    assert got["alpha"].shape == (L, H, T, T) and got["energy"].shape == (L, H, T, T)
    assert got["ln_z"].shape == (L, H, T)
    names = {"temperature": "temperature", "entropy": "entropy", "normalized_entropy": "normalized_entropy", "effective_keys": "effective_keys",
             "mean_ln_z": "ln_z", "mean_energy": "mean_energy", "heat_capacity": "heat_capacity", "identity_residual": "identity_residual",
             "sink": "sink", "entropy_slope": "entropy_slope", "susceptibility": "susceptibility", "ablated_hot": "ablated_hot",
             "ablated_cold": "ablated_cold", "t_star": "t_star", "c_star": "c_star"}
    for head in want["heads"]:
        l, h = head["layer"], head["head"]
        for ours, theirs in names.items():
            assert got[ours].shape == (L, H)
            np.testing.assert_allclose(got[ours][l, h], head[theirs], rtol=0, atol=TOL, err_msg=f"{ours} of head {l}.{h}")
        assert bool(got["peak_in_grid"][l, h]) == head["peak_in_grid"]
    np.testing.assert_allclose(got["text_energy"], want["energy"], rtol=0, atol=TOL)
    np.testing.assert_allclose(got["phase_temperatures"], want["phase"]["temperatures"], rtol=0, atol=TOL)
    # The per-row arrays average to the table's figures.
    np.testing.assert_allclose(got["ln_z"].mean(axis=-1), got["mean_ln_z"], rtol=0, atol=1e-9)


def test_inspect_arrays_are_boltzmann_distributions(run_dir):
    """alpha_ij = exp(-beta E_ij) / Z_i, read from the arrays alone: the weights of hidden keys
    are 0 and their energies +inf, and each row is the Boltzmann distribution of its energies."""
    m = thermoformer.Model.load(run_dir)
    m.set_head_temperature(1, 2, 0.5)
    r = m.inspect(LINES[1][:25])
    beta = 1.0 / r["temperature"]
    assert beta[1, 2] == pytest.approx(2.0)
    T = r["alpha"].shape[-1]
    hidden = np.triu(np.ones((T, T), bool), 1)
    assert np.all(r["alpha"][..., hidden] == 0) and np.all(np.isinf(r["energy"][..., hidden]))
    boltzmann = np.exp(-beta[..., None, None] * r["energy"] - r["ln_z"][..., None])
    np.testing.assert_allclose(r["alpha"], boltzmann, rtol=0, atol=2e-5)


def test_generate_equals_cli(any_run):
    m = thermoformer.Model.load(any_run)
    for prompt, kw, flags in [("ROMEO:", dict(tokens=40, temperature=0.8, seed=3), ["--temperature", "0.8", "--seed", "3"]),
                              ("", dict(tokens=25, temperature=1.0, top_k=5, top_p=0.9, seed=11), ["--top-k", "5", "--top-p", "0.9", "--seed", "11"])]:
        text = m.generate(prompt, **kw)
        want = cli("generate", "--checkpoint", any_run, "--prompt", prompt, "--tokens", kw["tokens"], *flags).stdout
        assert prompt + text + "\n" == want
    assert m.generate("ROMEO:", tokens=30, seed=1) != m.generate("ROMEO:", tokens=30, seed=2)


def test_train_equals_cli_train(trained, corpus, tmp_path):
    """The same options give the same run, byte for byte, and the report of `train --format json`."""
    out, report = trained
    flags = []
    for key, value in TRAIN.items():
        flags += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    want = json.loads(cli("train", "--corpus", corpus, "--out", tmp_path / "cli", "--format", "json", *flags).stdout)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "cli" / "model.safetensors").read_bytes()
    for key in ["steps", "params", "val_ce", "sample"]:
        assert report[key] == want[key], key
    assert report["steps"] == TRAIN["steps"] and report["sample"]


def test_energies_match_transformers(gpt2_dir):
    """The imported GPT-2 fixture's per-token energies against transformers' own (computed when
    the fixture was made): the start token is prepended, and each energy is its own token's."""
    expected = json.loads((GPT2 / "expected.json").read_text())
    m = thermoformer.Model.load(gpt2_dir)
    got = m.score(expected["lines"], per_token=True)
    for i, line in enumerate(expected["lines"]):
        assert m.encode(line) == expected["ids"][i]
        np.testing.assert_allclose(got["token_energies"][i], expected["energies"][i], rtol=0, atol=1e-4)
