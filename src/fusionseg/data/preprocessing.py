"""The preprocessing of a training run as one frozen object: what :func:`~fusionseg.data.plan.plan_dataset`
decides, what train, predict, evaluate and export read, and what checkpoints, ``plans.json`` and MONAI
bundles store.

:class:`Preprocessing` holds each setting once (the patch size, the target spacing, the label layout as a
:class:`~fusionseg.data.labels.LabelLayout`, one :class:`ChannelNormalisation` per channel). A checkpoint
imported from nnU-Net carries an :class:`NnunetPreprocessing` instead (kind ``"nnunet"``: nnU-Net's plans
predict). Both answer ``kind``, ``spatial_dims``, ``in_channels``, ``num_classes`` and ``patch_size``.

``to_dict()`` is the JSON-able dict stored on disk; ``from_dict(d).to_dict() == d``, entries in the same
order, for every dict this fusionseg writes (checkpoint bytes and plan hashes follow).
:func:`preprocessing_from_dict` reads every dict fusionseg wrote: settings an older fusionseg did not
record take the value they had then (no regions or ignore label, no normalisation mask, one patch per
case, patch centres by :func:`foreground_fraction`), and a hand-written dict needs only
``spatial_dims``, ``in_channels`` and ``num_classes`` (or ``labels``). Unknown entries, wrong types and
derived entries that contradict the rest (``out_channels``, ``activation``, ``normalisation``) are an
:class:`~fusionseg.errors.InputError` naming the entry.

Example:
    >>> pre = preprocessing_from_dict(load_checkpoint("run/best.pt")["preprocessing"])
    >>> pre.spatial_dims, pre.patch_size, pre.label_layout.activation
    (3, (128, 128, 96), 'softmax')
    >>> dataclasses.replace(pre, patch_size=(96, 96, 96)).to_dict()["patch_size"]
    [96, 96, 96]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fusionseg.data.labels import LabelLayout
from fusionseg.data.normalization import ChannelNormalisation
from fusionseg.errors import InputError

__all__ = [
    "AnyPreprocessing",
    "ChannelNormalisation",  # from fusionseg.data.normalization
    "NnunetPreprocessing",
    "Preprocessing",
    "foreground_fraction",
    "own_preprocessing",
    "preprocessing_from_dict",
]

_LABEL_KEYS = ("labels", "num_classes", "out_channels", "activation", "regions", "region_names",
               "regions_class_order", "ignore_label")  # fmt: skip
# Every entry of the stored dict, in the order fusionseg writes them (``original_labels`` only when set).
_KEYS = ("version", "layout", "spatial_dims", "in_channels", *_LABEL_KEYS, "channel_names", "modality",
         "normalisation", "channel_normalisation", "use_mask_for_norm", "median_relative_size_after_cropping",
         "orientation", "target_spacing", "patch_size", "num_samples", "foreground_fraction", "median_shape",
         "median_spacing", "binary_as_255", "original_labels")  # fmt: skip
_NNUNET_KEYS = ("kind", "trainer", "configuration", "plans", "dataset_json", "mirror_axes", "in_channels",
                "num_classes", "spatial_dims", "patch_size")  # fmt: skip


def foreground_fraction(num_classes: int) -> float:
    """Share of training patches centred on a foreground voxel: 1 − 1/``num_classes`` (rounded to 6 digits).

    Each label value, background included, is then as likely a patch centre as with MONAI's
    ``RandCropByLabelClassesd``: 0.5 for one foreground class, 0.75 for three.

    >>> foreground_fraction(3)
    0.666667
    """
    return round(1 - 1 / num_classes, 6)


# ------------------------------------------------------------------------------------- value checks


def _shown(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(key: str, value: object, expected: str) -> InputError:
    return InputError(f"preprocessing.{key} is {_shown(value)}, expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(d: Mapping, key: str, minimum: int = 1) -> int:
    value = d[key]
    if not (_is_int(value) and value >= minimum):
        raise _bad(key, value, "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}")
    return int(value)


def _sizes(d: Mapping, key: str, example: str) -> tuple[int, ...] | None:
    value = d.get(key)
    if value is None:
        return None
    if not (isinstance(value, list | tuple) and value and all(_is_int(v) and v > 0 for v in value)):
        raise _bad(key, value, f"positive integers like {example}")
    return tuple(int(v) for v in value)


def _numbers(d: Mapping, key: str, positive: bool = False) -> tuple[float, ...] | None:
    value = d.get(key)
    if value is None:
        return None
    if not (isinstance(value, list | tuple) and value and all(_is_number(v) and (v > 0 or not positive)
                                                               for v in value)):  # fmt: skip
        raise _bad(key, value, "positive numbers (mm per axis)" if positive else "a list of numbers")
    return tuple(float(v) for v in value)


def _optional(d: Mapping, key: str, kind: type, expected: str) -> Any:
    value = d.get(key)
    if value is not None and not isinstance(value, kind):
        raise _bad(key, value, expected)
    return value


# ------------------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """Every preprocessing setting of a fusionseg run (see :func:`~fusionseg.data.plan.plan_dataset`).

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: image channels (one file each, or the channels of one file).
        label_layout: classes, regions, ignore label (network outputs and activation follow from it).
        channel_normalisation: one :class:`ChannelNormalisation` per channel.
        foreground_fraction: share of training patches centred on foreground (:func:`foreground_fraction`).
        version: the format version of the stored dict (2; 1 for the oldest checkpoints).
        dataset_layout: how the dataset was stored (``"nnunet"`` or ``"folders"``), None if unknown.
        channel_names, modality: from dataset.json (``modality``: ``"CT"``, ``"MRI"``, ``"other"``, ``"2d"``).
        use_mask_for_norm: z-score channels are normalised inside the non-zero mask (nnU-Net's rule).
        median_relative_size_after_cropping: what decided ``use_mask_for_norm`` (None: not measured).
        orientation: ``"RAS"`` (3D) or None (images keep their axes).
        target_spacing: mm per axis (RAS order), None to keep each image's grid.
        patch_size: training patch (and prediction window), None: the whole image.
        num_samples: patches cut per case and pass.
        median_shape, median_spacing: of the training images (RAS order), None when not measured.
        binary_as_255: write binary 2D masks as 0/255.
        original_labels: the dataset's original value of each class (after ``fusionseg relabel``), or None.
    """

    kind: ClassVar[str] = "fusionseg"

    spatial_dims: int
    in_channels: int
    label_layout: LabelLayout
    channel_normalisation: tuple[ChannelNormalisation, ...]
    foreground_fraction: float
    version: int = 2
    dataset_layout: str | None = None
    channel_names: tuple[str, ...] = ()
    modality: str | None = None
    use_mask_for_norm: bool = False
    median_relative_size_after_cropping: float | None = None
    orientation: str | None = None
    target_spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    num_samples: int = 1
    median_shape: tuple[float, ...] | None = None
    median_spacing: tuple[float, ...] | None = None
    binary_as_255: bool = False
    original_labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if len(self.channel_normalisation) != self.in_channels:
            raise ValueError(
                f"{len(self.channel_normalisation)} channel normalisations for in_channels={self.in_channels}; "
                "give one per channel"
            )
        for name in ("target_spacing", "patch_size"):
            value = getattr(self, name)
            if value is not None and len(value) != self.spatial_dims:
                raise ValueError(f"{name} {list(value)} needs {self.spatial_dims} values (one per spatial axis)")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must lie in [0, 1], got {self.foreground_fraction}")

    # ------------------------------------------------------------------------------ derived settings

    @property
    def num_classes(self) -> int:
        """Label values of the maps (background included, ignore excluded)."""
        return self.label_layout.num_classes

    @property
    def out_channels(self) -> int:
        """Network outputs: one per region (sigmoid), else one per class (softmax)."""
        return self.label_layout.out_channels

    @property
    def activation(self) -> str:
        """``"sigmoid"`` for regions, else ``"softmax"``."""
        return self.label_layout.activation

    @property
    def normalisation(self) -> str:
        """Summary of the channels' schemes: ``"ct"`` if any channel is CT, else the first channel's."""
        schemes = [c.scheme for c in self.channel_normalisation]
        return "ct" if "ct" in schemes else schemes[0]

    # ------------------------------------------------------------------------------ (de)serialise

    def to_dict(self) -> dict:
        """The JSON-able dict stored in checkpoints, plans.json and bundles (keys in the order written)."""
        out = {
            "version": self.version,
            "layout": self.dataset_layout,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            **self.label_layout.to_preprocessing(),
            "channel_names": list(self.channel_names),
            "modality": self.modality,
            "normalisation": self.normalisation,
            "channel_normalisation": [c.to_dict() for c in self.channel_normalisation],
            "use_mask_for_norm": self.use_mask_for_norm,
            "median_relative_size_after_cropping": self.median_relative_size_after_cropping,
            "orientation": self.orientation,
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            "patch_size": None if self.patch_size is None else list(self.patch_size),
            "num_samples": self.num_samples,
            "foreground_fraction": self.foreground_fraction,
            "median_shape": None if self.median_shape is None else list(self.median_shape),
            "median_spacing": None if self.median_spacing is None else list(self.median_spacing),
            "binary_as_255": self.binary_as_255,
        }
        if self.original_labels:
            out["original_labels"] = list(self.original_labels)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Preprocessing:
        """The preprocessing of a stored dict (see the module docstring); InputError naming a bad entry."""
        if not isinstance(d, Mapping):
            raise InputError(f"preprocessing is {_shown(d)}, expected a mapping")
        unknown = [str(k) for k in d if k not in _KEYS]
        if unknown:
            raise InputError(
                f"preprocessing has unknown entries {', '.join(sorted(unknown))} (a newer fusionseg's, or a typo); "
                "write it with this fusionseg or remove them"
            )
        for key in ("spatial_dims", "in_channels"):
            if key not in d:
                raise InputError(f"preprocessing.{key} is missing; every preprocessing needs it")
        if "labels" not in d and "num_classes" not in d:
            raise InputError("preprocessing.num_classes is missing (and there are no labels); give one of them")
        spatial_dims, in_channels = _count(d, "spatial_dims"), _count(d, "in_channels")
        if spatial_dims not in (2, 3):
            raise _bad("spatial_dims", spatial_dims, "2 or 3")
        layout = _label_layout(d)
        channels = d.get("channel_normalisation")
        if channels is None:
            norms = tuple(ChannelNormalisation("zscore") for _ in range(in_channels))
        elif isinstance(channels, list | tuple):
            norms = tuple(ChannelNormalisation.from_dict(c, f"preprocessing.channel_normalisation[{i}]")
                          for i, c in enumerate(channels))  # fmt: skip
        else:
            raise _bad("channel_normalisation", channels, "a list with one mapping per channel")
        names = d.get("channel_names") or ()
        if not (isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)):
            raise _bad("channel_names", names, "a list of names")
        fraction = d.get("foreground_fraction")
        if fraction is None:
            fraction = foreground_fraction(layout.num_classes)
        elif not _is_number(fraction):
            raise _bad("foreground_fraction", fraction, "a number in [0, 1]")
        original = d.get("original_labels")
        if original is not None and not (isinstance(original, list | tuple) and all(map(_is_int, original))):
            raise _bad("original_labels", original, "a list of label values")
        settings: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            label_layout=layout,
            channel_normalisation=norms,
            foreground_fraction=float(fraction),
            version=_count(d, "version") if "version" in d else 2,
            dataset_layout=_optional(d, "layout", str, "a dataset layout name"),
            channel_names=tuple(names),
            modality=_optional(d, "modality", str, "a modality name"),
            use_mask_for_norm=bool(_optional(d, "use_mask_for_norm", bool, "true or false")),
            median_relative_size_after_cropping=_number_or_none(d, "median_relative_size_after_cropping"),
            orientation=_optional(d, "orientation", str, 'axis codes like "RAS"'),
            target_spacing=_numbers(d, "target_spacing", positive=True),
            patch_size=_sizes(d, "patch_size", "[96, 96]"),
            num_samples=_count(d, "num_samples") if d.get("num_samples") is not None else 1,
            median_shape=_numbers(d, "median_shape"),
            median_spacing=_numbers(d, "median_spacing"),
            binary_as_255=bool(_optional(d, "binary_as_255", bool, "true or false")),
            original_labels=None if not original else tuple(int(v) for v in original),
        )
        try:
            pre = cls(**settings)
        except ValueError as err:  # lengths that do not fit spatial_dims / in_channels
            raise InputError(f"preprocessing: {err}") from None
        _check_derived(d, pre)
        return pre


def _number_or_none(d: Mapping, key: str) -> float | None:
    value = d.get(key)
    if value is not None and not _is_number(value):
        raise _bad(key, value, "a number")
    return None if value is None else float(value)


def _label_layout(d: Mapping) -> LabelLayout:
    """The label entries of ``d`` as a :class:`LabelLayout` (older dicts: plain classes, no ignore label)."""
    labels = d.get("labels")
    if labels is not None and not (isinstance(labels, Mapping) and labels
                                   and all(str(k).isdigit() for k in labels)):  # fmt: skip
        raise _bad("labels", labels, 'a mapping like {"0": "background", "1": "tumour"}')
    if "num_classes" in d:
        num_classes = _count(d, "num_classes", minimum=1)
        if labels and len(labels) != num_classes:
            raise _bad("num_classes", num_classes, f"the {len(labels)} entries of labels")
    regions = d.get("regions")
    if regions is not None:
        if not (isinstance(regions, list | tuple) and all(isinstance(r, list | tuple) and r and all(map(_is_int, r))
                                                          for r in regions)):  # fmt: skip
            raise _bad("regions", regions, "lists of label values")
        order = d.get("regions_class_order")
        if not (isinstance(order, list | tuple) and len(order) == len(regions) and all(map(_is_int, order))):
            raise _bad("regions_class_order", order, f"{len(regions)} label values (one per region)")
        names = d.get("region_names")
        if names is not None and not (isinstance(names, list | tuple) and len(names) == len(regions)):
            raise _bad("region_names", names, f"{len(regions)} names (one per region)")
    ignore = d.get("ignore_label")
    if ignore is not None and not (_is_int(ignore) and ignore >= 0):
        raise _bad("ignore_label", ignore, "a label value or null")
    return LabelLayout.from_preprocessing(d)


def _check_derived(d: Mapping, pre: Preprocessing) -> None:
    """Stored entries that follow from the others must agree with them."""
    for key in ("out_channels", "activation", "normalisation"):
        if d.get(key) is not None and d[key] != getattr(pre, key):
            raise _bad(key, d[key], f"{getattr(pre, key)!r} (what the labels and channels imply)")


# ------------------------------------------------------------------------------------- nnU-Net


@dataclass(frozen=True)
class NnunetPreprocessing:
    """The preprocessing of a checkpoint imported from nnU-Net (:mod:`fusionseg.nnunet.importer`): nnU-Net's
    own plans, configuration and dataset.json predict (:mod:`fusionseg.nnunet.predict`).

    ``plans`` and ``dataset_json`` are nnU-Net's dicts as nnU-Net wrote them (read by its ``PlansManager``).
    """

    kind: ClassVar[str] = "nnunet"

    trainer: str
    configuration: str
    plans: Mapping[str, Any]
    dataset_json: Mapping[str, Any]
    mirror_axes: tuple[int, ...] | None
    in_channels: int
    num_classes: int
    spatial_dims: int
    patch_size: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "trainer": self.trainer,
            "configuration": self.configuration,
            "plans": self.plans,
            "dataset_json": self.dataset_json,
            "mirror_axes": None if self.mirror_axes is None else list(self.mirror_axes),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "spatial_dims": self.spatial_dims,
            "patch_size": list(self.patch_size),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> NnunetPreprocessing:
        if set(d) != set(_NNUNET_KEYS):
            differ = sorted(set(map(str, d)) ^ set(_NNUNET_KEYS))
            raise InputError(f'preprocessing of kind "nnunet" has missing or unknown entries {", ".join(differ)}; '
                             "import the nnU-Net checkpoint again")  # fmt: skip
        for key in ("trainer", "configuration"):
            if not isinstance(d[key], str):
                raise _bad(key, d[key], "a name")
        for key in ("plans", "dataset_json"):
            if not isinstance(d[key], Mapping):
                raise _bad(key, d[key], "nnU-Net's mapping")
        mirror = d["mirror_axes"]
        if mirror is not None and not (isinstance(mirror, list | tuple) and all(map(_is_int, mirror))):
            raise _bad("mirror_axes", mirror, "axis numbers or null")
        patch = _sizes(d, "patch_size", "[128, 128, 128]")
        if patch is None:
            raise _bad("patch_size", None, "positive integers like [128, 128, 128]")
        return cls(
            trainer=d["trainer"],
            configuration=d["configuration"],
            plans=d["plans"],
            dataset_json=d["dataset_json"],
            mirror_axes=None if mirror is None else tuple(int(a) for a in mirror),
            in_channels=_count(d, "in_channels"),
            num_classes=_count(d, "num_classes"),
            spatial_dims=_count(d, "spatial_dims"),
            patch_size=patch,
        )


AnyPreprocessing = Preprocessing | NnunetPreprocessing


def preprocessing_from_dict(d: object) -> AnyPreprocessing:
    """The preprocessing stored as ``d`` (a checkpoint's ``"preprocessing"``, plans.json's, a JSON file):
    :class:`NnunetPreprocessing` for ``"kind": "nnunet"``, else :class:`Preprocessing`."""
    if not isinstance(d, Mapping):
        raise InputError(f"preprocessing is {_shown(d)}, expected a mapping")
    kind = d.get("kind")
    if kind == NnunetPreprocessing.kind:
        return NnunetPreprocessing.from_dict(d)
    if kind is not None:
        raise _bad("kind", kind, '"nnunet" or no kind (fusionseg\'s own preprocessing)')
    return Preprocessing.from_dict(d)


def own_preprocessing(pre: AnyPreprocessing, source: object = "the checkpoint") -> Preprocessing:
    """``pre`` when it is fusionseg's own; InputError naming ``source`` when it is another framework's."""
    if not isinstance(pre, Preprocessing):
        raise InputError(
            f"{source} carries a preprocessing of kind {pre.kind!r} (imported); this step needs a checkpoint "
            "written by `fusionseg train`"
        )
    return pre
