#!/usr/bin/env python3
"""thermoformer against Hugging Face transformers at a real model's shape, in one run on one
machine: scoring tokens/s, KV-cached generation tokens/s, peak RSS.

    pip install torch transformers tokenizers
    cargo build --release
    python3 scripts/bench_vs_transformers.py [--family gpt2|smollm2-135m|pythia-160m|qwen2.5-0.5b]
        [--threads 2] [--batches 4] [--new-tokens 64]

Random weights in the family's real config (speed does not depend on them; none can be
downloaded here; scripts/make_random_model.py lists the configs) are saved with save_pretrained
and imported with `thermoformer import`, so both sides run the same weights. The tokenizer is a
byte-level BPE of 4096 tokens trained on the shipped corpus with an <|endoftext|>; the embedding
keeps the family's rows (50257 for GPT-2, 151936 for Qwen2.5), so the logits are the real size.

Scoring: batches of 8 sequences x 128 positions (<|endoftext|> + 127 tokens of the corpus), the
same ids on both sides: transformers runs the model's forward (AutoModelForCausalLM) + log_softmax + gather under
torch.no_grad(), in float32 and under bf16 autocast (PyTorch's fastest CPU mode on chips with
bf16 instructions), timing the second of two passes over the batches; thermoformer runs `score
--batch-size 8 --show-speed`, whose time excludes loading and tokenizing, over the lines once and
over the lines twice in one process, and its rate is the second pass's (the extra tokens over the
extra seconds), so that both sides are timed warm: a first pass pays for fresh pages on either
side. Generation: batch 1, a short prompt, --new-tokens sampled tokens with the
KV cache (transformers' generate(do_sample=True, top_k=0), thermoformer's `generate
--show-energy`). Peak RSS is each process's own (Python's includes torch itself).
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "thermoformer")
CORPUS = os.path.join(ROOT, "data", "tinyshakespeare.txt")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
        fam = [l for l in open("/proc/cpuinfo") if l.startswith(("cpu family", "model\t"))][:2]
        return name + " (" + ", ".join(l.split(":")[0].strip() + " " + l.split(":")[1].strip() for l in fam) + ")"
    except OSError:
        return platform.processor() or "unknown CPU"


def hf_child(args, model_dir, lines_ids, prompt_ids):
    """Measure transformers in this (child) process and print one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eot = model.config.bos_token_id
    batches = [lines_ids[i : i + 8] for i in range(0, len(lines_ids), 8)]
    out = {}
    modes = ["float32"] + (["bf16-autocast"] if args.bf16 else [])
    for mode in modes:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode != "float32" else torch.autocast("cpu", enabled=False)
        times = []
        for rep in range(2):  # the first is warm-up
            t0 = time.perf_counter()
            with torch.no_grad(), ctx:
                for b in batches:
                    x = torch.tensor([[eot] + ids[:-1] for ids in b])
                    y = torch.tensor(b)
                    logp = torch.log_softmax(model(x).logits.float(), -1)
                    logp.gather(-1, y.unsqueeze(-1)).sum().item()
            times.append(time.perf_counter() - t0)
        out[f"score_{mode}"] = sum(len(b) * len(b[0]) for b in batches) / times[-1]
        print(f"transformers score {mode}: {out[f'score_{mode}']:.1f} tokens/s", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    x = torch.tensor([[eot] + prompt_ids])
    with torch.no_grad():
        model.generate(x, max_new_tokens=4, do_sample=True, top_k=0, pad_token_id=eot)  # warm-up
        t0 = time.perf_counter()
        g = model.generate(x, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, top_k=0, pad_token_id=eot)
        dt = time.perf_counter() - t0
    out["generate_float32"] = (g.shape[1] - x.shape[1]) / dt
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(cmd, env):
    """Run cmd; its (stdout, stderr), or exit with its error."""
    p = subprocess.run(cmd, capture_output=True, env=env, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="gpt2", help="gpt2, smollm2-135m, pythia-160m or qwen2.5-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=4, help="scoring batches of 8 x 128")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="also time transformers under bf16 autocast: auto = where the CPU has bf16 instructions (avx512_bf16 or amx_bf16); without them torch emulates bf16 and takes many minutes")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    args.bf16 = args.bf16 == "on" or (args.bf16 == "auto" and ("avx512_bf16" in flags or "amx_bf16" in flags))
    if args.child:
        data = json.load(open(args.child[1]))
        return hf_child(args, args.child[0], data["lines"], data["prompt"])

    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_random_model import FAMILIES, save_random_model

    if args.family not in FAMILIES:
        sys.exit(f"--family {args.family}: one of {', '.join(FAMILIES)}")

    work = tempfile.mkdtemp(prefix="tf-bench-")
    text = open(CORPUS, encoding="utf-8").read()
    model_dir = os.path.join(work, "hf")
    tok = save_random_model(model_dir, args.family)
    eot = tok.token_to_id("<|endoftext|>")
    run_dir = os.path.join(work, "run")
    subprocess.run([BIN, "import", model_dir, "--out", run_dir], check=True, stdout=subprocess.DEVNULL)

    # Lines of exactly 127 tokens that re-tokenize to the same ids, one per scored window.
    ids = tok.encode(" ".join(text[:400_000].split())).ids  # one line of prose: no newlines inside a window
    lines, pos = [], 0
    while len(lines) < 8 * args.batches:
        chunk = ids[pos : pos + 127]
        pos += 127
        s = tok.decode(chunk)
        if len(chunk) == 127 and tok.encode(s).ids == chunk:
            lines.append((s, chunk))
    with open(os.path.join(work, "lines.txt"), "w") as f:
        f.write("\n".join(s for s, _ in lines) + "\n")
    with open(os.path.join(work, "lines2.txt"), "w") as f:
        f.write("\n".join(s for s, _ in lines + lines) + "\n")
    prompt = "ROMEO:"
    json.dump({"lines": [c for _, c in lines], "prompt": tok.encode(prompt).ids}, open(os.path.join(work, "ids.json"), "w"))

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    child = [sys.executable, __file__, "--family", args.family, "--threads", str(args.threads), "--new-tokens", str(args.new_tokens), "--bf16", "on" if args.bf16 else "off"]
    hf_out, _ = run(child + ["--child", model_dir, os.path.join(work, "ids.json")], env)
    hf = json.loads(hf_out.strip().splitlines()[-1])

    tf = {}
    for prec in ("f32", "bf16"):
        score_cmd = [BIN, "score", os.path.join(work, "lines.txt"), "--checkpoint", run_dir, "--batch-size", "8", "--format", "jsonl", "--show-speed", "--precision", prec]
        run(score_cmd, env)  # warm the page cache

        def scored(cmd):
            # The median of three runs: the second pass below is a difference of two times, which
            # one slow run can make negative or several times too fast.
            times = []
            for _ in range(3):
                m = re.search(r"scored ([0-9]+) tokens in ([0-9.]+) s", run(cmd, env)[1])
                times.append(float(m.group(2)))
            return int(m.group(1)), sorted(times)[1]

        (n1, s1), (n2, s2) = scored(score_cmd), scored(score_cmd[:2] + [os.path.join(work, "lines2.txt")] + score_cmd[3:])
        tf[f"score_{prec}"] = (n2 - n1) / (s2 - s1)  # the second pass over the lines
        tf[f"score_{prec}_one_pass"] = n1 / s1
        gen_cmd = [BIN, "generate", "--checkpoint", run_dir, "--prompt", prompt, "--tokens", str(args.new_tokens), "--show-energy", "--seed", "1", "--precision", prec]
        _, err = run(gen_cmd, env)
        tf[f"generate_{prec}"] = float(re.search(r"([0-9.]+) tokens/s", err).group(1))
        # Peak RSS of a fresh process: measured in a child of its own.
        rss_script = "import resource,subprocess,sys; subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE,check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)"
        tf[f"peak_rss_mib_{prec}"] = max(float(run([sys.executable, "-c", rss_script] + c, env)[0]) for c in [score_cmd, gen_cmd])

    print(json.dumps({"transformers": hf, "thermoformer": tf}))
    weights_mib = os.path.getsize(os.path.join(run_dir, "model.safetensors")) / 2**20
    print(f"CPU: {cpu_model()}, {args.threads} threads; {args.family} shape (random weights), torch {torch.__version__}")
    print(f"{'':40} {'transformers':>14} {'thermoformer':>14} {'ratio':>7}")
    rows = [("score tok/s, 8 x 128, fp32 vs f32", hf["score_float32"], tf["score_f32"]),
            ("score tok/s, fp32 vs bf16", hf["score_float32"], tf["score_bf16"])]
    if "score_bf16-autocast" in hf:
        rows.append(("score tok/s, bf16 autocast vs f32", hf["score_bf16-autocast"], tf["score_f32"]))
        rows.append(("score tok/s, bf16 autocast vs bf16", hf["score_bf16-autocast"], tf["score_bf16"]))
    else:
        print("(transformers' bf16 autocast not timed: this CPU has no bf16 instructions; --bf16 on forces it)")
    rows.append((f"generate tok/s, batch 1, {args.new_tokens} new, f32", hf["generate_float32"], tf["generate_f32"]))
    rows.append((f"generate tok/s, the same, bf16", hf["generate_float32"], tf["generate_bf16"]))
    for name, a, b in rows:
        print(f"{name:40} {a:>14.1f} {b:>14.1f} {b / a:>6.2f}x")
    for prec in ("f32", "bf16"):
        r = tf[f"peak_rss_mib_{prec}"]
        print(f"{'peak RSS MiB (lower is better), ' + prec:40} {hf['peak_rss_mib']:>14.0f} {r:>14.0f} {hf['peak_rss_mib'] / r:>6.2f}x")
    print(f"thermoformer's weight file {weights_mib:.0f} MiB: peak RSS {tf['peak_rss_mib_f32'] / weights_mib:.2f}x it in f32")


if __name__ == "__main__":
    sys.exit(main())
