"""Preprocessing and augmentation with MONAI dictionary transforms, and inference I/O.

``build_preprocessing(info)`` derives the :class:`~fusionseg.data.preprocessing.Preprocessing` (stored in
checkpoints as its ``to_dict()``); ``eval_transforms(pre)`` turns it into a MONAI pipeline mapping
``case_dict(case) = {"image": [paths], "label": path, "case_id": str}`` to
``{"image": float32 (C, *S), "label": int64 (1, *S), "case_id": str}`` plain tensors;
:func:`geometry_pipeline` is its first half (what the preprocessing cache stores after normalisation) and
:func:`augmentation` the random augmentation of training patches.
``load_for_inference`` / ``save_prediction`` read a new image and write a prediction back on the
input's own grid (orientation and resampling undone, affine/header kept).

Steps: read + validate → orientation RAS (3D) → optional resampling to ``target_spacing`` →
intensity normalisation per channel following ``channel_names`` as nnU-Net v2 does (CT: clip to
the training foreground 0.5–99.5 percentiles + z-score with its mean/std; ``noNorm``;
``rescale_to_0_1``; ``rgb_to_0_1``; anything else: per-image z-score, inside the non-zero mask
where nnU-Net would use it — see :mod:`fusionseg.data.normalization`). Training patches are cut from
the preprocessed cache by :mod:`fusionseg.data.streaming`, then augmented: flips, small rotation/scale,
intensity scale/shift, noise.

Labels stay integer label maps through the pipelines (ignore label included); training turns
them into training targets with :class:`~fusionseg.data.labels.LabelLayout` (regions, valid mask).

Example:
    >>> info = scan_dataset(make_phantom_dataset(tmp, spatial_dims=2))
    >>> pre = build_preprocessing(info)
    >>> sample = eval_transforms(pre)(case_dict(info.cases[0]))
    >>> sample["image"].shape, sample["label"].dtype
    (torch.Size([1, 96, 96]), torch.int64)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    RandAffined,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
    SpatialResample,
)

from fusionseg.data.datasets import Case
from fusionseg.data.io import write_label, write_probabilities
from fusionseg.data.labels import LabelLayout, regions_to_labels
from fusionseg.data.normalization import normalise
from fusionseg.data.plan import build_preprocessing
from fusionseg.data.preprocessing import Preprocessing
from fusionseg.data.validation import find_input_error, load_checked
from fusionseg.errors import InputError

__all__ = [
    "LoadCased",
    "NormalizeChannelsd",
    "RandFlipAxesd",
    "ToPlainTensord",
    "augmentation",
    "build_preprocessing",
    "case_dict",
    "eval_transforms",
    "geometry_pipeline",
    "input_grid_mapping",
    "load_for_inference",
    "plain_tensor",
    "resample_to_input_grid",
    "save_prediction",
    "save_probabilities",
    "write_input_grid_labels",
    "write_input_grid_probabilities",
]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_INDICES = "_class_indices"


def case_dict(case: Case) -> dict:
    """Input dict of the transforms: ``{"image": [str, ...], "label": str, "case_id": str}`` (no label key if None)."""
    d = {"image": [str(p) for p in case.images], "case_id": case.case_id}
    if case.label is not None:
        d["label"] = str(case.label)
    return d


# ------------------------------------------------------------------------------------------ transforms


class LoadCased(MapTransform):
    """Read ``d["image"]`` (channel files) and ``d["label"]`` with every input check, as MetaTensors.

    Raises :class:`InputError` for missing/corrupt/empty files, NaN/Inf, wrong channel count,
    image/label shape or geometry mismatch, and label values outside the classes of ``pre``.
    With ``keep_reader_meta`` the reader's meta (header, original geometry) is stored in
    ``d["image_meta"]`` (for :func:`save_prediction`; not collatable).
    """

    def __init__(self, pre: Preprocessing, keep_reader_meta: bool = False) -> None:
        super().__init__(keys=("image", "label"), allow_missing_keys=True)
        self.pre = pre
        self.keep_reader_meta = keep_reader_meta

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image, meta, label, _ = load_checked(d["image"], d.get("label"), self.pre)
        affine = torch.tensor(np.asarray(meta["affine"]), dtype=torch.float64)  # a copy: transforms edit it in place
        d["image"] = MetaTensor(torch.from_numpy(image), affine=affine, meta={"source_file": str(d["image"][0])})
        if label is not None:
            d["label"] = MetaTensor(torch.from_numpy(label.astype(np.float32))[None], affine=affine.clone())
        if self.keep_reader_meta:
            d["image_meta"] = meta
        return d


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation from ``pre.channel_normalisation`` (see
    :func:`fusionseg.data.normalization.normalise`); MetaTensor metadata is kept."""

    def __init__(self, pre: Preprocessing, key: str = "image") -> None:
        super().__init__(keys=(key,))
        self.specs = pre.channel_normalisation

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            try:
                out = normalise(img, self.specs)
            except InputError as err:
                source = img.meta.get("source_file") if isinstance(img, MetaTensor) else None
                raise InputError(f"{source}: {err}" if source else str(err)) from None
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = out
        return d


def plain_tensor(x) -> torch.Tensor:
    """``x`` (a MONAI ``MetaTensor``, a tensor or an array) as a plain ``torch.Tensor``, metadata dropped, no copy."""
    return torch.as_tensor(x).as_subclass(torch.Tensor)


class ToPlainTensord(MapTransform):
    """Drop MONAI metadata: ``image`` → contiguous float32 tensor, ``label`` → ``label_dtype`` tensor.

    Used mid-pipeline too (``label_dtype=torch.float32``): later random transforms run faster on plain tensors.
    """

    def __init__(self, label_dtype: torch.dtype = torch.int64) -> None:
        super().__init__(keys=("image", "label"), allow_missing_keys=True)
        self.label_dtype = label_dtype

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        if "image" in d:
            d["image"] = plain_tensor(d["image"]).float().contiguous()
        if "label" in d:
            label = plain_tensor(d["label"])
            if not self.label_dtype.is_floating_point and label.is_floating_point():
                label = label.round()
            d["label"] = label.to(self.label_dtype).contiguous()
        return d


class RandFlipAxesd(RandomizableTransform, MapTransform):
    """Flip every spatial axis with probability ``prob`` (same axes for all keys), in one copy.

    Equivalent to one ``RandFlipd`` per axis, without MONAI's per-call metadata overhead; CPU
    tensors are flipped through NumPy (a strided copy, ~50× faster than ``torch.flip`` here).
    """

    def __init__(self, keys: tuple[str, ...], spatial_dims: int, prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.spatial_dims = spatial_dims
        self.flip_prob = prob
        self._axes: list[int] = []

    def randomize(self, data: object = None) -> None:
        self._axes = [1 + a for a in range(self.spatial_dims) if self.R.rand() < self.flip_prob]

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        self.randomize()
        if self._axes:
            for key in self.key_iterator(d):
                d[key] = _flip(torch.as_tensor(d[key]).as_subclass(torch.Tensor), self._axes)
        return d


def _flip(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    if x.device.type != "cpu" or x.requires_grad:
        return torch.flip(x, axes)
    return torch.from_numpy(np.ascontiguousarray(np.flip(x.numpy(), tuple(axes))))


class _Pipeline(Compose):
    """MONAI Compose that re-raises an InputError from any step as itself (not as RuntimeError)."""

    # MONAI's Compose.__call__(input_, ...) itself does not match Transform.__call__(data): no signature fits both
    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as exc:
            err = find_input_error(exc)
            if err is not None:
                raise err from None
            raise


class _WithoutMetadata(Compose):
    """Run random patch transforms on plain tensors (MONAI metadata tracking off, restored after).

    Training patches carry no geometry that is used later, and tracking it (a MetaTensor per operation,
    copies of its metadata) about doubles the augmentation time of a 2D patch.
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]  # as _Pipeline
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(previous)


def _geometry_steps(pre: Preprocessing, keys: tuple[str, ...]) -> list[MapTransform]:
    steps: list[MapTransform] = []
    if pre.orientation and pre.spatial_dims == 3:
        steps.append(Orientationd(keys=keys, axcodes=pre.orientation, labels=_RAS_LABELS, allow_missing_keys=True))
    if pre.target_spacing:
        modes = ("bilinear", "nearest")[: len(keys)]
        spacing = list(pre.target_spacing)
        steps.append(Spacingd(keys=keys, pixdim=spacing, mode=modes, dtype=np.float32, allow_missing_keys=True))
    return steps


def _augment_steps(pre: Preprocessing) -> list:
    dims = pre.spatial_dims
    keys = ("image", "label")
    angle = math.pi / 12  # ±15°
    steps: list = [
        RandFlipAxesd(keys, dims, prob=0.5),
        RandAffined(
            keys=keys,
            prob=0.2,
            rotate_range=[angle] * (1 if dims == 2 else 3),
            scale_range=[0.1] * dims,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.2),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.2),
        RandGaussianNoised(keys="image", prob=0.15, std=0.1),
    ]
    return steps


def geometry_pipeline(pre: Preprocessing, with_label: bool = True) -> Compose:
    """Load + check + reorient + resample (no normalisation): ``{"image": MetaTensor (C, *S), "label": (1, *S)}``."""
    keys = ("image", "label") if with_label else ("image",)
    return _Pipeline([LoadCased(pre), *_geometry_steps(pre, keys)])


def augmentation(pre: Preprocessing) -> Compose:
    """The random augmentation of training patches ``{"image": (C, *P), "label": (1, *P) float32}`` → plain
    tensors (label int64), run without MONAI metadata."""
    return _WithoutMetadata([*_augment_steps(pre), ToPlainTensord()])


def eval_transforms(pre: Preprocessing) -> Compose:
    """Whole-image pipeline (no cropping): ``{"image": (C, *S) float32, "label": (1, *S) int64}`` (label optional)."""
    keys = ("image", "label")
    return _Pipeline([LoadCased(pre), *_geometry_steps(pre, keys), NormalizeChannelsd(pre), ToPlainTensord()])


# ------------------------------------------------------------------------------------------ inference


def input_grid_mapping(meta: dict) -> np.ndarray | None:
    """(D+1, D+1) map from input-grid voxels to preprocessed voxels (what resampling back uses); None when
    the two grids are the same (:func:`save_prediction` then writes the preprocessed grid as is)."""
    src, dst = np.asarray(meta["affine"]), np.asarray(meta["original_affine"])
    same = (
        tuple(meta["processed_shape"]) == tuple(meta["original_shape"])
        and src.shape == dst.shape
        and np.allclose(src, dst, atol=1e-5)
    )
    return None if same else np.linalg.inv(src) @ dst


def resample_to_input_grid(
    scores: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray, shape: Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resample (K, *S) ``scores`` with voxel→world ``src_affine`` onto the grid ``dst_affine``/``shape``
    exactly as :func:`save_prediction` does (MONAI ``SpatialResample``, border padding), e.g. for one slab."""
    img = MetaTensor(scores, affine=torch.as_tensor(src_affine, dtype=torch.float64))
    resample = SpatialResample(
        mode=mode,
        padding_mode="border",
        dtype=torch.float32,  # type: ignore[arg-type, unused-ignore]  # some MONAI versions hint no torch dtypes
    )
    out = resample(
        img, dst_affine=torch.as_tensor(dst_affine, dtype=torch.float64), spatial_size=[int(s) for s in shape]
    )
    return out.as_subclass(torch.Tensor)


def load_for_inference(images: Sequence[str | Path] | str | Path, pre: Preprocessing) -> tuple[torch.Tensor, dict]:
    """Read and preprocess one image (one file per channel) → ``(float32 tensor (C, *S), meta)``.

    ``meta`` carries what :func:`save_prediction` needs to write a result on the input's grid.
    """
    if isinstance(images, (str, Path)):
        images = [images]
    pipeline = _Pipeline(
        [LoadCased(pre, keep_reader_meta=True), *_geometry_steps(pre, ("image",)), NormalizeChannelsd(pre)]
    )
    d = pipeline({"image": [str(p) for p in images]})
    image = d["image"]
    reader_meta = d["image_meta"]
    dims, layout = pre.spatial_dims, pre.label_layout
    meta = {
        "preprocessing": pre,  # the settings the result is written with (regions, 0/255 masks, original labels)
        "affine": np.asarray(image.affine, dtype=np.float64),
        "processed_shape": tuple(image.shape[1:]),
        "original_affine": np.asarray(reader_meta["affine"], dtype=np.float64),
        "original_shape": tuple(reader_meta["spatial_shape"][:dims]),
        "reference": {**reader_meta, "num_classes": pre.num_classes, "class_names": _class_names(layout)},
        "paths": [str(p) for p in images],
    }
    return image.as_subclass(torch.Tensor).float().contiguous(), meta


def settings_of(meta: dict) -> Preprocessing:
    """The preprocessing an image of :func:`load_for_inference` was read with (its ``meta["preprocessing"]``)."""
    return meta["preprocessing"]


def regions_class_order(meta: dict) -> list[int] | None:
    """The label values regions are painted in (None for class labels): argmax when None."""
    layout = settings_of(meta).label_layout
    return list(layout.regions_class_order) if layout.has_regions and layout.regions_class_order else None


def _class_names(layout: LabelLayout) -> dict[str, str]:
    """``{"1": "tumour", ...}``: class (or region) names for writers that store them (DICOM SEG)."""
    if layout.regions is not None:
        order = layout.regions_class_order or range(1, len(layout.regions) + 1)
        return {str(v): str(n) for v, n in zip(order, layout.region_names or [])}
    return {str(k): str(v) for k, v in layout.names.items()}


def _to_input_grid(pred: torch.Tensor, meta: dict, mode: str) -> torch.Tensor:
    """Resample (K, *S) ``pred`` from the processed grid back to the input grid (no-op when equal)."""
    dims = settings_of(meta).spatial_dims
    src, dst = np.asarray(meta["affine"]), np.asarray(meta["original_affine"])
    same = (
        tuple(pred.shape[1:]) == tuple(meta["original_shape"])
        and src.shape == dst.shape
        and np.allclose(src, dst, atol=1e-5)
    )
    if same:
        return pred
    return resample_to_input_grid(pred, src, dst, meta["original_shape"][:dims], mode)


def _as_tensor(prediction: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(prediction) if isinstance(prediction, np.ndarray) else prediction).detach().cpu()


def _on_reference_shape(array: np.ndarray, reference: dict, channels: bool) -> np.ndarray:
    """Reshape to the reader's spatial shape (e.g. a 2D slice read from a (X, Y, 1) NIfTI)."""
    shape = tuple(reference["spatial_shape"])
    if tuple(array.shape[1:] if channels else array.shape) == shape:
        return array
    return array.reshape((array.shape[0], *shape) if channels else shape)


def save_prediction(prediction: np.ndarray | torch.Tensor, meta: dict, out_path: str | Path) -> Path:
    """Write a label map (*S) or class/region scores (K, *S) on the input's grid to ``out_path``.

    Scores are resampled (linear) to the input grid first, then turned into labels: softmax
    probabilities or logits by argmax; for region-based models (``meta["preprocessing"]``, set by
    :func:`load_for_inference`) sigmoid **probabilities** are thresholded at 0.5 and painted in their
    ``regions_class_order`` (:func:`~fusionseg.data.labels.regions_to_labels`). Label maps are
    resampled with nearest neighbour. The format follows ``out_path`` (any label format of
    :mod:`fusionseg.data.formats`; :func:`~fusionseg.data.formats.prediction_extension` picks the
    input's own); the input's geometry is kept; binary 2D masks are written as 0/255.
    """
    pred = _as_tensor(prediction)
    dims = settings_of(meta).spatial_dims
    if pred.ndim == dims + 1:
        probs = _to_input_grid(pred.float(), meta, "bilinear")
        order = regions_class_order(meta)
        label = regions_to_labels(probs, order) if order else probs.argmax(0)
    elif pred.ndim == dims:
        label = _to_input_grid(pred[None].float(), meta, "nearest")[0].round()
    else:
        raise ValueError(
            f"prediction must be (*S) labels or (K, *S) scores for {dims}D data, got shape {tuple(pred.shape)}"
        )
    reference = dict(meta["reference"])
    label_np = _on_reference_shape(label.to(torch.int64).numpy(), reference, channels=False)
    return write_label(label_np, reference, out_path, binary_as_255=settings_of(meta).binary_as_255)


def write_input_grid_labels(label_map: np.ndarray, meta: dict, out_path: str | Path) -> Path:
    """Write a label map already on the input grid (``meta["original_shape"]``, e.g. assembled slab by slab)."""
    reference = dict(meta["reference"])
    label_np = _on_reference_shape(np.asarray(label_map), reference, channels=False)
    return write_label(label_np, reference, out_path, binary_as_255=settings_of(meta).binary_as_255)


def write_input_grid_probabilities(probabilities: np.ndarray, meta: dict, out_path: str | Path) -> Path:
    """Write probabilities (K, *S) already on the input grid (a float32 memmap is written without a copy)."""
    reference = dict(meta["reference"])
    return write_probabilities(_on_reference_shape(probabilities, reference, channels=True), reference, out_path)


def save_probabilities(probabilities: np.ndarray | torch.Tensor, meta: dict, out_path: str | Path) -> Path:
    """Write class (softmax) or region (sigmoid) probabilities (K, *S) on the input's grid to ``out_path``.

    ``probabilities`` live on the preprocessed grid (from :func:`load_for_inference`); they are
    resampled linearly to the input grid (softmax columns keep summing to 1) and written as float32
    with the input's geometry: NIfTI (X, Y, Z, K), NRRD, MetaImage vector pixels, or ``.npz`` for 2D
    raster inputs (:func:`~fusionseg.data.formats.probability_extension` picks the extension).
    The label map of the same input equals ``LabelLayout.to_label_map`` of what is written here.
    """
    probs = _as_tensor(probabilities).float()
    dims = settings_of(meta).spatial_dims
    if probs.ndim != dims + 1:
        raise ValueError(f"probabilities must be (K, *S) for {dims}D data, got shape {tuple(probs.shape)}")
    probs = _to_input_grid(probs, meta, "bilinear")
    reference = dict(meta["reference"])
    array = _on_reference_shape(probs.numpy().astype(np.float32), reference, channels=True)
    return write_probabilities(array, reference, out_path)
