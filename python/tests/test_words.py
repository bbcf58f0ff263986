"""The word rule, checked against the rule written out here from the per-token output: a token
that starts with a space opens a word (a run of spaces opens one word), trailing spaces belong to
the last word, and a word's energy is the sum of its tokens'."""

import numpy as np

import thermoformer
from conftest import LINES


def words_from_tokens(tokens, energies):
    groups = []
    for tok, e in zip(tokens, energies):
        opens = not groups or (tok.startswith(" ") and "".join(groups[-1][0]).strip(" ") != "")
        if opens:
            groups.append(([], 0.0))
        groups[-1][0].append(tok)
        groups[-1] = (groups[-1][0], groups[-1][1] + e)
    if len(groups) > 1 and "".join(groups[-1][0]).strip(" ") == "":
        toks, e = groups.pop()
        groups[-1] = (groups[-1][0] + toks, groups[-1][1] + e)
    return ["".join(t).strip(" ") for t, _ in groups], [e for _, e in groups]


def test_words_follow_the_rule(any_run):
    m = thermoformer.Model.load(any_run)
    got = m.score(LINES, per_token=True, words=True)
    for i, line in enumerate(LINES):
        words, energies = words_from_tokens(got["tokens"][i], got["token_energies"][i])
        assert got["words"][i] == words, line
        np.testing.assert_allclose(got["word_energies"][i], energies, rtol=0, atol=1e-9)
        if line.strip():
            assert words == line.split(), line


def test_surprisal_is_in_bits(run_dir):
    m = thermoformer.Model.load(run_dir)
    rows = m.word_surprisal(["To be, or  not to be"])
    nats = m.score("To be, or  not to be", words=True)["word_energies"][0]
    assert [w for _, w, _ in rows] == ["To", "be,", "or", "not", "to", "be"]
    np.testing.assert_allclose([b for *_, b in rows], nats / np.log(2), rtol=1e-12)
