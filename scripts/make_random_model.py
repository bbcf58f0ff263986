#!/usr/bin/env python3
"""Save a randomly initialised model in a real family's configuration, with a byte-level BPE of
4096 tokens trained on the shipped corpus, as a Hugging Face folder that `thermoformer import`
reads: for trying the explorer, the importer and the benchmarks at real sizes offline (no
weights can be downloaded here; speed and memory do not depend on their values).

    pip install torch transformers tokenizers
    python3 scripts/make_random_model.py /tmp/gpt2-random [--family gpt2]
    thermoformer import /tmp/gpt2-random --out /tmp/gpt2-run
    cargo run --release --example explorer_latency -- /tmp/gpt2-run 20

Families (each the real model's config.json, written out here):
  gpt2          GPT-2 small: 12 layers x 12 heads x 768, context 1024, 124M
  smollm2-135m  SmolLM2-135M (llama): 30 layers, 9 query heads on 3 kv heads, 576 wide, 135M
  pythia-160m   Pythia-160M (gpt_neox): 12 layers x 12 heads x 768, rotary on a quarter, 162M
  qwen2.5-0.5b  Qwen2.5-0.5B (qwen2): 24 layers, 14 query heads on 2 kv heads, 896 wide, 494M
The start token is the BPE's <|endoftext|> (id 0) in every family.
"""

import argparse
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configs(eot):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=eot, eos_token_id=eot)
    return {
        "gpt2": lambda: GPT2Config(**ids),
        "smollm2-135m": lambda: LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, **ids),
        "pythia-160m": lambda: GPTNeoXConfig(
            vocab_size=50304, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}, **ids),
        "qwen2.5-0.5b": lambda: Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **ids),
    }


FAMILIES = ["gpt2", "smollm2-135m", "pythia-160m", "qwen2.5-0.5b"]


def save_random_model(out: str, family: str = "gpt2") -> Tokenizer:
    """Save the model and tokenizer into `out`; returns the tokenizer."""
    from transformers import AutoModelForCausalLM

    text = open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8").read()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    eot = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(configs(eot)[family]()).save_pretrained(out)
    tok.save(os.path.join(out, "tokenizer.json"))
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--family", choices=FAMILIES, default="gpt2")
    args = ap.parse_args()
    save_random_model(args.out, args.family)
    print(f"wrote a random {args.family} to {args.out}")


if __name__ == "__main__":
    main()
