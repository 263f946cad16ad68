"""Checkpoint files: atomic writes, verified reads (``weights_only=True``, content hash) and models from them.

- :mod:`.checkpoint`: build, save, load and check a fusionseg checkpoint (model config, weights,
  preprocessing, training state);
- :mod:`.loading`: a model, or an ensemble with one preprocessing, rebuilt from checkpoint files;
- :mod:`.importers`: official weights and other frameworks' checkpoints → fusionseg checkpoints;
- :mod:`.run` — :func:`~fusionseg.checkpoints.run.run_import_weights`, what ``fusionseg import-weights`` calls.
"""
