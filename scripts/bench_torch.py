#!/usr/bin/env python3
"""Run thermoformer's benchmark shapes in PyTorch and print both side by side, with ratios.

    .venv/bin/python scripts/bench_torch.py [--shape small,large] [--work train,score,generate] [--iters N]
                                            [--precision f32,bf16] [--bf16-kernel amx]

The PyTorch model is the architecture of scripts/crosscheck_torch.py as a float32 nn.Module (pre-LN,
bias-free LayerNorm and Linear, exact GELU, tied head, a per-head inverse temperature), trained
with torch.optim.AdamW (decay on matrices only) and gradient clipping, as thermoformer trains.
Thermoformer's figures come from `target/release/thermoformer bench --json` with the same flags
(built first with `cargo build --release`). Both use 2 threads unless --threads says otherwise.

PyTorch runs each workload twice: in float32, and under torch.autocast("cpu", dtype=torch.bfloat16),
PyTorch's fastest CPU mode on chips with bf16 instructions (oneDNN's AVX512-BF16 or AMX kernels).
Each thermoformer row (one per --precision) is compared with both. The CPU model and its bf16
flags are printed first: a ratio holds for that CPU only. --bf16-kernel sets thermoformer's
THERMOFORMER_BF16_KERNEL (amx: AMX's tiles, faster and not reproducible; default: the fastest
reproducible kernel).
"""
import contextlib
import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # must match src/bench.rs
    "small": dict(n_layer=4, n_head=4, d_model=128, context=64, batch=12, vocab=66),
    "large": dict(n_layer=6, n_head=6, d_model=384, context=256, batch=64, vocab=66),
}
SCORE_BATCH, PROMPT = 32, 16


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.log_beta = nn.Parameter(torch.zeros(h))

    def forward(self, x, cache=None):
        B, T, C = x.shape
        D = C // self.h
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.h, D).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        q = q * (self.log_beta.exp() / math.sqrt(D)).view(1, self.h, 1, 1)  # beta_h folded into q
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=1.0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.tok = nn.Embedding(s["vocab"], s["d_model"])
        self.pos = nn.Embedding(s["context"], s["d_model"])
        self.blocks = nn.ModuleList(Block(s["d_model"], s["n_head"]) for _ in range(s["n_layer"]))
        self.ln_f = nn.LayerNorm(s["d_model"], bias=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * s["n_layer"]) if n.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids, caches=None, start=0):
        x = self.tok(ids) + self.pos(torch.arange(start, start + ids.shape[1]))
        for i, b in enumerate(self.blocks):
            x = b(x, None if caches is None else caches[i])
        return self.ln_f(x) @ self.tok.weight.T


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(shape, work, iters, autocast=False):
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    s = SHAPES[shape]
    torch.manual_seed(0)
    model = Gpt(s)
    V, T = s["vocab"], s["context"]
    if work == "train":
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
        B = s["batch"]

        def step():
            x, y = torch.randint(0, V - 1, (B, T)), torch.randint(0, V - 1, (B, T))
            with cast():
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        secs, tokens = timed(step, 2, iters), B * T
    elif work == "score":
        model.eval()
        x, y = torch.randint(0, V - 1, (SCORE_BATCH, T)), torch.randint(0, V - 1, (SCORE_BATCH, T))

        def score():
            with torch.inference_mode(), cast():
                F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(SCORE_BATCH, T).sum(1)
        secs, tokens = timed(score, 2, iters), SCORE_BATCH * T
    else:
        model.eval()
        prompt = torch.randint(0, V - 1, (1, PROMPT))
        n_new = T - PROMPT

        def generate():
            with torch.inference_mode(), cast():
                caches = [[] for _ in model.blocks]
                logits = model(prompt, caches, 0)[:, -1]
                for i in range(n_new):
                    nxt = torch.multinomial(F.softmax(logits, -1), 1)
                    if i + 1 < n_new:
                        logits = model(nxt, caches, PROMPT + i)[:, -1]
        secs, tokens = timed(generate, 1, iters), n_new
    return dict(ms_per_iter=secs * 1e3, tokens_per_sec=tokens / secs,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def cpu_model():
    """The CPU's model name and which bf16 instructions it has, from /proc/cpuinfo."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown CPU")
    fam = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("cpu family")), "?")
    mod = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model\t")), "?")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    has = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} (family {fam}, model {mod}; {' '.join(has) or 'no AVX2'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="small")
    ap.add_argument("--work", default="train,score,generate")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="f32", help="thermoformer's precisions, comma-separated (f32,bf16)")
    ap.add_argument("--bf16-kernel", default="", help="thermoformer's THERMOFORMER_BF16_KERNEL (e.g. amx)")
    ap.add_argument("--no-autocast", action="store_true", help="skip PyTorch's bf16 autocast runs")
    ap.add_argument("--thermoformer", default="target/release/thermoformer")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cmd = [a.thermoformer, "bench", "--shape", a.shape, "--work", a.work, "--iters", str(a.iters),
           "--precision", a.precision, "--json"]
    env = {"RAYON_NUM_THREADS": str(a.threads)}
    if a.bf16_kernel:
        env["THERMOFORMER_BF16_KERNEL"] = a.bf16_kernel
    ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    print(f"CPU: {cpu_model()}")
    ceil = ", ".join(f"{p} {c:.0f}" for p, c in ours["matmul_ceilings_gflops"].items())
    kernel = a.bf16_kernel or "auto"
    print(f"torch {torch.__version__}, {a.threads} threads; thermoformer bf16 kernel {kernel}, matmul ceilings (GFLOP/s): {ceil}")
    print(f"{'shape':<6} {'work':<9} {'prec':<5} {'thermoformer ms':>16} {'pt fp32 ms':>11} {'ratio':>7} "
          f"{'pt bf16 ms':>11} {'ratio':>7} {'RSS MiB (tf/pt)':>16}")
    cache = {}
    for r in ours["results"]:
        key = (r["shape"], r["work"])
        if key not in cache:
            fp32 = bench(r["shape"], r["work"], a.iters)
            bf16 = None if a.no_autocast else bench(r["shape"], r["work"], a.iters, autocast=True)
            cache[key] = (fp32, bf16)
        fp32, bf16 = cache[key]
        ratio = r["tokens_per_sec"] / fp32["tokens_per_sec"]
        b_ms = f"{bf16['ms_per_iter']:>11.2f}" if bf16 else f"{'-':>11}"
        b_ratio = f"{r['tokens_per_sec'] / bf16['tokens_per_sec']:>6.2f}x" if bf16 else f"{'-':>7}"
        print(f"{r['shape']:<6} {r['work']:<9} {r['precision']:<5} {r['ms_per_iter']:>16.2f} {fp32['ms_per_iter']:>11.2f} "
              f"{ratio:>6.2f}x {b_ms} {b_ratio} {r['peak_rss_mib']:>8.0f}/{fp32['peak_rss_mib']:<7.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
