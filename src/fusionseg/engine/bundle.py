"""Export a fusionseg checkpoint as a MONAI bundle that ``python -m monai.bundle run`` executes as is.

``fusionseg export --format bundle --checkpoint RUN/best.pt --output DIR`` writes::

    DIR/configs/metadata.json    MONAI metadata (versions, network_data_format, label names)
    DIR/configs/inference.json   network_def (fusionseg.nets.create_inference_model: logits), the
                                 checkpoint's preprocessing (fusionseg LoadForInferenced), MONAI's
                                 SlidingWindowInferer with the run's window over softmax/sigmoid
                                 probabilities (Activated), labels on the input grid (SavePredictiond)
    DIR/configs/logging.conf     MONAI's usual logging set-up
    DIR/models/model.pt          state_dict (loaded by MONAI's CheckpointLoader)
    DIR/models/model.ts          TorchScript of the network at the window size (when it traces)
    DIR/docs/README.md           data and use

Run with ``python -m monai.bundle run --config_file DIR/configs/inference.json --bundle_root DIR
--dataset_dir IMAGES --output_dir OUT`` (``--bundle_root`` defaults to ``.``, the bundle folder).
The folder appears only once complete (written beside it, then renamed).

Example:
    >>> export_bundle("runs/x/best.pt", "bundles/x")   # {"path", "torchscript", "max_abs_diff", ...}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fusionseg.errors import InputError
from fusionseg.version import __version__

__all__ = ["METADATA_REQUIRED", "SCHEMA_URL", "check_metadata", "export_bundle", "inference_config", "metadata"]

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


def _window(model: torch.nn.Module, pre: dict) -> list[int]:
    from fusionseg.engine.infer import window_size

    patch = pre.get("patch_size")
    if not patch:
        raise InputError("the checkpoint's preprocessing has no patch_size; the bundle's sliding window needs one")
    return [int(s) for s in window_size(list(patch), list(patch), int(model.size_multiple))]


def _output_channel_names(pre: dict) -> dict[str, str]:
    if pre.get("regions"):
        names = pre.get("region_names") or [f"region {i}" for i in range(len(pre["regions"]))]
        return {str(i): str(n) for i, n in enumerate(names)}
    labels = pre.get("labels") or {}
    return {str(i): str(labels.get(str(i), f"class {i}")) for i in range(int(pre["out_channels"]))}


def metadata(ckpt: dict, model: torch.nn.Module, window: list[int]) -> dict[str, Any]:
    """``configs/metadata.json`` of the bundle: versions, ``network_data_format`` and label names."""
    import monai
    import numpy as np

    pre = ckpt["preprocessing"]
    name, multiple = ckpt["model"]["name"], int(model.size_multiple)
    shape_rule = [f"{multiple}*n"] * len(window)
    in_names = pre.get("channel_names") or [f"channel {i}" for i in range(int(model.in_channels))]
    out_names = _output_channel_names(pre)
    activation = pre.get("activation") or "softmax"
    dims = int(model.spatial_dims)
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by fusionseg {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"fusionseg": __version__},
        "name": f"fusionseg {name}",
        "task": f"{dims}D segmentation ({len(out_names)} {'regions' if pre.get('regions') else 'classes'})",
        "description": f"fusionseg {name} {dims}D segmentation network with the preprocessing of its training run",
        "authors": "exported with fusionseg",
        "copyright": "the owner of the training data and run",
        "data_source": str(pre.get("dataset", "the training run's dataset")),
        "data_type": str(pre.get("layout", "image files")),
        "image_classes": ", ".join(f"channel {k}: {v}" for k, v in enumerate(in_names)),
        "label_classes": ", ".join(f"{k}: {v}" for k, v in (pre.get("labels") or {}).items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in out_names.items()),
        "intended_use": "research only",
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": str(pre.get("modality", "unknown")),
                    "num_channels": int(model.in_channels),
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
                    "num_channels": int(model.out_channels),
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


def inference_config(ckpt: dict, window: list[int], *, overlap: float = 0.5, sw_batch_size: int = 4) -> dict:
    """``configs/inference.json``: MONAI's evaluator with fusionseg's network, preprocessing and writer."""
    pre = ckpt["preprocessing"]
    model = ckpt["model"]
    activation = pre.get("activation") or "softmax"
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "output_dir": "$@bundle_root + '/eval'",
        "fusionseg_preprocessing": pre,
        "datalist": {
            "_target_": "fusionseg.engine.bundle_components.list_cases",
            "dataset_dir": "@dataset_dir",
            "in_channels": int(pre["in_channels"]),
        },
        "network_def": {
            "_target_": "fusionseg.nets.create_inference_model",
            "name": model["name"],
            **(model.get("kwargs") or {}),
        },
        "network": "$@network_def.to(@device)",
        "activation": activation,
        "inference_network": {
            "_target_": "fusionseg.engine.bundle_components.Activated",
            "network": "@network",
            "activation": "@activation",
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "fusionseg.engine.bundle_components.LoadForInferenced",
                    "keys": "image",
                    "preprocessing": "@fusionseg_preprocessing",
                },
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
            "collate_fn": {"_target_": "fusionseg.engine.bundle_components.collate_case", "_mode_": "callable"},
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
                    "_target_": "fusionseg.engine.bundle_components.SavePredictiond",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@inference_network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "decollate": False,
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


_README = """# fusionseg {name} ({dims}D) — MONAI bundle

A `{name}` network trained with fusionseg, packaged as a MONAI bundle. The bundle reproduces
`fusionseg predict`: the same preprocessing (the training run's orientation, target spacing and
per-channel normalisation, stored in `configs/inference.json` as `fusionseg_preprocessing`),
MONAI's Gaussian sliding window with the run's window {window}, {activation}, and label maps
written on each input's own grid and geometry.

## Data

- input: {in_channels} channel(s) ({channels}), modality `{modality}`; one image file per case, or
  `CASE_0000`, `CASE_0001`, ... files for several channels; any format fusionseg reads.
- output: label map per case (`{labels}`), same name, format and geometry as the input.

## Use

Needs `pip install "fusionseg[bundle]"` (fusionseg, MONAI and `fire`).

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir IMAGES --output_dir OUT
```

`models/model.pt` is the network's state_dict (`fusionseg.nets.create_inference_model` with the
arguments in `network_def`); {torchscript}
"""


def _readme(ckpt: dict, model: torch.nn.Module, window: list[int], torchscript: bool) -> str:
    pre = ckpt["preprocessing"]
    return _README.format(
        name=ckpt["model"]["name"],
        dims=int(model.spatial_dims),
        window=window,
        activation=pre.get("activation") or "softmax",
        in_channels=int(model.in_channels),
        channels=", ".join(pre.get("channel_names") or []) or "image",
        modality=pre.get("modality", "unknown"),
        labels=", ".join(f"{k}: {v}" for k, v in _output_channel_names(pre).items()),
        torchscript="`models/model.ts` is its TorchScript for inputs of the window size."
        if torchscript
        else "the network does not trace to TorchScript, so the bundle has no `models/model.ts`.",
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


def _check_config_network(folder: Path, model: torch.nn.Module, example: torch.Tensor) -> float:
    """Build ``network_def`` from the written config, load ``model.pt`` strictly → max |bundle - eager|."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    with torch.no_grad():
        got, expected = net.eval()(example), model(example)
    expected = expected[0] if isinstance(expected, tuple | list) else expected
    return float((got - expected).abs().max())


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
    naming the nearest valid one.

    The folder is written beside ``output`` and renamed into place once complete (an existing
    bundle there is replaced; any other existing folder is refused). The network built from the
    written ``inference.json`` is checked against the checkpoint's model on a window-sized input.

    Returns:
        {"path", "window", "torchscript" (bool), "max_abs_diff", "skipped" (why no model.ts, or None)}.
    """
    from fusionseg.engine.export import ExportMismatchError, example_shape, export_model
    from fusionseg.engine.infer import load_model
    from fusionseg.files import atomic_directory

    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not _is_bundle(output))):
        raise InputError(f"--output {output} exists and is not a MONAI bundle folder; choose a new folder")
    model, pre, ckpt = load_model(checkpoint)
    if pre.get("kind") == "nnunet":
        raise InputError(f"{checkpoint} was imported from nnU-Net; export its nnU-Net model folder instead")
    shape = example_shape(model, pre, list(window) if window else _window(model, pre))
    window = list(shape[2:])
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    meta = metadata(ckpt, model, window)
    check_metadata(meta)
    config = inference_config(ckpt, window, overlap=overlap, sw_batch_size=sw_batch_size)
    skipped = None
    with atomic_directory(output) as tmp:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "configs" / "logging.conf").write_text(_LOGGING_CONF)
        torch.save(dict(model.state_dict()), tmp / "models" / "model.pt")
        diff = _check_config_network(tmp, model, example)
        if not diff <= atol:
            raise ExportMismatchError(f"the bundle's network differs from the checkpoint's by {diff:.3g} > {atol:g}")
        try:
            export_model(
                model,
                example,
                "torchscript",
                tmp / "models" / "model.ts",
                atol=atol,
                metadata={"model": ckpt["model"], "preprocessing": pre, "input_shape": list(example.shape)},
            )
        except ExportMismatchError as err:
            skipped = str(err)
        (tmp / "docs" / "README.md").write_text(_readme(ckpt, model, window, skipped is None))
        _keep_added_files(output, tmp)
    return {"path": output, "window": window, "torchscript": skipped is None, "max_abs_diff": diff, "skipped": skipped}


# Files an export writes (a re-export replaces them; a model.ts the new export could not write must not survive).
BUNDLE_FILES = frozenset(
    ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.pt", "models/model.ts",
     "docs/README.md")
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
