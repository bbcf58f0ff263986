"""Soak test of `thermoformer serve`: CLIENTS clients send mixed score / generate / sweep requests
for MINUTES, then the latency percentiles per kind and the server's RSS at the start (after a
warm-up) and at the end are printed.

    python3 scripts/soak.py [--checkpoint DIR] [--clients 8] [--minutes 10]

Without --checkpoint it serves checkpoints/shakespeare if it exists, else the imported GPT-2
fixture. A minute of the same load comes first (--warmup), so that the allocator's working set
fills. Exit status 1 if any request failed (5xx or no answer), or if the RSS peak of the run's
second half is more than 10% above its first half's (a leak keeps raising it).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "thermoformer"


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()
        return r.status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=60, help="seconds of the same load before the start RSS is read")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    tmp = tempfile.TemporaryDirectory()
    ck = args.checkpoint
    if ck is None:
        ck = ROOT / "checkpoints" / "shakespeare"
        if not (ck / "config.json").exists():
            ck = Path(tmp.name) / "gpt2"
            subprocess.run([BIN, "import", ROOT / "tests/fixtures/import/gpt2-tied", "--out", ck], check=True, stdout=subprocess.DEVNULL)
    port = random.randint(20000, 40000)
    server = subprocess.Popen([BIN, "serve", "--checkpoint", str(ck), "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                info = json.load(urllib.request.urlopen(base + "/api/info", timeout=5))
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("the server did not start")
        text = info["sample_text"] or "the"
        words = text.split(" ")
        kinds = {
            "score": lambda rng: ("/api/score", {"text": " ".join(words[: rng.randint(1, len(words))]), "temperatures": {"0.0": rng.choice([0.5, 1.0, 2.0])}}),
            "generate": lambda rng: ("/api/generate", {"prompt": words[0], "tokens": rng.randint(8, 48), "temperature": 0.8, "top_k": 40, "seed": rng.randint(0, 1 << 30)}),
            "sweep": lambda rng: ("/api/sweep", {"text": text, "temperatures": [0.5, 1.0, 2.0]}),
        }
        latencies = {k: [] for k in kinds}
        failures = []
        lock = threading.Lock()

        def client(seed, until):
            rng = random.Random(seed)
            while time.time() < until:
                kind = rng.choices(list(kinds), weights=[6, 3, 1])[0]
                path, body = kinds[kind](rng)
                t0 = time.perf_counter()
                try:
                    post(base + path, body)
                    with lock:
                        latencies[kind].append(time.perf_counter() - t0)
                except (urllib.error.URLError, OSError) as e:
                    with lock:
                        failures.append(f"{kind}: {e}")

        def run(seconds, seed):
            until = time.time() + seconds
            threads = [threading.Thread(target=client, args=(seed + i, until)) for i in range(args.clients)]
            for t in threads:
                t.start()
            samples = []
            while any(t.is_alive() for t in threads):
                time.sleep(10)
                samples.append(rss_kib(server.pid))
            for t in threads:
                t.join()
            return samples

        # Warm-up: the same load for a minute (the allocator's and the thread pool's working set
        # fills), then the RSS the run starts from.
        warm = run(args.warmup, 1000)
        for xs in latencies.values():
            xs.clear()
        rss_start = rss_kib(server.pid)
        samples = run(args.minutes * 60, 0)
        rss_end = rss_kib(server.pid)
        print("RSS every 10 s (MiB), warm-up:", " ".join(f"{x / 1024:.0f}" for x in warm))
        print("RSS every 10 s (MiB), run:", " ".join(f"{x / 1024:.0f}" for x in samples))
        alive = server.poll() is None and urllib.request.urlopen(base + "/api/info", timeout=5).status == 200
    finally:
        server.terminate()
        server.wait()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{args.clients} clients for {args.minutes:g} min on {ck} ({cpu}, {os.cpu_count()} cores)")
    print("| request | count | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for kind, xs in latencies.items():
        xs.sort()
        if xs:
            p = lambda q: 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]
            print(f"| {kind} | {len(xs)} | {p(0.5):.1f} | {p(0.99):.1f} |")
    # Growth is judged on the run's two halves: a leak keeps raising the peak, while an
    # allocator's working set under the same load stays in its band.
    half = max(1, len(samples) // 2)
    first, second = max(samples[:half] or [rss_start]), max(samples[half:] or [rss_end])
    grown = (second - first) / first
    print(f"RSS {rss_start / 1024:.1f} MiB after the warm-up, {rss_end / 1024:.1f} MiB at the end ({100 * (rss_end - rss_start) / rss_start:+.1f}%); "
          f"peak {first / 1024:.1f} MiB in the run's first half, {second / 1024:.1f} MiB in its second ({100 * grown:+.1f}%)")
    print(f"failures: {len(failures)}{': ' + failures[0] if failures else ''}; the server {'still answers' if alive else 'no longer answers'}")
    sys.exit(1 if failures or not alive or grown > 0.10 else 0)


if __name__ == "__main__":
    main()
