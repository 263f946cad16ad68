"""Models leaving fusionseg: ONNX and TorchScript exports, MONAI bundles that run without fusionseg.

- :mod:`.run` — :func:`~fusionseg.deploy.run.run_export`, what ``fusionseg export`` calls;
- :mod:`.export`: ONNX / TorchScript with a parity check; :mod:`.bundle`: a MONAI bundle folder;
  :mod:`.bundle_components`: the code copied into bundles (no fusionseg import).
"""
