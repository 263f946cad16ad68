"""Checkpoint files: atomic writes, verified reads (``weights_only=True``, content hash) and models from them.

- :mod:`.checkpoint`: build, save, load and check a fusionseg checkpoint (model config, weights,
  preprocessing, training state);
- :mod:`.loading`: a model, or an ensemble with one preprocessing, rebuilt from checkpoint files.
"""
