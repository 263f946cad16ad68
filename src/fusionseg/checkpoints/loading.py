"""Models from checkpoint files: one, or several with the same preprocessing (an ensemble).

Example:
    >>> model, pre, ckpt = load_model("runs/x/best.pt")          # pre: a Preprocessing (or NnunetPreprocessing)
    >>> models, pres = load_models([Path("a/best.pt"), Path("b/best.pt")])   # an ensemble
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import nn

from fusionseg.data.preprocessing import AnyPreprocessing, Preprocessing, preprocessing_from_dict
from fusionseg.errors import InputError

__all__ = ["check_same_preprocessing", "load_model", "load_models", "shared_settings"]


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, AnyPreprocessing, dict]:
    """Rebuild the network of a fusionseg checkpoint → (model in eval mode, its preprocessing, the checkpoint)."""
    from fusionseg.checkpoints.checkpoint import check_fields, load_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != "fusionseg" or "model" not in ckpt or "state_dict" not in ckpt:
        raise InputError(
            f"{checkpoint} is not a fusionseg training checkpoint (needs 'model', 'preprocessing' and 'state_dict'); "
            "use the best.pt/last.pt written by `fusionseg train`, or convert with `fusionseg import-weights`"
        )
    if not isinstance(ckpt.get("preprocessing"), dict):
        raise InputError(f"{checkpoint} carries no preprocessing; it cannot be used for prediction")
    check_fields(ckpt, str(checkpoint))  # the preprocessing included
    model = rebuild_model(ckpt)
    return model.to(device).eval(), preprocessing_from_dict(ckpt["preprocessing"]), ckpt


def shared_settings(pre: AnyPreprocessing) -> AnyPreprocessing:
    """What the models of an ensemble must share: ``pre`` without the settings that only shaped training
    (patch size, patches per case; each model predicts with its own window)."""
    return replace(pre, patch_size=None, num_samples=1) if isinstance(pre, Preprocessing) else pre


def check_same_preprocessing(pres: Sequence[AnyPreprocessing], sources: Sequence[str | Path]) -> None:
    """InputError naming the first model whose preprocessing differs from the first one's (training-only settings
    aside: :func:`shared_settings`)."""
    reference = shared_settings(pres[0])
    for pre, source in zip(pres[1:], sources[1:]):
        other = shared_settings(pre)
        if type(other) is not type(reference):
            differ = ["kind"]
        else:
            differ = [f.name for f in fields(reference) if getattr(reference, f.name) != getattr(other, f.name)]
        if differ:
            raise InputError(
                f"{source}: preprocessing differs from {sources[0]} ({', '.join(differ[:3])}); an ensemble needs "
                "models trained on the same dataset with the same preprocessing"
            )


def load_models(
    checkpoints: Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[list[nn.Module], list[AnyPreprocessing]]:
    """Rebuild every checkpoint of an ensemble → (models, their preprocessing); they must share the preprocessing."""
    if not checkpoints:
        raise InputError("--checkpoint: no checkpoint given; pass best.pt file(s) or a run folder")
    models, pres = [], []
    for path in checkpoints:
        model, pre, _ = load_model(path, device)
        models.append(model)
        pres.append(pre)
    check_same_preprocessing(pres, [str(p) for p in checkpoints])
    return models, pres
