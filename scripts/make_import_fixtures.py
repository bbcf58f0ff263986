#!/usr/bin/env python3
"""Build the fixtures of tests/import.rs: small models in the formats `thermoformer import` reads,
with their expected outputs computed by implementations nobody here wrote.

    pip install torch transformers tokenizers numpy
    python3 scripts/make_import_fixtures.py            # writes tests/fixtures/import/

Hugging Face GPT-2 (expected values from transformers' GPT2LMHeadModel itself):
  gpt2-tied/    2 layers, 4 heads, width 32, context 64, gelu_new, tied head; byte-level BPE of
                300 tokens trained on the corpus with <|endoftext|>; biases and LayerNorm gains
                drawn non-zero; saved by save_pretrained (safetensors, `transformer.` prefix).
  gpt2-untied/  the same shape with activation "gelu" (exact), an untied lm_head and
                layer_norm_epsilon 1e-6.

nanoGPT (nanoGPT's parameter names and model_args, torch.save with an optimizer entry; expected
values from the float64 NumPy forward pass below, written from nanoGPT's model.py equations):
  nanogpt-bias/ckpt.pt    bias=True, names prefixed `_orig_mod.` (torch.compile), with the
                          causal-mask buffers `attn.bias`; vocabulary 65 (meta.pkl's).
  nanogpt-nobias/ckpt.pt  bias=False, no prefix, vocabulary padded to 72 past meta.pkl's 65.
  meta.pkl                nanoGPT's char vocabulary (stoi, itos) of the corpus, as prepare.py
                          writes it.
  not-nanogpt.pt          a torch file that is not a nanoGPT checkpoint (a bare state dict).

expected.json in each directory: the lines, their token ids, the start id, the per-token energies
-ln p (nats) of every line, and the logits (start + tokens, all positions) of the first line (GPT-2) or two (nanoGPT).
"""

import json
import math
import os
import pickle
import shutil
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "import")
CORPUS = os.path.join(ROOT, "data", "tinyshakespeare.txt")
LINES = [
    "ROMEO: I will not.",
    "First Citizen: Before we proceed any further, hear me speak.",
    "What light through yonder window breaks?",
]


def write_json(path, obj):
    """Floats to 7 significant digits: far inside the tests' 1e-4, a third of the size."""

    def rounded(x):
        if isinstance(x, float):
            return float(f"{x:.7g}")
        if isinstance(x, list):
            return [rounded(v) for v in x]
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        return x

    with open(path, "w") as f:
        json.dump(rounded(obj), f, separators=(",", ":"))


# ---------------------------------------------------------------- Hugging Face GPT-2


def bpe_tokenizer(text, path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    tok.save(path)
    return tok


def gpt2_fixture(name, tok, tok_path, activation, tied, eps, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    eot = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function=activation,
        layer_norm_epsilon=eps,
        tie_word_embeddings=tied,
        bos_token_id=eot,
        eos_token_id=eot,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.normal_(0.0, 0.1)  # biases non-zero, so a dropped bias shows
            elif ".ln_" in pname or "ln_f" in pname:
                p.normal_(1.0, 0.1)  # LayerNorm gains away from 1
            else:
                p.normal_(0.0, 0.08)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(tok_path, os.path.join(d, "tokenizer.json"))
    expected = {"start": eot, "lines": [], "ids": [], "energies": [], "logits": []}
    for i, line in enumerate(LINES):
        ids = tok.encode(line).ids
        x = torch.tensor([[eot] + ids])
        with torch.no_grad():
            logits = model(x).logits[0].double()  # (T+1, V)
        logp = torch.log_softmax(logits, -1)
        energies = [-logp[t, ids[t]].item() for t in range(len(ids))]
        expected["lines"].append(line)
        expected["ids"].append(ids)
        expected["energies"].append(energies)
        if i < 1:
            expected["logits"].append(logits.tolist())
    write_json(os.path.join(d, "expected.json"), expected)


# ---------------------------------------------------------------- nanoGPT


def erf(x):
    return np.vectorize(math.erf)(x)


def np_forward(sd, args, ids):
    """nanoGPT's GPT.forward in float64 NumPy, from the equations of its model.py."""
    f = lambda k: sd[k].double().numpy()
    n_layer, n_head, d = args["n_layer"], args["n_head"], args["n_embd"]
    bias = args["bias"]
    t = len(ids)

    def ln(x, pre):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + 1e-5) * f(pre + ".weight")
        return y + f(pre + ".bias") if bias else y

    def lin(x, pre):
        y = x @ f(pre + ".weight").T
        return y + f(pre + ".bias") if bias else y

    x = f("transformer.wte.weight")[ids] + f("transformer.wpe.weight")[:t]
    mask = np.tril(np.ones((t, t), dtype=bool))
    hd = d // n_head
    for l in range(n_layer):
        p = f"transformer.h.{l}."
        qkv = lin(ln(x, p + "ln_1"), p + "attn.c_attn")
        q, k, v = np.split(qkv, 3, axis=-1)
        heads = []
        for h in range(n_head):
            sl = slice(h * hd, (h + 1) * hd)
            s = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
            s = np.where(mask, s, -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            heads.append(a @ v[:, sl])
        x = x + lin(np.concatenate(heads, -1), p + "attn.c_proj")
        hdn = lin(ln(x, p + "ln_2"), p + "mlp.c_fc")
        hdn = 0.5 * hdn * (1.0 + erf(hdn / math.sqrt(2.0)))  # exact GELU, nn.GELU()
        x = x + lin(hdn, p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ f("lm_head.weight").T  # (T, V)


def nanogpt_state_dict(args, seed, mask_buffers):
    g = torch.Generator().manual_seed(seed)
    n = lambda *shape, std=0.08, mean=0.0: torch.randn(*shape, generator=g) * std + mean
    d, v, t = args["n_embd"], args["vocab_size"], args["block_size"]
    sd = {"transformer.wte.weight": n(v, d), "transformer.wpe.weight": n(t, d)}
    for l in range(args["n_layer"]):
        p = f"transformer.h.{l}."
        for name, shape in [("attn.c_attn", (3 * d, d)), ("attn.c_proj", (d, d)), ("mlp.c_fc", (4 * d, d)), ("mlp.c_proj", (d, 4 * d))]:
            sd[p + name + ".weight"] = n(*shape)
            if args["bias"]:
                sd[p + name + ".bias"] = n(shape[0], std=0.1)
        for name in ["ln_1", "ln_2"]:
            sd[p + name + ".weight"] = n(d, std=0.1, mean=1.0)
            if args["bias"]:
                sd[p + name + ".bias"] = n(d, std=0.1)
        if mask_buffers:
            sd[p + "attn.bias"] = torch.tril(torch.ones(t, t)).view(1, 1, t, t)
    sd["transformer.ln_f.weight"] = n(d, std=0.1, mean=1.0)
    if args["bias"]:
        sd["transformer.ln_f.bias"] = n(d, std=0.1)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # nanoGPT ties them
    return sd


def nanogpt_fixture(name, args, stoi, seed, prefix, mask_buffers):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    sd = nanogpt_state_dict(args, seed, mask_buffers)
    params = [p.clone().requires_grad_(True) for k, p in sd.items() if not k.endswith("attn.bias")]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum((p**2).sum() for p in params).backward()
    opt.step()  # an optimizer state with moments, as a real checkpoint carries
    ckpt = {
        "model": {prefix + k: v for k, v in sd.items()},
        "optimizer": opt.state_dict(),
        "model_args": dict(args, dropout=0.0),
        "iter_num": 5000,
        "best_val_loss": torch.tensor(1.4697),
        "config": {"dataset": "shakespeare_char", "batch_size": 64, "compile": bool(prefix)},
    }
    torch.save(ckpt, os.path.join(d, "ckpt.pt"))
    start = stoi["\n"]
    expected = {"start": start, "lines": [], "ids": [], "energies": [], "logits": []}
    for i, line in enumerate(LINES):
        ids = [stoi[c] for c in line]
        logits = np_forward(sd, args, [start] + ids)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        expected["lines"].append(line)
        expected["ids"].append(ids)
        expected["energies"].append([float(-logp[t, ids[t]]) for t in range(len(ids))])
        if i < 2:
            expected["logits"].append(logits.tolist())
    write_json(os.path.join(d, "expected.json"), expected)


def main():
    text = open(CORPUS, encoding="utf-8").read()
    os.makedirs(OUT, exist_ok=True)

    tok_path = os.path.join(OUT, "bpe-tokenizer.json")
    tok = bpe_tokenizer(text, tok_path)
    gpt2_fixture("gpt2-tied", tok, tok_path, "gelu_new", True, 1e-5, 1)
    gpt2_fixture("gpt2-untied", tok, tok_path, "gelu", False, 1e-6, 2)
    os.remove(tok_path)

    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    itos = {i: c for i, c in enumerate(chars)}
    with open(os.path.join(OUT, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    base = {"n_layer": 2, "n_head": 3, "n_embd": 24, "block_size": 64}
    nanogpt_fixture("nanogpt-bias", dict(base, bias=True, vocab_size=len(chars)), stoi, 3, "_orig_mod.", True)
    nanogpt_fixture("nanogpt-nobias", dict(base, bias=False, vocab_size=72), stoi, 4, "", False)
    torch.save({"weight": torch.zeros(2, 2)}, os.path.join(OUT, "not-nanogpt.pt"))
    for root, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"{os.path.getsize(path):>9}  {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
