#!/usr/bin/env python3
"""Run a command and report its wall time, peak RSS and peak anonymous memory, as one JSON line.

    python3 scripts/peak_memory.py -- target/release/thermoformer train --corpus big.txt --steps 20

Peak RSS is the kernel's (getrusage ru_maxrss). Peak anonymous memory (RssAnon: heap, stacks,
everything not backed by a file) and peak file-backed memory (RssFile: the binary, mapped token
files and weights) are the largest values seen in /proc/PID/status, sampled every 10 ms, so a
spike shorter than that can be missed. Linux only.
"""

import json
import resource
import subprocess
import sys
import time


def status_kb(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    start = time.perf_counter()
    child = subprocess.Popen(args)
    peak_anon = peak_file = 0
    while child.poll() is None:
        s = status_kb(child.pid)
        peak_anon = max(peak_anon, s.get("RssAnon", 0))
        peak_file = max(peak_file, s.get("RssFile", 0))
        time.sleep(0.01)
    wall = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({
        "exit": child.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(maxrss / 1024, 1),
        "peak_anon_mb": round(peak_anon / 1024, 1),
        "peak_file_mb": round(peak_file / 1024, 1),
    }), file=sys.stderr)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
