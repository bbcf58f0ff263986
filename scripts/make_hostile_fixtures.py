"""Hostile files for tests/hostile.rs: each one a way a stranger's model file could try to make
the importer spend unbounded memory or recursion. Pure Python (no torch): the torch pickles name
torch's classes through stand-in modules, as torch.save would write them.

    python3 scripts/make_hostile_fixtures.py tests/fixtures/hostile
"""
import io
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

# Stand-ins for the names torch.save writes: torch._utils._rebuild_tensor_v2 and torch.FloatStorage.
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


class FloatStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called: only pickled")


FloatStorage.__module__ = "torch"
_rebuild_tensor_v2.__module__ = "torch._utils"
torch.FloatStorage = FloatStorage
torch._utils = utils
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    """A tensor of `shape` over storage `key`, pickled as torch pickles one."""

    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, s = [], 1
        for d in reversed(self.shape):
            stride.insert(0, s)
            s *= d
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def torch_zip(path, top, storages):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(top)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")


def nanogpt(model):
    args = {"n_layer": 1, "n_head": 1, "n_embd": 4, "block_size": 8, "bias": False, "vocab_size": 4, "dropout": 0.0}
    return {"model": model, "model_args": args}


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A tensor that claims 2^32 floats (16 GiB) over a 16-byte storage.
    s = Storage("0", 4)
    torch_zip(out / "shape-past-storage.pt", nanogpt({"transformer.wte.weight": Tensor(s, [65536, 65536])}), {"0": b"\0" * 16})

    # A zip bomb: an entry of 512 MiB of zeros, deflated to well under a megabyte.
    with zipfile.ZipFile(out / "zip-bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(nanogpt({"transformer.wte.weight": Tensor(Storage("0", 16), [4, 4])}))
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            for _ in range(512):
                f.write(b"\0" * (1 << 20))

    # A pickle nested 100,000 lists deep: ] (empty list) n times, then a (append) n - 1 times.
    n = 100_000
    (out / "depth-bomb-meta.pkl").write_bytes(b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")

    # A billion laughs: L0 = [], L(k+1) = [Lk, Lk] through the memo, 40 levels: 2^40 copies
    # from a few hundred bytes.
    laughs = b"\x80\x02]q\x00"
    for k in range(40):
        laughs += b"(h" + bytes([k]) + b"h" + bytes([k]) + b"lq" + bytes([k + 1])
    (out / "laughs-meta.pkl").write_bytes(laughs + b".")
    for p in sorted(out.iterdir()):
        print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hostile")
