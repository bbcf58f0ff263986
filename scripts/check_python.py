#!/usr/bin/env python3
"""Check that a thermoformer run directory loads in Python's safetensors and tokenizers, unchanged.

    python3 -m venv .venv && .venv/bin/pip install safetensors tokenizers numpy
    .venv/bin/python scripts/check_python.py checkpoints/shakespeare

Prints every tensor's name, shape and dtype, the head temperatures T = exp(-log_beta), and a
round trip of a line through the tokenizer with its BOS id. Exits non-zero on any mismatch.
"""
import json
import math
import sys

from safetensors.numpy import load_file
from tokenizers import Tokenizer

run = sys.argv[1] if len(sys.argv) > 1 else "checkpoints/shakespeare"
cfg = json.load(open(f"{run}/config.json"))
weights = load_file(f"{run}/model.safetensors")
for name in sorted(weights):
    print(f"{name:32s} {str(weights[name].shape):14s} {weights[name].dtype}")
m = cfg["model"]
assert weights["tok_emb.weight"].shape == (m["vocab_size"], m["d_model"]), "embedding shape"
for layer in range(m["n_layer"]):
    temps = [math.exp(-b) for b in weights[f"blocks.{layer}.attn.log_beta"]]
    print(f"layer {layer} temperatures: {[round(t, 4) for t in temps]}")

tok = Tokenizer.from_file(f"{run}/tokenizer.json")
assert tok.get_vocab_size() == m["vocab_size"], (tok.get_vocab_size(), m["vocab_size"])
bos = tok.token_to_id("<|bos|>")
line = "ROMEO:\nBut soft, what light through yonder window breaks?"
enc = tok.encode(line)
assert tok.decode(enc.ids) == line, tok.decode(enc.ids)
print(f"vocab {tok.get_vocab_size()}, BOS id {bos}, {len(enc.ids)} tokens for {len(line)} chars; round trip ok")
