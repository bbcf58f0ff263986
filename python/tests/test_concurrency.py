"""Model work runs with the GIL released: threads score at once and agree with one thread, the
interpreter keeps running meanwhile, and Ctrl-C stops a long score at its next batch."""

import _thread
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import thermoformer
from conftest import LINES

MANY = [l for l in LINES if l] * 40


def test_two_threads_score_as_one(any_run):
    m = thermoformer.Model.load(any_run)
    alone = m.score(MANY, per_token=True)
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: m.score(MANY, per_token=True), range(2)))
    for got in both:
        np.testing.assert_array_equal(got["energy"], alone["energy"])
        for a, b in zip(got["token_energies"], alone["token_energies"]):
            np.testing.assert_array_equal(a, b)


def test_the_interpreter_runs_while_a_model_scores(gpt2_dir):
    """The main thread keeps waking up while another scores (about half a second of work). With
    the GIL held through the call it could not wake at all until the call returned."""
    m = thermoformer.Model.load(gpt2_dir)
    texts = MANY * 32
    started, done = threading.Event(), threading.Event()

    def work():
        started.set()
        m.score(texts)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    ticks = 0
    while not done.wait(0.01):
        ticks += 1
    worker.join()
    assert ticks >= 10, ticks


def test_ctrl_c_stops_a_long_score_cleanly(gpt2_dir):
    m = thermoformer.Model.load(gpt2_dir)
    texts = MANY * 2
    started = time.perf_counter()
    few = m.score(texts, batch_size=1)
    one_pass = time.perf_counter() - started
    long = texts * 60  # about sixty times as long as one_pass
    timer = threading.Timer(min(0.2, one_pass / 2), _thread.interrupt_main)
    started = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        m.score(long, batch_size=1)
    stopped_after = time.perf_counter() - started
    timer.join()
    # Stopped at a batch boundary, long before the work was done; and the model still works.
    assert stopped_after < 5 * one_pass + 1.0, (stopped_after, one_pass)
    np.testing.assert_array_equal(m.score(texts, batch_size=1), few)


def test_ctrl_c_stops_training_with_a_checkpoint_that_resumes(corpus, tmp_path):
    """Ctrl-C during train() saves the step reached; resuming it ends where an uninterrupted run
    of the same options ends, byte for byte."""
    import json

    from conftest import TRAIN

    options = dict(TRAIN, steps=600, eval_every=600)
    whole = thermoformer.train(corpus=corpus, out=tmp_path / "whole", **options)
    timer = threading.Timer(whole["wall_secs"] / 3, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        thermoformer.train(corpus=corpus, out=tmp_path / "cut", **options)
    timer.join()
    step = json.loads((tmp_path / "cut" / "state.json").read_text())["step"]
    assert 0 < step < options["steps"], step
    thermoformer.Model.load(tmp_path / "cut").score("a")  # a whole checkpoint
    resumed = thermoformer.train(out=tmp_path / "cut", resume=True, no_progress=True)
    assert resumed["steps"] == options["steps"]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_ctrl_c_stops_the_ablations_of_inspect(corpus, tmp_path):
    """inspect(response=True) runs two passes per head after one pass and a backward: Ctrl-C
    stops it at the next head, long before the last of the 256."""
    wide = dict(steps=1, layers=8, heads=32, d_model=256, context=64, batch_size=2, eval_every=1, eval_batches=1, sample_tokens=0, no_progress=True)
    thermoformer.train(corpus=corpus, out=tmp_path / "wide", **wide)
    m = thermoformer.Model.load(tmp_path / "wide")
    text = (corpus.read_text()[:400])[: m.context - 1]

    def timed(**kw):
        started = time.perf_counter()
        m.inspect(text, response=True, **kw)
        return time.perf_counter() - started

    one, layer = timed(layers=[0], heads=[0]), timed(layers=[0])
    per_head = (layer - one) / 31  # all 256 heads: about one + 255 per_head
    timer = threading.Timer(one + 5 * per_head, _thread.interrupt_main)
    started = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        m.inspect(text, response=True)
    stopped_after = time.perf_counter() - started
    timer.join()
    assert stopped_after < one + 40 * per_head, (stopped_after, one, per_head)
