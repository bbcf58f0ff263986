"""thermoformer from Python: the same Rust core as the ``thermoformer`` command, NumPy arrays in and out.

>>> import thermoformer
>>> m = thermoformer.Model.load("checkpoints/shakespeare")
>>> m.score(["To be, or not to be"])          # -ln p per text, nats
array([...])

- ``Model.load(dir)``: a run directory written by ``thermoformer train`` or ``import``.
- ``Model.score``, ``Model.word_surprisal``, ``Model.inspect``, ``Model.generate``,
  ``Model.temperatures``, ``Model.set_head_temperature``.
- ``train(**options)`` and ``import_model(src, out)`` write run directories.

Every figure comes from the Rust functions the command line calls, so it equals the CLI's.
Work runs with the GIL released; Ctrl-C stops a long ``score`` at its next batch.
"""

from ._thermoformer import Model, __version__, import_model, train

__all__ = ["Model", "import_model", "train", "__version__"]
