"""Components a fusionseg MONAI bundle's ``configs/inference.json`` builds by ``_target_``.

They make ``python -m monai.bundle run`` compute exactly what ``fusionseg predict`` computes:
:func:`list_cases` finds the images of ``dataset_dir`` as ``predict`` does, :class:`LoadForInferenced`
reads and preprocesses one case with the checkpoint's ``preprocessing`` dict (orientation, target
spacing, per-channel normalisation: the same code as ``predict``), :class:`Activated` turns each
window's logits into probabilities before MONAI's sliding window blends them (as ``predict``
does), :func:`collate_case` batches one
case while keeping its geometry (not collatable by MONAI's default), and :class:`SavePredictiond`
writes the label map on the input's own grid and geometry (``data.save_prediction``).

Example (what the bundle's evaluator runs per case):
    >>> data = LoadForInferenced(pre)({"image": ["case.nii.gz"], "case_id": "case"})
    >>> batch = collate_case([data])                          # image (1, C, *S) + geometry
    >>> batch["pred"] = inferer(batch["image"], Activated(net, "softmax"))   # (1, K, *S) probabilities
    >>> SavePredictiond(output_dir="out")(batch)              # out/case.nii.gz, input geometry
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.transforms import MapTransform
from torch import nn

from fusionseg.files import atomic_write

__all__ = ["META_KEY", "Activated", "LoadForInferenced", "SavePredictiond", "collate_case", "list_cases"]

META_KEY = "fusionseg_meta"


def list_cases(dataset_dir: str | Path, in_channels: int = 1) -> list[dict]:
    """Cases of ``dataset_dir`` (a folder or one image) → ``[{"image": [channel files], "case_id": id}]``."""
    from fusionseg.engine.infer import find_inputs

    return [
        {"image": [str(p) for p in paths], "case_id": cid} for cid, paths in find_inputs(Path(dataset_dir), in_channels)
    ]


class Activated(nn.Module):
    """``network`` followed by softmax over channels (or sigmoid): (B, C, *S) → probabilities (B, K, *S).

    The sliding window then blends probabilities, as ``fusionseg predict`` does. The wrapped network
    is shared (its weights are loaded through the bundle's ``network``).
    """

    def __init__(self, network: nn.Module, activation: str = "softmax") -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.network, self.activation = network, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        logits = (logits[0] if isinstance(logits, tuple | list) else logits).float()
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, 1)


class LoadForInferenced(MapTransform):
    """Read and preprocess ``d["image"]`` (channel files) as ``fusionseg predict`` does → tensor (C, *S).

    The geometry needed to write the result on the input grid goes to ``d["fusionseg_meta"]``.
    """

    def __init__(self, preprocessing: dict, keys: str = "image") -> None:
        super().__init__(keys=(keys,))
        if not isinstance(preprocessing, dict) or "spatial_dims" not in preprocessing:
            raise ValueError("LoadForInferenced needs the checkpoint's preprocessing dict (with spatial_dims)")
        self.preprocessing = preprocessing

    def __call__(self, data: dict) -> dict:
        from fusionseg.data import load_for_inference

        d = dict(data)
        key = self.keys[0]
        d[key], d[META_KEY] = load_for_inference(list(d[key]) if not isinstance(d[key], str) else [d[key]],
                                                 self.preprocessing)  # fmt: skip
        return d


def collate_case(items: Sequence[dict]) -> dict:
    """Batch of one case: ``image`` gets a batch axis, every other entry becomes a list of one."""
    if len(items) != 1:
        raise ValueError(f"collate_case batches one case at a time (images differ in size); got {len(items)}")
    (item,) = items
    return {k: (v[None] if k == "image" else [v]) for k, v in item.items()}


class SavePredictiond(MapTransform):
    """Write ``d["pred"]`` (1, K, *S probabilities on the preprocessed grid) as a label map on the input grid.

    The file is ``output_dir/<case_id><extension of predict>`` with the input's geometry, the same
    file ``fusionseg predict`` writes (argmax, or regions painted in order; binary 2D masks 0/255).
    """

    def __init__(self, output_dir: str | Path, keys: str = "pred", case_key: str = "case_id") -> None:
        super().__init__(keys=(keys,))
        self.output_dir, self.case_key = Path(output_dir), case_key

    def __call__(self, data: dict) -> dict:
        from fusionseg.data import save_prediction
        from fusionseg.data.formats import prediction_extension

        pred = torch.as_tensor(data[self.keys[0]]).detach().float().cpu()
        metas, cases = data[META_KEY], data[self.case_key]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for probs, meta, case_id in zip(pred, metas, cases):
            out = self.output_dir / f"{case_id}{prediction_extension(Path(meta['paths'][0]))}"
            with atomic_write(out) as tmp:
                save_prediction(probs, meta, tmp)
        return data
