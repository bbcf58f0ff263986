"""A worked example of thermoformer from Python (run by the tests).

1. Import a GPT-2-family model (the tiny fixture shipped in tests/, random weights, so the
   numbers are only an illustration) and tabulate per-word surprisal in bits, as a
   psycholinguist would put it beside reading times.
2. Turn one attention head's temperature and plot its mean entropy H(T) and heat capacity C(T)
   (with matplotlib, if it is installed): H rises from 0 (one key) to ln n (every key alike),
   and C = dH/d ln T peaks where the head changes over.

    pip install ./python matplotlib      # from the repository root
    python examples/python/surprisal_and_temperature.py [OUT_DIR]
"""

import pathlib
import sys
import tempfile

import numpy as np

import thermoformer

ROOT = pathlib.Path(__file__).resolve().parents[2]
out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp())
out.mkdir(parents=True, exist_ok=True)

# 1. Surprisal per word.
m = thermoformer.import_model(ROOT / "tests" / "fixtures" / "import" / "gpt2-tied", out / "gpt2", overwrite=True)
sentences = ["The horse raced past the barn fell.", "The old man the boats."]
rows = m.word_surprisal(sentences)  # (sentence, word, bits)
try:
    import pandas as pd

    print(pd.DataFrame(rows, columns=["sentence", "word", "surprisal_bits"]).to_string(index=False))
except ImportError:
    print(f"{'sentence':>8}  {'word':<10} {'surprisal_bits':>14}")
    for i, word, bits in rows:
        print(f"{i:>8}  {word:<10} {bits:>14.3f}")
energy = m.score(sentences)
print("sentence energies (nats):", np.round(energy, 3), "= total surprisal", np.round(energy / np.log(2), 3), "bits")

# 2. One head's entropy against its temperature.
layer, head = 1, 2
text = sentences[0]
temperatures = np.geomspace(0.05, 20, 33)
entropy, heat_capacity = [], []
for t in temperatures:
    m.set_head_temperature(layer, head, t)
    read = m.inspect(text)
    entropy.append(read["entropy"][layer, head])
    heat_capacity.append(read["heat_capacity"][layer, head])
m.set_head_temperature(layer, head, 1.0)
peak = temperatures[int(np.argmax(heat_capacity))]
print(f"head {layer}.{head}: H from {entropy[0]:.3f} to {entropy[-1]:.3f} nats over T = {temperatures[0]:g}..{temperatures[-1]:g}; C peaks near T = {peak:.2f}")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot")
else:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(temperatures, entropy, "o-", label="entropy H (nats)")
    ax.semilogx(temperatures, heat_capacity, "s-", label="heat capacity C = dH/d ln T")
    ax.set_xlabel(f"temperature T of head {layer}.{head}")
    ax.set_title(f"head {layer}.{head} on {text!r}")
    ax.legend()
    fig.tight_layout()
    png = out / "entropy_vs_temperature.png"
    fig.savefig(png, dpi=100)
    print(f"plot written to {png}")
