#!/usr/bin/env python3
"""thermoformer's Python module against minicons, scoring the same sentences with the same model
on the same machine, in one run: sequence energies (minicons's `sequence_score`) and per-word
surprisal (`word_score_tokenized`), tokens/s, median of --repeats timed runs after a warm-up.

    pip install ./python minicons            # minicons brings torch and transformers
    python3 scripts/bench_vs_minicons.py [--family gpt2] [--threads 2] [--lines 64] [--batch 16]

The model is random in the family's real config (scripts/make_random_model.py: GPT-2 small with a
4096-token byte-level BPE trained on the shipped corpus), saved by transformers and imported by
thermoformer, so both score the same weights. The sentences are the first --lines lines of the
shipped corpus longer than 30 characters. minicons runs `scorer.IncrementalLMScorer(dir, "cpu")`
in batches of --batch under torch.set_num_threads(--threads), in float32 (its default);
thermoformer runs `Model.score(lines)` and `Model.word_surprisal(lines)` on --threads threads.
Each side runs in a child process of its own, so neither's thread pool spins while the other
works. Both score every token from the start token (minicons with bos_token=True, which it
advises for GPT-2); words are split at spaces on both sides (minicons's tokenize_function is
str.split). Tokens/s counts the sentences' BPE tokens, the same count on both sides.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_vs_transformers import cpu_model  # noqa: E402


def sentences(n):
    lines = [l.strip() for l in open(os.path.join(ROOT, "data", "tinyshakespeare.txt")) if len(l.strip()) > 30]
    return lines[:n]


def timed(f, repeats):
    f()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def minicons_child(args, model_dir, lines):
    import torch
    from minicons import scorer

    torch.set_num_threads(args.threads)
    s = scorer.IncrementalLMScorer(model_dir, "cpu")
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    # With the start token, as thermoformer scores (minicons's advice for GPT-2 and Pythia).
    seq = timed(lambda: [s.sequence_score(b, reduction=lambda x: -x.sum(0).item(), bos_token=True) for b in batches], args.repeats)
    words = timed(lambda: [s.word_score_tokenized(b, str.split, bos_token=True, surprisal=True, base_two=True) for b in batches], args.repeats)
    import minicons

    return {"sequence_score": seq, "word_score": words, "version": getattr(minicons, "__version__", "?"), "torch": torch.__version__}


def thermoformer_child(args, run_dir, lines):
    import thermoformer

    m = thermoformer.Model.load(run_dir)
    seq = timed(lambda: m.score(lines), args.repeats)
    words = timed(lambda: m.word_surprisal(lines), args.repeats)
    return {"sequence_score": seq, "word_score": words, "tokens": sum(len(m.encode(l)) for l in lines)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="gpt2", help="a family of scripts/make_random_model.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lines", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="minicons's batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--format", choices=["table", "json"], default="table")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, path, lines_file = args.child
        lines = json.load(open(lines_file))
        child = minicons_child if side == "minicons" else thermoformer_child
        print(json.dumps(child(args, path, lines)))
        return

    lines = sentences(args.lines)
    with tempfile.TemporaryDirectory() as tmp:
        hf, run = os.path.join(tmp, "hf"), os.path.join(tmp, "run")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_random_model.py"), hf, "--family", args.family], check=True, capture_output=True)
        import thermoformer

        thermoformer.import_model(hf, run)
        lines_file = os.path.join(tmp, "lines.json")
        json.dump(lines, open(lines_file, "w"))
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        results = {}
        for side, path in [("minicons", hf), ("thermoformer", run)]:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--batch", str(args.batch), "--repeats", str(args.repeats), "--child", side, path, lines_file]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    tokens = results["thermoformer"]["tokens"]
    report = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "family": args.family,
        "lines": len(lines),
        "tokens": tokens,
        "minicons": results["minicons"]["version"],
        "torch": results["minicons"]["torch"],
        "tokens_per_s": {
            work: {side: tokens / results[side][work] for side in ["minicons", "thermoformer"]} for work in ["sequence_score", "word_score"]
        },
    }
    for work in report["tokens_per_s"].values():
        work["ratio"] = work["thermoformer"] / work["minicons"]
    if args.format == "json":
        print(json.dumps(report))
        return
    print(f"CPU: {report['cpu']}, {args.threads} threads; minicons {report['minicons']} on torch {report['torch']}")
    print(f"{args.family} (random weights), {len(lines)} lines, {tokens} tokens; median of {args.repeats} runs")
    print(f"{'work':<16} {'minicons tok/s':>15} {'thermoformer tok/s':>19} {'ratio':>7}")
    for work, r in report["tokens_per_s"].items():
        print(f"{work:<16} {r['minicons']:>15.0f} {r['thermoformer']:>19.0f} {r['ratio']:>6.2f}x")


if __name__ == "__main__":
    main()
