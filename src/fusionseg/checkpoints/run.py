"""``fusionseg import-weights`` as one call: official weights or an nnU-Net checkpoint → a fusionseg checkpoint.

:func:`run_import_weights` takes the command's options (:class:`ImportOptions`), refuses outputs it must
not replace, and imports: with a ``model``, official weights into that registered model with the
preprocessing of a JSON file or a dataset folder (:func:`fusionseg.checkpoints.importers.import_weights`);
without, the checkpoint of another framework that carries network, plans and preprocessing itself (the
importer registered for ``"nnunet"``). It prints the load report and returns the exit status.

Example:
    >>> run_import_weights(ImportOptions(weights=Path("DNet.pth"), output=Path("dnet.pt"), model="dnet"))
    loaded 312 of 312 tensors
    wrote dnet.pt (model dnet, 31,502,308 parameters)
    0
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusionseg.errors import InputError

if TYPE_CHECKING:
    from fusionseg.data.preprocessing import AnyPreprocessing

__all__ = ["ImportOptions", "check_replaceable", "run_import_weights"]

# Options that override the model's own defaults (``model_kwargs`` holds the rest).
_MODEL_OPTIONS = ("in_channels", "out_channels", "spatial_dims", "deep_supervision")


@dataclass(frozen=True)
class ImportOptions:
    """The options of ``fusionseg import-weights`` (docs/cli.md), named as its parser's destinations.

    ``model``: a registered model, or None for an nnU-Net v2 ``checkpoint_final.pth``. ``preprocessing``:
    a JSON file to embed; ``data``: a dataset folder whose planned preprocessing (with ``patch_size``) is
    embedded instead.
    """

    weights: Path
    output: Path
    model: str | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    spatial_dims: int | None = None
    deep_supervision: bool | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Path | None = None
    data: Path | None = None
    patch_size: Sequence[int] | None = None
    strict: bool = True


def run_import_weights(options: ImportOptions) -> int:
    """Write the checkpoint ``options`` describe and print the load report → exit status 0."""
    from fusionseg.checkpoints.importers import import_weights, importer_for

    o = options
    if os.path.realpath(o.output) == os.path.realpath(o.weights):
        raise InputError(f"--output {o.output} would replace --weights {o.weights}; choose another output file")
    if o.output.is_dir():
        example = o.output / "best.pt"
        raise InputError(f"--output {o.output} is a folder; pass the checkpoint file to write, e.g. {example}")
    check_replaceable(o.output)
    if o.model is None:  # an nnU-Net v2 checkpoint_final.pth carries network, plans and preprocessing itself
        import_nnunet = importer_for("nnunet")
        if import_nnunet is None:
            raise InputError("--model is required: fusionseg's nnU-Net integration is not loaded (import fusionseg)")
        path, report, model_config = import_nnunet(o.weights, o.output, strict=o.strict)
        print(report.summary())
        where = f"wrote {path} (model {model_config['name']}, nnU-Net preprocessing)"
        print(f"{where}: fusionseg predict --checkpoint {path}")
        return 0
    kwargs = dict(o.model_kwargs)
    kwargs.update({key: getattr(o, key) for key in _MODEL_OPTIONS if getattr(o, key) is not None})
    model, report = import_weights(o.model, o.weights, o.output, kwargs, _preprocessing(o), strict=o.strict)
    print(report.summary())
    print(f"wrote {o.output} (model {o.model}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def _preprocessing(o: ImportOptions) -> AnyPreprocessing | None:
    """The preprocessing to embed: the JSON file of ``--preprocessing``, that planned for ``--data``, or None."""
    from fusionseg.data.preprocessing import preprocessing_from_dict
    from fusionseg.files import ensure_file

    preprocessing: AnyPreprocessing | None = None
    if o.preprocessing is not None:
        try:
            stored = json.loads(ensure_file(o.preprocessing, "preprocessing file").read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"preprocessing file {o.preprocessing} is not valid JSON ({err.msg})") from None
        except (RecursionError, UnicodeDecodeError):
            raise InputError(f"preprocessing file {o.preprocessing} is not a plain UTF-8 JSON object") from None
        try:
            preprocessing = preprocessing_from_dict(stored)
        except InputError as err:
            raise InputError(f"preprocessing file {o.preprocessing}: {err}") from None
    if o.data is not None:
        from fusionseg.data import build_preprocessing, scan_dataset

        patch = list(o.patch_size) if o.patch_size else None
        preprocessing = build_preprocessing(scan_dataset(o.data), patch_size=patch)
    return preprocessing


def check_replaceable(output: Path) -> None:
    """:class:`InputError` when ``output`` exists and is not a checkpoint import-weights wrote (a trained
    checkpoint, dataset.json, ...): import-weights replaces only its own output."""
    from fusionseg.checkpoints.checkpoint import load_checkpoint

    if not output.is_file():
        return
    try:
        imported = "imported_from" in (load_checkpoint(output).get("train_args") or {})
    except (InputError, AttributeError, TypeError):
        imported = False
    if not imported:
        raise InputError(
            f"--output {output} exists and was not written by import-weights (a trained checkpoint or another "
            "file); choose a new file name"
        )
