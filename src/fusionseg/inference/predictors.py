"""Predictors for checkpoints whose preprocessing is another framework's own (their ``pre.kind``).

An integration registers ``predict(models, pres, cases, output, **options) -> (written files, failures)`` for
the preprocessing kind its checkpoints carry; :func:`fusionseg.inference.predict_files.predict_files` hands such
checkpoints to it (``options``: its own keyword arguments). :mod:`fusionseg.nnunet` registers ``"nnunet"``
(nnU-Net's own preprocessing, sliding window and export). Importing this module is cheap.

Example:
    >>> register_predictor("nnunet", predict_nnunet_files)
    >>> predictor_for("nnunet") is predict_nnunet_files, predictor_for("fusionseg")
    (True, None)
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["predictor_for", "register_predictor"]

_PREDICTORS: dict[str, Callable] = {}


def register_predictor(kind: str, predict: Callable) -> None:
    """Route checkpoints whose preprocessing is of ``kind`` (``pre.kind``) to ``predict``."""
    if kind == "fusionseg" or (kind in _PREDICTORS and _PREDICTORS[kind] is not predict):
        raise ValueError(f"a predictor for preprocessing kind {kind!r} is already registered; pick another kind")
    _PREDICTORS[kind] = predict


def predictor_for(kind: str) -> Callable | None:
    """The predictor registered for ``kind``, or None (``"fusionseg"``: fusionseg's own sliding window)."""
    return _PREDICTORS.get(kind)
