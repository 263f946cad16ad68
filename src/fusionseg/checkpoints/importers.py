"""Weights of other code bases → fusionseg checkpoints: official D-Net / DS-TransUNet files, other frameworks'.

:func:`import_weights` builds a registered model, loads an official ``.pth`` / ``.model`` file into it
(name mapping and checks: :func:`fusionseg.nets.weights.load_pretrained`) and saves a checkpoint. A
framework whose checkpoints carry network, plans and preprocessing themselves registers an importer
``import_(weights, output, strict) -> (path, load report, model config)`` for its kind
(:func:`register_importer`); :mod:`fusionseg.nnunet` registers ``"nnunet"`` (``checkpoint_final.pth``).
Importing this module is cheap.

Example:
    >>> model, report = import_weights("dnet", "DNet_official.pth", "dnet.pt", {"in_channels": 1})
    >>> register_importer("nnunet", import_nnunet)
    >>> importer_for("nnunet") is import_nnunet
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fusionseg.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from fusionseg.data.preprocessing import AnyPreprocessing
    from fusionseg.nets.weights import LoadReport

__all__ = ["import_weights", "importer_for", "register_importer"]

_IMPORTERS: dict[str, Callable] = {}


def register_importer(kind: str, import_: Callable) -> None:
    """Import checkpoints of framework ``kind`` (e.g. ``"nnunet"``) with ``import_``."""
    if kind in _IMPORTERS and _IMPORTERS[kind] is not import_:
        raise ValueError(f"an importer for {kind!r} checkpoints is already registered; pick another kind")
    _IMPORTERS[kind] = import_


def importer_for(kind: str) -> Callable | None:
    """The importer registered for ``kind``, or None."""
    return _IMPORTERS.get(kind)


def import_weights(
    model_name: str,
    weights: str | os.PathLike,
    output: str | os.PathLike,
    model_kwargs: dict[str, Any] | None = None,
    preprocessing: AnyPreprocessing | None = None,
    strict: bool = True,
) -> tuple[nn.Module, LoadReport]:
    """Build registered ``model_name`` with ``model_kwargs``, load official ``weights`` into it, save a checkpoint.

    ``preprocessing`` (e.g. from ``data.build_preprocessing``) is embedded for ``predict``. Returns
    (model, load report); with ``strict`` every tensor must match by name and shape.
    """
    from fusionseg.checkpoints.checkpoint import build_checkpoint, save_checkpoint
    from fusionseg.nets.registry import create_model, list_models
    from fusionseg.nets.weights import load_pretrained, one_line

    kwargs = dict(model_kwargs or {})
    if str(model_name).lower() not in list_models():
        raise InputError(f"unknown model {model_name!r}; choose one of {', '.join(list_models())}")
    try:
        model = create_model(model_name, **kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"cannot build {model_name} with {kwargs}: {one_line(str(err), 160)}") from None
    report = load_pretrained(model, weights, strict=strict)
    if not report.loaded:  # --no-strict that fits nothing would save an untrained model as "imported"
        raise InputError(
            f"no tensor of {weights} fits {model_name} ({report.summary()}); check --model and --model-kwargs"
        )
    ckpt = build_checkpoint(model, preprocessing=preprocessing, rng=False, train_args={"imported_from": str(weights)})
    save_checkpoint(output, ckpt)
    return model, report
