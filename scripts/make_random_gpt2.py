#!/usr/bin/env python3
"""Save a randomly initialised GPT-2 small (12 layers x 12 heads x 768, context 1024) with a
byte-level BPE of 4096 tokens trained on the shipped corpus, as a Hugging Face directory that
`thermoformer import` reads: for trying the explorer and the importer at GPT-2's size offline.

    pip install torch transformers tokenizers
    python3 scripts/make_random_gpt2.py /tmp/gpt2-random
    thermoformer import /tmp/gpt2-random --out /tmp/gpt2-run
    cargo run --release --example explorer_latency -- /tmp/gpt2-run 20
"""

import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_random_gpt2(out: str) -> Tokenizer:
    """Save the model and tokenizer into `out`; returns the tokenizer."""
    text = open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), encoding="utf-8").read()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    eot = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(bos_token_id=eot, eos_token_id=eot)).save_pretrained(out, safe_serialization=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    return tok


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    save_random_gpt2(sys.argv[1])
    print(f"wrote a random GPT-2 small to {sys.argv[1]}")


if __name__ == "__main__":
    main()
