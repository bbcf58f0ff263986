#!/usr/bin/env python3
"""Build the fixtures of tests/families.rs: one small random model per family that `thermoformer
import` opens, saved by transformers' own save_pretrained, with the per-token energies that
transformers computes for three lines.

    pip install torch transformers tokenizers
    python3 scripts/make_family_fixtures.py        # writes tests/fixtures/families/

Each model is 2 layers, width 32, on the byte-level BPE tokenizer of 300 tokens of
tests/fixtures/import/gpt2-tied (its <|endoftext|> is id 0), with every weight drawn at random:
biases and norm gains away from 0 and 1, so that a dropped one shows.

  llama/           grouped-query attention (4 query heads on 2 kv heads), rope_theta 500 with
                   Llama 3's rope scaling (original context 16, so every band of frequencies is
                   hit), untied head; its tokenizer.json adds the BOS itself (a TemplateProcessing
                   post-processor, as Llama's tokenizers do).
  llama-sharded/   the same weights, saved in shards with model.safetensors.index.json.
  llama-bin/       the same weights as pytorch_model.bin (torch.save of the state dict).
  qwen2/           Qwen2: 4 query heads on 2 kv heads, q/k/v biases, tied head, rope_theta 1000,
                   and no bos_token_id (eos_token_id 0 starts sequences instead).
  qwen3/           Qwen3: 4 query heads on 1 kv head, head_dim 12 (not 32 / 4), q/k RMSNorm.
  pythia-parallel/ GPT-NeoX with use_parallel_residual, rotary on half of each head, an untied
                   embed_out and a vocabulary of 320 padded past the tokenizer's 300.
  pythia-sequential/ GPT-NeoX without the parallel residual, rotary on a quarter of each head,
                   rope base 1000, its config.json in the Hub's older keys (rotary_pct,
                   rotary_emb_base) as Pythia's own are written; checked to load the same.
  gpt-neo/         GPT-Neo: a global then a local layer with window_size 8 (shorter than the
                   lines), no score scaling, learned positions, tied head.

expected.json in each: the start id, the lines, their token ids and the per-token energies -ln p
(nats) from transformers' forward pass in float32.
"""

import json
import os
import shutil

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "families")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "import", "gpt2-tied", "tokenizer.json")
LINES = [
    "ROMEO: I will not.",
    "First Citizen: Before we proceed any further, hear me speak.",
    "What light through yonder window breaks?",
]
V = 300  # the tokenizer's size


def randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name or "ln_" in name or "layernorm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.15)


def energies(model, tok, start):
    from tokenizers import Tokenizer

    out = {"start": start, "lines": [], "ids": [], "energies": []}
    for line in LINES:
        ids = tok.encode(line, add_special_tokens=False).ids
        x = torch.tensor([[start] + ids])
        with torch.no_grad():
            logits = model(x).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        out["lines"].append(line)
        out["ids"].append(ids)
        out["energies"].append([float(f"{-logp[t, ids[t]].item():.7g}") for t in range(len(ids))])
    return out


def save(name, model, start, tokenizer_json=None):
    from tokenizers import Tokenizer

    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    tok_path = os.path.join(d, "tokenizer.json")
    if tokenizer_json is None:
        shutil.copy(TOKENIZER, tok_path)
    else:
        with open(tok_path, "w") as f:
            f.write(tokenizer_json)
    tok = Tokenizer.from_file(tok_path)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(energies(model, tok, start), f, separators=(",", ":"))
    return d


def main():
    from tokenizers import Tokenizer, processors
    from transformers import (
        AutoModelForCausalLM,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    os.makedirs(OUT, exist_ok=True)
    common = dict(hidden_size=32, num_hidden_layers=2, max_position_embeddings=64, attn_implementation="eager")

    # Llama, with a tokenizer that prepends the BOS by itself.
    cfg = LlamaConfig(
        vocab_size=V, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        **common,
    )
    llama = LlamaForCausalLM(cfg).eval()
    randomise(llama, 1)
    tok = Tokenizer.from_file(TOKENIZER)
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    d = save("llama", llama, 0, tok.to_str())
    sharded = os.path.join(OUT, "llama-sharded")
    shutil.rmtree(sharded, ignore_errors=True)
    llama.save_pretrained(sharded, max_shard_size="40KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json")), "not sharded"
    binary = os.path.join(OUT, "llama-bin")
    shutil.rmtree(binary, ignore_errors=True)
    os.makedirs(binary)
    torch.save(llama.state_dict(), os.path.join(binary, "pytorch_model.bin"))
    for other in (sharded, binary):
        shutil.copy(os.path.join(d, "config.json"), os.path.join(other, "config.json"))
        shutil.copy(os.path.join(d, "tokenizer.json"), os.path.join(other, "tokenizer.json"))
        gen = os.path.join(other, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)

    # Qwen2: q/k/v biases, tied, no bos_token_id.
    cfg = Qwen2Config(
        vocab_size=V, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, **common,
    )
    qwen2 = Qwen2ForCausalLM(cfg).eval()
    randomise(qwen2, 2)
    save("qwen2", qwen2, 0)

    # Qwen3: head_dim 12, one kv head, q/k norms.
    cfg = Qwen3Config(
        vocab_size=V, intermediate_size=48, num_attention_heads=4, num_key_value_heads=1, head_dim=12,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, **common,
    )
    qwen3 = Qwen3ForCausalLM(cfg).eval()
    randomise(qwen3, 3)
    save("qwen3", qwen3, 0)

    # Pythia (GPT-NeoX), parallel residual, half rotary, padded vocabulary.
    cfg = GPTNeoXConfig(
        vocab_size=320, intermediate_size=64, num_attention_heads=4, use_parallel_residual=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, hidden_act="gelu", **common,
    )
    neox = GPTNeoXForCausalLM(cfg).eval()
    randomise(neox, 4)
    save("pythia-parallel", neox, 0)

    # Pythia, sequential residual, quarter rotary, base 1000, config in the Hub's older keys.
    cfg = GPTNeoXConfig(
        vocab_size=V, intermediate_size=64, num_attention_heads=4, use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.25},
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, hidden_act="gelu", **common,
    )
    neox = GPTNeoXForCausalLM(cfg).eval()
    randomise(neox, 5)
    d = save("pythia-sequential", neox, 0)
    path = os.path.join(d, "config.json")
    with open(path) as f:
        c = json.load(f)
    rope = c.pop("rope_parameters")
    c["rotary_pct"] = rope["partial_rotary_factor"]
    c["rotary_emb_base"] = rope["rope_theta"]
    with open(path, "w") as f:
        json.dump(c, f, indent=2)
    reloaded = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    x = torch.tensor([[0, 5, 9, 17, 3, 8, 40, 41, 42, 43, 44, 45]])
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, neox(x).logits, atol=1e-6), "older keys load differently"

    # GPT-Neo (TinyStories): global then local (window 8), unscaled scores.
    cfg = GPTNeoConfig(
        vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
        window_size=8, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
        embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0, attn_implementation="eager",
    )
    neo = GPTNeoForCausalLM(cfg).eval()
    randomise(neo, 6)
    save("gpt-neo", neo, 0)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
