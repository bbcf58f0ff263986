#!/usr/bin/env python3
"""Write a large corpus for issue 19's measurements: the shipped corpus repeated to SIZE bytes.

    python3 scripts/make_big_corpus.py 1G /tmp/big/c1g.txt
    python3 scripts/make_big_corpus.py 100M /tmp/big/c100m.txt

SIZE takes a K, M or G suffix (powers of 1000). The text is cut at a line end at or before SIZE
bytes, so every file is whole lines of the shipped corpus. Never commit the output.
"""

import pathlib
import sys

UNITS = {"K": 10**3, "M": 10**6, "G": 10**9}


def parse_size(s: str) -> int:
    s = s.strip().upper()
    if s and s[-1] in UNITS:
        return int(float(s[:-1]) * UNITS[s[-1]])
    return int(s)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    size, out = parse_size(sys.argv[1]), pathlib.Path(sys.argv[2])
    text = (pathlib.Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt").read_bytes()
    if not text.endswith(b"\n"):
        text += b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("wb") as f:
        while written + len(text) <= size:
            f.write(text)
            written += len(text)
        rest = text[: size - written]
        rest = rest[: rest.rfind(b"\n") + 1]
        f.write(rest)
        written += len(rest)
    print(f"wrote {written} bytes ({written / 1e6:.1f} MB) to {out}")


if __name__ == "__main__":
    main()
