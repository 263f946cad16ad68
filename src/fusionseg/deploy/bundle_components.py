"""The ``scripts`` package of a fusionseg MONAI bundle: what MONAI lacks to compute what ``fusionseg predict`` does.

This file is copied as is into every exported bundle (``scripts/bundle_components.py``); its
``configs/inference.json`` builds these by ``_target_: scripts.bundle_components.X``. It imports
only torch, NumPy, SciPy and MONAI, never fusionseg, so the bundle runs where fusionseg is not
installed. Everything else in the bundle is MONAI's own (``LoadImaged``, ``Orientationd``,
``Spacingd``, ``SlidingWindowInferer``, ``Invertd``, ``AsDiscreted``, ``SaveImage``):

- :func:`list_cases`: the images of ``dataset_dir`` grouped into cases as ``predict`` groups them;
- :class:`NormalizeChannelsd`: the per-channel normalisation of the training run (nnU-Net's CT,
  z-score — inside the hole-filled non-zero mask where the run used it —, 0..1 rescaling, RGB /255);
- :class:`Activated`: the TorchScript network followed by softmax (or sigmoid), so the sliding
  window blends probabilities as ``predict`` does;
- :class:`RegionsToLabelsd`: sigmoid region probabilities painted into a label map (region models);
- :class:`SaveLabeld`: the label map on the input grid, written as ``OUT/<case><extension>``
  (``predict``'s names and extensions; binary 2D masks as 0/255), atomically.

Example (what the bundle's evaluator runs per case):
    >>> cases = list_cases("images")                       # [{"image": "images/a.nii.gz", "case_id": "a"}]
    >>> net = Activated(torch.jit.load("models/model.ts"), "softmax")
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImage
from torch import nn

__all__ = [
    "IMAGE_EXTENSIONS",
    "Activated",
    "NormalizeChannelsd",
    "RegionsToLabelsd",
    "SaveLabeld",
    "list_cases",
    "normalise",
    "output_extension",
]

# Input extension → extension of the label map (what `fusionseg predict` writes): formats MONAI reads
# with nibabel (3D) and Pillow (2D).
_OUTPUTS = {
    ".nii.gz": ".nii.gz",
    ".nii": ".nii",
    ".png": ".png",
    ".bmp": ".png",
    ".jpg": ".png",
    ".jpeg": ".png",
    ".tif": ".tif",
    ".tiff": ".tiff",
}
IMAGE_EXTENSIONS = tuple(_OUTPUTS)
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _split(name: str) -> tuple[str, str]:
    lower = name.lower()
    for ext in sorted(_OUTPUTS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return name, ""


def output_extension(image: str | Path) -> str:
    """Extension of the label map written for ``image`` (PNG for lossy / 8-bit 2D inputs)."""
    ext = _split(Path(image).name)[1]
    if not ext:
        raise ValueError(f"{image}: unsupported image; use one of {', '.join(IMAGE_EXTENSIONS)}")
    return _OUTPUTS[ext]


def list_cases(dataset_dir: str | Path, in_channels: int = 1) -> list[dict]:
    """Cases of ``dataset_dir`` (a folder or one image) → ``[{"image": path or [channel paths], "case_id": id}]``.

    One file per case, ``CASE_0000`` naming the case ``CASE``; with ``in_channels > 1`` the files
    ``CASE_0000``, ``CASE_0001``, ... form one case (one file may carry every channel, e.g. RGB).
    """
    source = Path(dataset_dir)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".") and _split(p.name)[1])
    else:
        raise ValueError(f"dataset_dir {source} does not exist; pass a folder of images or one image")
    if not files:
        raise ValueError(f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    groups: dict[str, list[Path]] = {}
    for path in files:
        case_id = _split(path.name)[0]
        match = _CHANNEL.match(case_id)
        if match is not None and (in_channels > 1 or match["channel"] == "0000"):
            case_id = match["case"]  # without its channel suffix (_0000, _0001, ...)
        groups.setdefault(case_id, []).append(path)
    cases = []
    for case_id, paths in groups.items():
        if len(paths) not in (1, in_channels):
            raise ValueError(f"case {case_id!r} has {len(paths)} channel files; the network takes {in_channels}")
        cases.append({"image": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths], "case_id": case_id})
    return cases


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)


def _zscore(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    if mask is not None and bool(mask.any()):
        values = x[mask]
        std, mean = torch.std_mean(values, unbiased=False)
        x[mask] = (values - mean) / std.clamp_min(1e-8)
        return
    std, mean = torch.std_mean(x, unbiased=False)
    x.sub_(mean).div_(std.clamp_min(1e-8))


def normalise(image: torch.Tensor, specs: Sequence[dict]) -> torch.Tensor:
    """Normalise each channel of a plain float tensor ``image`` (C, *S) in place by its spec (the run's)."""
    if image.shape[0] != len(specs):
        raise ValueError(f"image has {image.shape[0]} channels but the network takes {len(specs)}")
    mask = None
    if any(s["scheme"] == "zscore" and s.get("use_mask") for s in specs):  # from the raw channels
        mask = torch.from_numpy(_fill_holes(np.any(image.numpy() != 0, axis=0)))
    for c, spec in enumerate(specs):
        x, scheme = image[c], spec["scheme"]
        if scheme == "ct":
            x.clamp_(*spec["clip"]).sub_(spec["mean"]).div_(max(spec["std"], 1e-8))
        elif scheme in ("zscore", "channel"):
            _zscore(x, mask if spec.get("use_mask") else None)
        elif scheme == "rescale_to_0_1":
            x.sub_(x.min()).div_(x.max().clamp_min(1e-8))
        elif scheme == "rgb_to_0_1":
            x.div_(255.0)
        elif scheme != "noNorm":
            raise ValueError(f"unknown normalisation scheme {scheme!r}")
    return image


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation of ``d[key]`` (C, *S) by ``specs``; MONAI's metadata and the
    applied operations (what ``Invertd`` undoes) are kept."""

    def __init__(self, keys: str | Sequence[str], specs: Sequence[dict]) -> None:
        super().__init__(keys)
        if not specs or not all(isinstance(s, dict) and "scheme" in s for s in specs):
            raise ValueError("specs must be one {'scheme': ...} dict per channel (the run's channel_normalisation)")
        self.specs = [dict(s) for s in specs]

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key].float().clone() if isinstance(d[key], torch.Tensor) else torch.as_tensor(d[key]).float()
            normalise(img.as_subclass(torch.Tensor), self.specs)  # in place, through a plain view
            d[key] = img
        return d


class Activated(nn.Module):
    """``network`` followed by softmax over channels (or sigmoid): (B, C, *S) → probabilities (B, K, *S)."""

    def __init__(self, network: nn.Module, activation: str = "softmax") -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.network, self.activation = network, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        logits = (logits[0] if isinstance(logits, tuple | list) else logits).float()
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, 1)


class RegionsToLabelsd(MapTransform):
    """Region probabilities (R, *S) → label map (1, *S): each region above 0.5 painted with its value, in order."""

    def __init__(self, keys: str | Sequence[str], regions_class_order: Sequence[int]) -> None:
        super().__init__(keys)
        if not regions_class_order:
            raise ValueError("regions_class_order must list the label value painted for each region")
        self.order = [int(v) for v in regions_class_order]

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            if probs.shape[0] != len(self.order):
                raise ValueError(f"{probs.shape[0]} region channels but {len(self.order)} regions_class_order values")
            label = torch.zeros_like(probs[:1])
            for region, value in enumerate(self.order):
                label[0][probs[region] > 0.5] = value
            d[key] = label
        return d


class SaveLabeld(MapTransform):
    """Write the label map ``d[key]`` (1, *S, on the input grid) as ``output_dir/<case_id><extension>``.

    The extension is ``predict``'s for the input (:func:`output_extension`), the geometry the
    input's (MONAI's writers: NIfTI affine; 2D images in the input's row order). With
    ``binary_as_255`` a 2D 0/1 map is stored as 0/255. The file is written under a temporary name
    and renamed into place; an ``output_dir`` that is the input images' folder is refused (ValueError), and
    so is an existing file that no bundle run wrote (e.g. ground truth): the names written are kept in
    ``output_dir/.bundle-outputs``, so a rerun replaces its own results only.
    """

    MANIFEST = ".bundle-outputs"

    def __init__(
        self, keys: str | Sequence[str], output_dir: str | Path, binary_as_255: bool = False, case_key: str = "case_id"
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.binary_as_255, self.case_key = Path(output_dir), bool(binary_as_255), case_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            source = label.meta.get("filename_or_obj") if isinstance(label, MetaTensor) else None
            source = source[0] if isinstance(source, list | tuple) else source
            if not source:
                raise ValueError(
                    f"{key}: the label map does not name its input image (MetaTensor meta 'filename_or_obj'), which "
                    "sets the output format; load the images with LoadImaged and keep the prediction a MetaTensor"
                )
            ext = output_extension(source)
            if self.output_dir.resolve() == Path(source).resolve().parent:
                raise ValueError(
                    f"output_dir {self.output_dir} is the folder of the input images: the label maps would be written "
                    f"among them (replacing {Path(source).name} where names match); pass another --output_dir"
                )
            planar = label.ndim == 3
            if self.binary_as_255 and planar and float(label.max()) <= 1:
                label = label * 255
            self.output_dir.mkdir(parents=True, exist_ok=True)
            final = self.output_dir / f"{d[self.case_key]}{ext}"
            self._claim(final)
            temporary = self.output_dir / f".{final.name}.tmp-{os.getpid()}"
            saver = SaveImage(output_ext=ext, output_dtype=np.uint8 if float(label.max()) < 256 else np.uint16,
                              resample=False, separate_folder=False, print_log=False)  # fmt: skip
            if planar:
                saver.set_options(write_kwargs={"reverse_indexing": False})  # rows first, as read
            saver(label, filename=str(temporary))
            os.replace(f"{temporary}{ext}", final)
        return d

    def _claim(self, final: Path) -> None:
        """Record ``final`` as a bundle output before writing it; ValueError if it exists and is not one."""
        manifest = self.output_dir / self.MANIFEST
        try:
            written = set(manifest.read_text().splitlines())
        except OSError:
            written = set()
        if final.name in written:
            return
        if final.exists():
            raise ValueError(
                f"output_dir {self.output_dir} already holds {final.name}, which no bundle run wrote (ground "
                "truth?); nothing was replaced, pass an empty or new --output_dir"
            )
        with open(manifest, "a") as f:
            f.write(final.name + "\n")
            f.flush()
            os.fsync(f.fileno())
