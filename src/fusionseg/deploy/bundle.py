"""Export a fusionseg checkpoint as a MONAI bundle that ``python -m monai.bundle run`` executes without fusionseg.

``fusionseg export --format bundle --checkpoint RUN/best.pt --output DIR`` writes::

    DIR/configs/metadata.json    MONAI metadata (versions, required packages, network_data_format, label names)
    DIR/configs/inference.json   MONAI's LoadImaged / Orientationd / Spacingd, the run's normalisation,
                                 SlidingWindowInferer over softmax/sigmoid probabilities, Invertd back to
                                 the input grid, argmax, and the writer of ``predict``'s file names
    DIR/configs/logging.conf     MONAI's usual logging set-up
    DIR/models/model.ts          TorchScript of the network (traced at the window size)
    DIR/scripts/                 what MONAI lacks (a copy of ``fusionseg.deploy.bundle_components``)
    DIR/docs/README.md           data, the exact install line and the run command

Run with ``python -m monai.bundle run --config_file DIR/configs/inference.json --bundle_root DIR
--dataset_dir IMAGES --output_dir OUT`` in an environment with torch, MONAI and the packages of
``metadata.json``'s ``required_packages_version`` (:func:`install_line`). The folder appears only
once complete (written beside it, then renamed).

Example:
    >>> export_bundle("runs/x/best.pt", "bundles/x")   # {"path", "window", "max_abs_diff", "install"}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fusionseg.data.preprocessing import Preprocessing
from fusionseg.deploy import bundle_components
from fusionseg.errors import InputError
from fusionseg.nets.registry import model_attribute
from fusionseg.version import __version__

__all__ = [
    "METADATA_REQUIRED",
    "SCHEMA_URL",
    "check_metadata",
    "export_bundle",
    "inference_config",
    "install_line",
    "metadata",
    "required_packages",
]

_SCRIPTS = "scripts.bundle_components"  # the bundle's own package (MONAI adds the bundle folder to sys.path)

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
# Keys MONAI's metadata schema requires (checked offline by :func:`check_metadata`).
METADATA_REQUIRED = {
    "": (
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "changelog",
    ),
    "input": (
        "type",
        "format",
        "modality",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "channel_def",
    ),
}
METADATA_REQUIRED["output"] = tuple(k for k in METADATA_REQUIRED["input"] if k != "modality")


def _window(model: torch.nn.Module, pre: Preprocessing) -> list[int]:
    from fusionseg.inference.slab_inference import window_size

    patch = pre.patch_size
    if not patch:
        raise InputError("the checkpoint's preprocessing has no patch_size; the bundle's sliding window needs one")
    return [int(s) for s in window_size(list(patch), list(patch), model_attribute(model, "size_multiple"))]


def _output_channel_names(pre: Preprocessing) -> dict[str, str]:
    layout = pre.label_layout
    if layout.regions is not None:
        names = layout.region_names or [f"region {i}" for i in range(len(layout.regions))]
        return {str(i): str(n) for i, n in enumerate(names)}
    return {str(i): str(layout.names.get(i, f"class {i}")) for i in range(layout.out_channels)}


def metadata(pre: Preprocessing, name: str, model: torch.nn.Module, window: list[int]) -> dict[str, Any]:
    """``configs/metadata.json`` of the bundle of model ``name``: versions, ``network_data_format``, label names."""
    import monai
    import numpy as np

    shape_rule = [int(s) for s in window]  # the TorchScript is traced at the window size
    in_names = list(pre.channel_names) or [f"channel {i}" for i in range(model_attribute(model, "in_channels"))]
    out_names = _output_channel_names(pre)
    activation = pre.activation
    dims = model_attribute(model, "spatial_dims")
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by fusionseg {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": required_packages(pre),
        "name": f"fusionseg {name}",
        "task": f"{dims}D segmentation ({len(out_names)} {'regions' if pre.label_layout.has_regions else 'classes'})",
        "description": f"fusionseg {name} {dims}D segmentation network with the preprocessing of its training run",
        "authors": "exported with fusionseg",
        "copyright": "the owner of the training data and run",
        "data_source": "the training run's dataset",
        "data_type": pre.dataset_layout or "image files",
        "image_classes": ", ".join(f"channel {k}: {v}" for k, v in enumerate(in_names)),
        "label_classes": ", ".join(f"{k}: {v}" for k, v in pre.label_layout.names.items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in out_names.items()),
        "intended_use": "research only",
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": pre.modality or "unknown",
                    "num_channels": model_attribute(model, "in_channels"),
                    "spatial_shape": shape_rule,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): str(n) for i, n in enumerate(in_names)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": model_attribute(model, "out_channels"),
                    "spatial_shape": shape_rule,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": out_names,
                    "activation": activation,
                }
            },
        },
    }


def check_metadata(meta: dict) -> None:
    """``ValueError`` naming every key MONAI's metadata schema requires that ``meta`` lacks.

    MONAI's own ``verify_metadata`` downloads the schema; this check runs offline.
    """
    missing = [k for k in METADATA_REQUIRED[""] if k not in meta]
    fmt = meta.get("network_data_format", {})
    for side, required in (("inputs", METADATA_REQUIRED["input"]), ("outputs", METADATA_REQUIRED["output"])):
        entries = fmt.get(side) or {}
        if not entries:
            missing.append(f"network_data_format.{side}")
        for key, entry in entries.items():
            missing += [f"network_data_format.{side}.{key}.{k}" for k in required if k not in entry]
    if missing:
        raise ValueError(f"metadata lacks {', '.join(missing)}")


def _readers(dims: int) -> dict:
    """LoadImaged arguments: nibabel for 3D NIfTI, Pillow for 2D images read rows first (as fusionseg reads them)."""
    if dims == 3:
        return {"reader": "NibabelReader"}
    return {"reader": "PILReader", "reverse_indexing": False}


def inference_config(pre: Preprocessing, window: list[int], *, overlap: float = 0.5, sw_batch_size: int = 4) -> dict:
    """``configs/inference.json``: MONAI's transforms, sliding window and evaluator around ``models/model.ts``.

    Only MONAI and the bundle's ``scripts`` package are referenced (no fusionseg).
    """
    dims, layout = pre.spatial_dims, pre.label_layout
    steps: list[dict] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, **_readers(dims)},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if pre.orientation and dims == 3:
        steps.append({"_target_": "Orientationd", "keys": "image", "axcodes": pre.orientation})
    if pre.target_spacing:
        steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": [float(s) for s in pre.target_spacing],
                      "mode": "bilinear", "dtype": "$numpy.float32"})  # fmt: skip
    steps.append({"_target_": f"{_SCRIPTS}.NormalizeChannelsd", "keys": "image", "specs": "@channel_normalisation"})
    to_labels: dict[str, object]
    if layout.regions is not None:
        to_labels = {"_target_": f"{_SCRIPTS}.RegionsToLabelsd", "keys": "pred",
                     "regions_class_order": [int(v) for v in layout.regions_class_order or ()]}  # fmt: skip
    else:
        to_labels = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    return {
        "imports": ["$import numpy", "$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "output_dir": "$@bundle_root + '/eval'",
        "channel_normalisation": [s.to_dict() for s in pre.channel_normalisation],
        "datalist": {
            "_target_": f"{_SCRIPTS}.list_cases",
            "dataset_dir": "@dataset_dir",
            "in_channels": pre.in_channels,
        },
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location='cpu')",
        "network": "$@network_def.to(@device).eval()",
        "activation": pre.activation,
        "inference_network": {"_target_": f"{_SCRIPTS}.Activated", "network": "@network", "activation": "@activation"},
        "preprocessing": {"_target_": "Compose", "transforms": steps},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(window),
            "sw_batch_size": int(sw_batch_size),
            "overlap": float(overlap),
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                to_labels,
                {
                    "_target_": f"{_SCRIPTS}.SaveLabeld",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "binary_as_255": pre.binary_as_255,
                },
            ],
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@inference_network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def required_packages(pre: Preprocessing) -> dict[str, str]:
    """Packages (and their versions here) the bundle needs besides torch and MONAI: the install line's."""
    from importlib.metadata import version

    names = ["nibabel" if pre.spatial_dims == 3 else "pillow"]
    if any(s.scheme == "zscore" and s.use_mask for s in pre.channel_normalisation):
        names.append("scipy")
    names += ["pytorch-ignite", "fire"]  # MONAI's evaluator; `python -m monai.bundle`'s command line
    return {name: version(name) for name in names}


def install_line(pre: Preprocessing) -> str:
    """``pip install torch==... monai==... nibabel==... fire==...``: the exact environment the bundle was checked in."""
    import monai

    pins = {"torch": torch.__version__.split("+")[0], "monai": monai.__version__, **required_packages(pre)}
    return "pip install " + " ".join(f"{name}=={ver}" for name, ver in pins.items())


_README = """# fusionseg {name} ({dims}D) — MONAI bundle

A `{name}` network trained with fusionseg, packaged as a MONAI bundle that runs without fusionseg:
the network is TorchScript (`models/model.ts`), the preprocessing and postprocessing are MONAI
transforms (`LoadImaged`, {geometry}per-channel normalisation, MONAI's Gaussian sliding window with
the run's window {window}, {activation}, `Invertd` back to each input's grid, argmax) and the few
steps MONAI lacks are the bundle's `scripts/` package. It writes the label maps `fusionseg predict`
writes.

## Install

```bash
{install}
```

## Data

- input: {in_channels} channel(s) ({channels}), modality `{modality}`; one {files} per case, or
  `CASE_0000`, `CASE_0001`, ... files for several channels.
- output: label map per case (`{labels}`), `OUT/CASE{ext}`, with the input's geometry.

## Use

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir IMAGES --output_dir OUT
```

`models/model.ts` takes inputs of the window size {window} (any batch size).
"""


def _readme(pre: Preprocessing, name: str, model: torch.nn.Module, window: list[int]) -> str:
    dims = model_attribute(model, "spatial_dims")
    geometry = ""
    if pre.orientation and dims == 3:
        geometry += f"`Orientationd` ({pre.orientation}), "
    if pre.target_spacing:
        geometry += f"`Spacingd` ({list(pre.target_spacing)} mm), "
    return _README.format(
        name=name,
        dims=dims,
        geometry=geometry,
        window=window,
        activation=pre.activation,
        install=install_line(pre),
        in_channels=model_attribute(model, "in_channels"),
        channels=", ".join(pre.channel_names) or "image",
        modality=pre.modality or "unknown",
        files="NIfTI file (`.nii.gz`, `.nii`)" if dims == 3 else "image (`.png`, `.tif`, `.bmp`, `.jpg`)",
        labels=", ".join(f"{k}: {v}" for k, v in _output_channel_names(pre).items()),
        ext=" (`.nii.gz`)" if dims == 3 else " (`.png`, `.tif`)",
    )


_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def _check_bundle_network(folder: Path, model: torch.nn.Module, example: torch.Tensor) -> float:
    """Build ``network_def`` from the written config (the TorchScript) → max |bundle - eager| on ``example``
    and on its first window alone (the sliding window's last pass may hold fewer windows)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    net = parser.get_parsed_content("network_def", instantiate=True)
    diff = 0.0
    for x in (example, example[:1]):
        with torch.no_grad():
            got, expected = net(x), model(x)
        expected = expected[0] if isinstance(expected, tuple | list) else expected
        diff = max(diff, float((got - expected).abs().max()))
    return diff


def export_bundle(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    window: Sequence[int] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Write the MONAI bundle of a fusionseg training checkpoint to folder ``output``.

    ``window``: the sliding window (default: the training patch rounded up to the network's size
    multiple, the window of ``fusionseg predict``); a size the network cannot take is an InputError
    naming the nearest valid one. The network is traced to TorchScript at the window size and
    ``sw_batch_size`` windows; a network that does not trace is refused (the bundle must run
    without fusionseg).

    The folder is written beside ``output`` and renamed into place once complete (an existing
    bundle there is replaced; any other existing folder is refused). The TorchScript built from the
    written ``inference.json`` is checked against the checkpoint's model.

    Returns:
        {"path", "window", "max_abs_diff", "install", "batch" (windows per pass: ``sw_batch_size``, or 1
        where the trace holds for its own batch size only)}.
    """
    from fusionseg.checkpoints.loading import load_model
    from fusionseg.deploy.export import ExportMismatchError, example_shape, export_model
    from fusionseg.files import atomic_directory

    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not _is_bundle(output))):
        raise InputError(f"--output {output} exists and is not a MONAI bundle folder; choose a new folder")
    model, pre, ckpt = load_model(checkpoint)
    if not isinstance(pre, Preprocessing):
        raise InputError(f"{checkpoint} was imported from nnU-Net; export its nnU-Net model folder instead")
    model, name = model.eval(), ckpt["model"]["name"]
    shape = example_shape(model, pre, list(window) if window else _window(model, pre), batch=sw_batch_size)
    window = list(shape[2:])
    meta = metadata(pre, name, model, window)
    check_metadata(meta)
    with atomic_directory(output) as tmp:
        for sub in ("configs", "models", "docs", "scripts"):
            (tmp / sub).mkdir()
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "configs" / "logging.conf").write_text(_LOGGING_CONF)
        (tmp / "scripts" / "__init__.py").write_text('"""Bundle code MONAI lacks (see bundle_components)."""\n')
        (tmp / "scripts" / "bundle_components.py").write_text(Path(bundle_components.__file__).read_text())
        errors, traced = [], False
        for batch in dict.fromkeys((int(sw_batch_size), 1)):  # a trace tied to its batch size: one window per pass
            example = torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(0))
            config = inference_config(pre, window, overlap=overlap, sw_batch_size=batch)
            (tmp / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
            try:
                export_model(model, example, "torchscript", tmp / "models" / "model.ts", atol=atol,
                             metadata={"model": ckpt["model"], "input_shape": list(example.shape)})  # fmt: skip
                traced = True
                diff = _check_bundle_network(tmp, model, example)
            except (ExportMismatchError, RuntimeError) as err:
                errors.append(f"batch {batch}: {' '.join(str(err).split())[:300]}")
                continue
            if diff <= atol:
                break
            errors.append(f"batch {batch}: the bundle's network differs from the checkpoint's by {diff:.3g} > {atol:g}")
        else:
            if not traced:
                raise InputError(
                    f"{ckpt['model']['name']} does not trace to TorchScript, which the bundle needs "
                    f"({' | '.join(errors)}); export --format onnx instead"
                )
            raise ExportMismatchError(" | ".join(errors))
        (tmp / "docs" / "README.md").write_text(_readme(pre, name, model, window))
        _keep_added_files(output, tmp)
    return {"path": output, "window": window, "max_abs_diff": diff, "install": install_line(pre), "batch": batch}


# Files an export writes (a re-export replaces them; a model.ts the new export could not write must not survive).
BUNDLE_FILES = frozenset(
    ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.pt", "models/model.ts",
     "scripts/__init__.py", "scripts/bundle_components.py", "docs/README.md")
)  # fmt: skip


def _keep_added_files(old: Path, new: Path) -> list[Path]:
    """Copy the files a user added to the bundle folder ``old`` (not written by an export) into ``new`` → their
    relative paths, so a re-export replaces fusionseg's files only."""
    if not old.is_dir():
        return []
    kept = []
    for path in sorted(old.rglob("*")):
        relative = path.relative_to(old)
        target = new / relative
        if (path.is_dir() and not path.is_symlink()) or relative.as_posix() in BUNDLE_FILES or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=False)
        kept.append(relative)
    return kept


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file() and (folder / "models").is_dir()
