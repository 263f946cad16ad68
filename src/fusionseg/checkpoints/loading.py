"""Models from checkpoint files: one, or several with the same preprocessing (an ensemble).

Example:
    >>> model, pre, config = load_model("runs/x/best.pt")
    >>> models, pres = load_models([Path("a/best.pt"), Path("b/best.pt")])   # an ensemble
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fusionseg.errors import InputError

__all__ = ["TRAINING_ONLY_KEYS", "check_same_preprocessing", "load_model", "load_models"]


# Preprocessing entries that only shape training (a model of an ensemble may differ in them).
TRAINING_ONLY_KEYS = ("patch_size", "num_samples")


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the network of a fusionseg checkpoint → (model in eval mode, preprocessing, checkpoint)."""
    from fusionseg.checkpoints.checkpoint import load_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != "fusionseg" or "model" not in ckpt or "state_dict" not in ckpt:
        raise InputError(
            f"{checkpoint} is not a fusionseg training checkpoint (needs 'model', 'preprocessing' and 'state_dict'); "
            "use the best.pt/last.pt written by `fusionseg train`, or convert with `fusionseg import-weights`"
        )
    if not isinstance(ckpt.get("preprocessing"), dict):
        raise InputError(f"{checkpoint} carries no preprocessing; it cannot be used for prediction")
    model = rebuild_model(ckpt)
    return model.to(device).eval(), ckpt["preprocessing"], ckpt


def check_same_preprocessing(pres: Sequence[dict], sources: Sequence[str | Path]) -> None:
    """InputError naming the first model whose preprocessing differs from the first one's (training-only keys aside)."""
    reference = pres[0]
    for pre, source in zip(pres[1:], sources[1:]):
        keys = sorted((set(reference) | set(pre)) - set(TRAINING_ONLY_KEYS))
        differ = [k for k in keys if reference.get(k) != pre.get(k)]
        if differ:
            raise InputError(
                f"{source}: preprocessing differs from {sources[0]} ({', '.join(differ[:3])}); an ensemble needs "
                "models trained on the same dataset with the same preprocessing"
            )


def load_models(
    checkpoints: Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[list[nn.Module], list[dict]]:
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
