#!/usr/bin/env python3
"""Cross-check thermoformer against an independent PyTorch implementation (as llm.c's test_gpt2).

Builds the same architecture in plain PyTorch, in float64, from a run directory's config.json,
model.safetensors and tokenizer.json, computes the golden values of src/golden.rs (logits, sequence
energies, attention weights at overridden temperatures, and the loss and gradients of one
label-smoothed training step), and compares them with thermoformer's own.

    python3 -m venv .venv && .venv/bin/pip install torch safetensors tokenizers numpy
    .venv/bin/python scripts/crosscheck_torch.py [FIXTURE_DIR] [--write-expected]

FIXTURE_DIR (default tests/fixtures/crosscheck) holds a checkpoint's config.json, model.safetensors,
tokenizer.json and texts.json. Thermoformer's values come from
`cargo run --release --example crosscheck -- FIXTURE_DIR` (or --rust-json FILE). --write-expected
stores PyTorch's values as FIXTURE_DIR/expected.json, which `cargo test --test crosscheck` compares
against without needing PyTorch. Exits 1 if any difference is over its tolerance.
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

# The protocol of src/golden.rs.
ATTN_TEMPERATURE, HEAD_TEMPERATURE, LABEL_SMOOTHING, STEP_LEN = 0.5, 2.0, 0.1, 12
LN_EPS = 1e-5
TOLERANCE = {"logits": 1e-4, "energies": 1e-4, "attention": 1e-5, "loss": 1e-5, "grads": 1e-5}


def rotary(t):
    """Rotary phases as complex multiplication: pairs (x_2m, x_2m+1) of (B, H, T, D) read as
    complex numbers and multiplied by exp(i p omega_m), omega_m = 10000^(-2m/D), at position p."""
    T, D = t.shape[-2], t.shape[-1]
    omega = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * omega[None, :]  # (T, D/2)
    z = torch.view_as_complex(t.reshape(*t.shape[:-1], D // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2)


class Gpt:
    """Pre-LN GPT with bias-free LayerNorm and Linear, exact GELU, tied head, and a per-head
    inverse temperature beta_h = exp(log_beta_h) multiplying the scores q.k/sqrt(d)."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = {k: v.to(torch.float64).requires_grad_(True) for k, v in weights.items()}

    def forward(self, ids, temps=None, keep_attention=False):
        c, w = self.cfg, self.w
        B, T = ids.shape
        H, D = c["n_head"], c["d_model"] // c["n_head"]
        x = w["tok_emb.weight"][ids]
        if c["positions"] == "learned":
            x = x + w["pos_emb.weight"][:T]
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        attention = []
        for layer in range(c["n_layer"]):
            p = f"blocks.{layer}."
            h = F.layer_norm(x, (c["d_model"],), w[p + "ln1.weight"], None, LN_EPS)
            q, k, v = (h @ w[p + "attn.qkv.weight"].T).split(c["d_model"], dim=-1)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
            if c["positions"] == "rope":
                q, k = rotary(q), rotary(k)
            beta = w[p + "attn.log_beta"].exp() if temps is None else 1.0 / torch.tensor(temps[layer], dtype=torch.float64)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # scores s_ij
            logits = (s * beta.view(1, H, 1, 1)).masked_fill(~mask, float("-inf"))
            alpha = torch.softmax(logits, dim=-1)
            if keep_attention:
                attention.append(alpha[0])
            y = (alpha @ v).transpose(1, 2).reshape(B, T, c["d_model"])
            x = x + y @ w[p + "attn.proj.weight"].T
            h = F.layer_norm(x, (c["d_model"],), w[p + "ln2.weight"], None, LN_EPS)
            x = x + F.gelu(h @ w[p + "mlp.fc.weight"].T) @ w[p + "mlp.proj.weight"].T
        x = F.layer_norm(x, (c["d_model"],), w["ln_f.weight"], None, LN_EPS)
        return x @ w["tok_emb.weight"].T, attention


def golden(fixture):
    cfg = json.loads((fixture / "config.json").read_text())["model"]
    tok = Tokenizer.from_file(str(fixture / "tokenizer.json"))
    bos = tok.token_to_id("<|bos|>")
    texts = json.loads((fixture / "texts.json").read_text())
    model = Gpt(cfg, load_file(str(fixture / "model.safetensors")))
    ids = [[bos] + tok.encode(t, add_special_tokens=False).ids for t in texts]
    out = {"texts": texts, "ids": ids}
    with torch.no_grad():
        logits = [model.forward(torch.tensor([s]))[0][0] for s in ids]
        out["logits"] = [l.tolist() for l in logits]
        out["energies"] = [-F.log_softmax(l[:-1], -1).gather(1, torch.tensor(s[1:]).view(-1, 1)).sum().item()
                           for l, s in zip(logits, ids)]
        temps = [[ATTN_TEMPERATURE] * cfg["n_head"] for _ in range(cfg["n_layer"])]
        temps[0][0] = HEAD_TEMPERATURE
        _, att = model.forward(torch.tensor([ids[0]]), temps=temps, keep_attention=True)
        out["attention"] = [a.tolist() for a in att]
    x = torch.tensor([s[:STEP_LEN] for s in ids])
    y = torch.tensor([s[1:STEP_LEN + 1] for s in ids])
    logits, _ = model.forward(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    out["loss"] = loss.item()
    trainable = [n for n in model.w if cfg["learn_temperature"] or not n.endswith("log_beta")]
    out["grads"] = {n: model.w[n].grad.flatten().tolist() for n in sorted(trainable)}
    return out


def max_abs_diff(a, b):
    if isinstance(a, (int, float)):
        return abs(a - b)
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        return max(max_abs_diff(a[k], b[k]) for k in a)
    assert len(a) == len(b), "shapes differ"
    return max((max_abs_diff(p, q) for p, q in zip(a, b)), default=0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture", nargs="?", default="tests/fixtures/crosscheck")
    ap.add_argument("--rust-json", help="thermoformer's values (default: run the crosscheck example)")
    ap.add_argument("--write-expected", action="store_true", help="store PyTorch's values as FIXTURE/expected.json")
    a = ap.parse_args()
    fixture = Path(a.fixture)
    torch_values = golden(fixture)
    if a.write_expected:
        (fixture / "expected.json").write_text(json.dumps(torch_values))
        print(f"wrote {fixture / 'expected.json'}")
    if a.rust_json:
        rust = json.loads(Path(a.rust_json).read_text())
    else:
        cmd = ["cargo", "run", "--release", "--quiet", "--example", "crosscheck", "--", str(fixture)]
        rust = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    if rust["ids"] != torch_values["ids"]:
        print("token ids differ: thermoformer", rust["ids"], "tokenizers", torch_values["ids"])
        return 1
    print("token ids: identical")
    failed = False
    for key, tol in TOLERANCE.items():
        d = max_abs_diff(rust[key], torch_values[key])
        ok = d <= tol
        failed |= not ok
        print(f"{key:<10} largest |thermoformer - pytorch| = {d:.3e}   (tolerance {tol:g}) {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
