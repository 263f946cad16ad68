"""Real-data benchmark: fusion U-Nets vs MONAI ``BasicUNet`` at an equal wall-clock training budget.

Two tasks are built from ``../shared/data`` (see ``docs/real_data.md`` for the exact protocol):

- ``nuclei2d``: one 512×512 fluorescence field; train on the left half (columns x < 256), test on the
  right half (x ≥ 256, not mirrored); score = foreground Dice.
- ``brain3d``: Colin27 T1 with the AAL atlas merged into 7 hemisphere-agnostic groups
  (:data:`AAL_GROUPS`), resampled to 2 mm by the training pipeline; train on the left hemisphere,
  test on the right hemisphere mirrored onto the left one's grid; score = mean Dice over the 7 classes.

Every (dataset, seed, model) run trains with :func:`fusionseg.engine.train.train` for the same
training-time budget (the LR schedule ends at the budget; data loading counts, checkpoint writes do
not) and is scored with sliding-window inference and :func:`fusionseg.engine.metrics.dice_iou`.
The peer, MONAI ``BasicUNet``, is the registered model ``monai_basicunet`` (``fusionseg.nets.external``), so it
goes through exactly the same loop, loss, optimiser and evaluation; ``basicunet+dff`` is the same network with
its skips fused by DFF (``fusionseg.plug``).
Seeds run outside, models inside, so a change of machine load hits every model alike.

The controlled ablation: a model ``NAME+FUSION`` is paired with ``NAME`` (its own concatenation skips,
e.g. ``basicunet+dff`` with ``basicunet``) when both run; per seed the paired difference (with − without
the module, same seed, same budget) is reported with its mean ± std over seeds, next to the
seed-to-seed spread of each arm.

Outputs in ``--output``: ``data/`` (the built datasets), ``runs/DATASET/MODEL_seedK/`` (each
training run), ``real_data_runs.csv`` (one row per run), ``real_data.csv`` (mean ± std per model and
dataset), ``real_data_pairs.csv`` (paired differences) and ``real_data.md`` (the tables and the command).

Options that differ per dataset take ``DATASET=VALUE`` entries (a value without ``DATASET=`` applies to
every dataset): ``--model nuclei2d=basicunet,basicunet+dff brain3d=basicunet,dnet_small``,
``--time-budget nuclei2d=180 brain3d=420``, ``--patch-size nuclei2d=128,128``, ``--batch-size brain3d=2``.

Example:
    $ fusionseg bench real-data --seeds 3 --threads 2
    $ fusionseg bench real-data --seeds 1 --time-budget 3   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionseg.errors import InputError
from fusionseg.files import atomic_write, write_text_atomic
from fusionseg.nets.registry import list_models

__all__ = [
    "AAL_GROUPS",
    "DATASETS",
    "aal_group_table",
    "build_brain3d",
    "build_nuclei2d",
    "default_data_root",
    "format_pairs",
    "format_tables",
    "label_copy_dice",
    "main",
    "paired_differences",
    "parse_model_spec",
    "run_benchmark",
    "summarise",
]

DATASETS = ("nuclei2d", "brain3d")
PEER = "basicunet"
# Reference numbers measured outside this benchmark (this benchmark re-measures the peer in the same run).
ISSUE_REFERENCE = {
    "nuclei2d": "BasicUNet 0.927 ± 0.003 in 180 s",
    "brain3d": "BasicUNet 3D 0.828 in 420 s at 2 mm",
}

# AAL region name prefixes (``aal_labels.txt``, hemisphere suffix _L/_R dropped) → merged class.
AAL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "frontal",
        (
            "Precentral",
            "Frontal_",
            "Rolandic_Oper",
            "Supp_Motor_Area",
            "Olfactory",
            "Rectus",
            "Paracentral_Lobule",
        ),
    ),
    ("parietal", ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus")),
    ("temporal", ("Heschl", "Temporal_", "Fusiform")),
    ("occipital", ("Calcarine", "Cuneus", "Lingual", "Occipital_")),
    ("limbic_insula", ("Insula", "Cingulum_", "Hippocampus", "ParaHippocampal", "Amygdala")),
    ("deep_grey", ("Caudate", "Putamen", "Pallidum", "Thalamus")),
    ("cerebellum", ("Cerebelum_", "Vermis_")),
)

# Colin27/AAL grid (181×217×181, 1 mm, affine origin −90): voxel 90 is the midline x = 0 mm.
# Left hemisphere = voxels [11, 90) (x = −79…−1 mm), right = [91, 170) (x = +1…+79 mm); the midline
# slice is in neither. The atlas spans x voxels 17…162, so 6 mm of margin stay on the lateral side.
_MIDLINE, _HALF_WIDTH = 90, 79
_MARGIN = 6  # voxels kept around the atlas' bounding box along y and z


# ------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: a label, the registry name, and the fusion / kwargs it gets."""

    label: str
    model: str
    fusion: str | None
    kwargs: dict


def parse_model_spec(text: str, features: Sequence[int]) -> ModelSpec:
    """``"basicunet"`` (the peer), ``"NAME+FUSION"`` (NAME with that skip fusion) or any registered model name.

    NAME is ``unet``, ``basicunet`` (= ``monai_basicunet``) or a registered model taking ``fusion``
    (e.g. ``monai_basicunet+dff``, ``nnunet_plain+tif``). U-Nets get ``features``; BasicUNet gets ``features``
    plus a last decoder width equal to the first; other models their defaults.
    """
    text = text.strip().lower()
    name, _, fusion = text.partition("+")
    model = "monai_basicunet" if name == PEER else name
    if model not in list_models():
        raise InputError(
            f"--models: unknown model {text!r}; use basicunet, unet+FUSION, NAME+FUSION or one of {list_models()}"
        )
    if fusion:
        from fusionseg.fusion import list_fusions

        if fusion not in list_fusions():
            raise InputError(f"--models: unknown fusion in {text!r}; choose from {', '.join(list_fusions())}")
    widths = {"unet": list(features), "monai_basicunet": [*features, features[0]]}
    return ModelSpec(text, model, fusion or None, {"features": widths[model]} if model in widths else {})


# ------------------------------------------------------------------------------------------ datasets


def default_data_root() -> Path:
    """``../shared/data`` beside the repository (or the working directory's ``../shared/data``)."""
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "data"


def build_nuclei2d(source: Path, dest: Path) -> Path:
    """Write ``dest/images/left.png`` + mask (train) and ``dest/test/images/right.png`` + mask (test).

    Left = columns x < 256 of the 512×512 field, right = x ≥ 256 (not mirrored; masks 0/255).
    """
    from PIL import Image

    image = np.asarray(Image.open(source / "image.png"))
    mask = np.asarray(Image.open(source / "mask.png"))
    if image.shape != mask.shape or image.ndim != 2:
        raise InputError(f"{source}: image.png {image.shape} and mask.png {mask.shape} must be equal 2D arrays")
    half = image.shape[1] // 2
    for folder, name, cols in ((dest, "left", slice(0, half)), (dest / "test", "right", slice(half, None))):
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image[:, cols])).save(folder / "images" / f"{name}.png")
        binary = np.where(mask[:, cols] > 0, 255, 0).astype(np.uint8)
        Image.fromarray(binary).save(folder / "masks" / f"{name}.png")
    (dest / "dataset.json").write_text(
        json.dumps(
            {"name": "nuclei2d", "channel_names": {"0": "fluorescence"}, "labels": {"background": 0, "nucleus": 1}}
        )
    )
    return dest


def aal_group_table(labels_txt: Path) -> dict[int, int]:
    """AAL id → merged class (1 … len(AAL_GROUPS)) from ``aal_labels.txt`` (``id name code`` lines)."""
    table = {}
    for line in Path(labels_txt).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        region_id, name = int(parts[0]), parts[1]
        group = next((k for k, (_, prefixes) in enumerate(AAL_GROUPS, 1) if name.startswith(prefixes)), None)
        if group is None:
            raise InputError(f"{labels_txt}: AAL region {name!r} is not in any merged group; extend AAL_GROUPS")
        table[region_id] = group
    return table


def build_brain3d(source: Path, dest: Path) -> Path:
    """nnU-Net layout: left hemisphere → ``imagesTr``/``labelsTr``, mirrored right → ``imagesTs``/``labelsTs``.

    Image = ``t1.nii.gz`` (with skull); label = AAL merged by :func:`aal_group_table`. Both halves are
    cropped to the atlas' y/z bounding box (+6 mm) and share one grid (the right half mirrored in x).
    """
    import nibabel as nib

    t1 = nib.load(str(source / "t1.nii.gz"))
    aal = nib.load(str(source / "aal.nii.gz"))
    image, atlas = np.asarray(t1.dataobj), np.asarray(aal.dataobj).astype(np.int64)
    affine = np.asarray(t1.affine, dtype=np.float64)
    if image.shape != (181, 217, 181) or not np.allclose(affine[:3, :3], np.eye(3)) or affine[0, 3] != -_MIDLINE:
        raise InputError(f"{source}: expected the Colin27/AAL 181×217×181 1 mm grid with x origin −90 mm")
    lut = np.zeros(int(atlas.max()) + 1, dtype=np.uint8)
    for region_id, group in aal_group_table(source / "aal_labels.txt").items():
        if region_id < lut.size:
            lut[region_id] = group
    label = lut[atlas]
    ys, zs = (np.nonzero(label.any(axis=a))[0] for a in ((0, 2), (0, 1)))
    y0, y1 = max(ys[0] - _MARGIN, 0), min(ys[-1] + 1 + _MARGIN, image.shape[1])
    z0, z1 = max(zs[0] - _MARGIN, 0), min(zs[-1] + 1 + _MARGIN, image.shape[2])
    left = slice(_MIDLINE - _HALF_WIDTH, _MIDLINE)
    right_mirrored = slice(_MIDLINE + _HALF_WIDTH, _MIDLINE, -1)  # x = +79 … +1 mm → mirrored to −79 … −1 mm
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ np.array([left.start, y0, z0]) + affine[:3, 3]
    for split, case, xs in (("Tr", "left", left), ("Ts", "right_mirrored", right_mirrored)):
        (dest / f"images{split}").mkdir(parents=True, exist_ok=True)
        (dest / f"labels{split}").mkdir(parents=True, exist_ok=True)
        img = np.ascontiguousarray(image[xs, y0:y1, z0:z1])
        lab = np.ascontiguousarray(label[xs, y0:y1, z0:z1])
        nib.save(nib.Nifti1Image(img, crop_affine), str(dest / f"images{split}" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, crop_affine), str(dest / f"labels{split}" / f"{case}.nii.gz"))
    labels = {"background": 0, **{name: k for k, (name, _) in enumerate(AAL_GROUPS, 1)}}
    meta = {"name": "brain3d", "channel_names": {"0": "T1"}, "labels": labels, "file_ending": ".nii.gz"}
    (dest / "dataset.json").write_text(json.dumps({**meta, "numTraining": 1}, indent=2))
    return dest


# ------------------------------------------------------------------------------------------ running


def _score(best: Path, data_dir: Path, device: str, overlap: float) -> tuple[float, dict[str, float], int]:
    """Mean foreground Dice, per-class Dice (each averaged over the test cases), and the model's parameters."""
    from monai.data import Dataset

    from fusionseg import data
    from fusionseg.engine.infer import load_model, predict_volume
    from fusionseg.engine.metrics import dice_iou
    from fusionseg.engine.runtime import pick_device

    model, pre, _ = load_model(best, pick_device(device))
    info = data.scan_dataset(data_dir)
    cases = [c for c in info.test_cases if c.label is not None]
    names = {int(k): v for k, v in pre["labels"].items()}
    per_class: dict[str, list[float]] = {names[k]: [] for k in range(1, int(pre["num_classes"]))}
    for item in Dataset([data.case_dict(c) for c in cases], data.eval_transforms(pre)):
        pred = predict_volume(model, item["image"], pre, overlap=overlap).argmax(0).numpy()
        label = np.asarray(item["label"])[0]
        for k in range(1, int(pre["num_classes"])):
            per_class[names[k]].append(dice_iou(pred == k, label == k)[0])
    class_means = {name: float(np.mean(v)) for name, v in per_class.items()}
    params = sum(p.numel() for p in model.parameters())
    return float(np.mean(list(class_means.values()))), class_means, params


def label_copy_dice(data_dir: Path, pre: dict) -> float:
    """Mean class Dice of the training label used as the prediction for the test case (same grid; no learning).

    For brain3d this is the atlas' own left/right symmetry at the evaluation resolution: a reference
    for what copying the mirrored training hemisphere would score.
    """
    from fusionseg import data
    from fusionseg.engine.metrics import dice_iou

    info = data.scan_dataset(data_dir)
    transform = data.eval_transforms(pre)
    train = np.asarray(transform(data.case_dict(info.cases[0]))["label"])[0]
    test = np.asarray(transform(data.case_dict(info.test_cases[0]))["label"])[0]
    if train.shape != test.shape:
        raise InputError(f"{data_dir}: train and test label grids differ ({train.shape} vs {test.shape})")
    return float(np.mean([dice_iou(train == k, test == k)[0] for k in range(1, int(pre["num_classes"]))]))


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return math.nan


def run_benchmark(args: argparse.Namespace) -> tuple[list[dict], dict[str, float]]:
    """Build the datasets, train and score every (dataset, seed, model).

    Returns one record per run, and brain3d's :func:`label_copy_dice` (``{"brain3d": dice}``).
    """
    from fusionseg.engine.config import TrainConfig
    from fusionseg.engine.runtime import set_threads
    from fusionseg.engine.train import train

    root = Path(args.data_root)
    output = Path(args.output)
    features = list(args.features)
    threads, reason = set_threads(args.threads)  # once: every run gets the same thread count
    print(f"CPU threads: {threads} ({reason}), for every run")
    builders = {"nuclei2d": build_nuclei2d, "brain3d": build_brain3d}
    records, copy_dice = [], {}
    for dataset in args.datasets:
        specs = [parse_model_spec(m, features) for m in args.models_by_dataset[dataset]]
        source = root / dataset
        if not source.is_dir():
            raise InputError(f"{source}: real data folder missing; pass --data-root (the folder holding {dataset}/)")
        data_dir = builders[dataset](source, output / "data" / dataset)
        s = {
            "budget": args.budget[dataset],
            "patch": args.patch[dataset],
            "batch": args.batch[dataset],
            "augment": args.augment_by_dataset[dataset],
        }
        for seed in range(args.seed, args.seed + args.seeds):
            for spec in specs:
                run_dir = output / "runs" / dataset / f"{spec.label.replace('+', '_')}_seed{seed}"
                config = TrainConfig(
                    data=data_dir,
                    output=run_dir,
                    model=spec.model,
                    fusion=spec.fusion,
                    model_kwargs=dict(spec.kwargs),
                    epochs=10**6,
                    iters_per_epoch=args.iters_per_epoch,
                    time_budget=s["budget"],
                    batch_size=s["batch"],
                    patch_size=tuple(s["patch"]),
                    target_spacing=(2.0, 2.0, 2.0) if dataset == "brain3d" else None,
                    augment=s["augment"],
                    optimizer=args.optimizer,
                    lr=args.lr,
                    val_fraction=0.0,
                    seed=seed,
                    device=args.device,
                    threads=threads,
                    progress=False,
                )
                load_before = _load()
                print(f"== {dataset} | {spec.label} | seed {seed}: {s['budget']:g} s (load {load_before}) → {run_dir}")
                start = time.perf_counter()
                best = train(config)
                dice, per_class, params = _score(best, data_dir, args.device, args.overlap)
                summary = json.loads((run_dir / "train_summary.json").read_text())
                record = {
                    "dataset": dataset,
                    "model": spec.label,
                    "seed": seed,
                    "dice": dice,
                    "iterations": summary["steps"],
                    "train_time_s": round(summary["train_time_s"], 2),
                    "wall_s": round(time.perf_counter() - start, 2),
                    "params": params,
                    "threads": threads,
                    "load_before": load_before,
                    "load_after": _load(),
                    **{f"dice_{k}": v for k, v in per_class.items()},
                }
                records.append(record)
                print(f"   Dice {dice:.4f} after {summary['steps']} iterations ({record['wall_s']:.0f} s wall)")
        if dataset == "brain3d":
            from fusionseg.engine.checkpoint import load_checkpoint

            copy_dice[dataset] = label_copy_dice(data_dir, load_checkpoint(best)["preprocessing"])
    return records, copy_dice


def summarise(records: list[dict]) -> list[dict]:
    """Mean ± std (ddof 1) over seeds per (dataset, model): iterations, parameters, per-class means, Δ vs the peer."""
    rows = []
    keys = list(dict.fromkeys((r["dataset"], r["model"]) for r in records))
    for dataset, model in keys:
        runs = [r for r in records if r["dataset"] == dataset and r["model"] == model]
        dice = [r["dice"] for r in runs]
        row = {
            "dataset": dataset,
            "model": model,
            "dice_mean": float(np.mean(dice)),
            "dice_std": float(np.std(dice, ddof=1)) if len(dice) > 1 else 0.0,
            "seeds": len(runs),
            "iterations": float(np.mean([r["iterations"] for r in runs])),
            "train_time_s": float(np.mean([r["train_time_s"] for r in runs])),
            "params_m": runs[0]["params"] / 1e6,
        }
        for key in runs[0]:
            if key.startswith("dice_"):
                row[key] = float(np.mean([r[key] for r in runs]))
        rows.append(row)
    peer = {r["dataset"]: r["dice_mean"] for r in rows if r["model"] == PEER}
    for row in rows:  # the in-run baseline: Dice difference to the peer on the same dataset
        row["diff_vs_peer"] = row["dice_mean"] - peer[row["dataset"]] if row["dataset"] in peer else math.nan
    return rows


def baseline_of(label: str, labels: Sequence[str]) -> str | None:
    """The arm without the module for ``NAME+FUSION`` (``NAME`` or ``NAME+concat``) when it ran, else None."""
    name, _, fusion = label.partition("+")
    if not fusion or fusion == "concat":
        return None
    for candidate in (name, f"{name}+concat"):
        if candidate in labels:
            return candidate
    return None


def paired_differences(records: list[dict]) -> list[dict]:
    """Per dataset and module arm: Dice(with) − Dice(without) per seed, mean ± std, and each arm's seed spread."""
    pairs = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        runs = [r for r in records if r["dataset"] == dataset]
        labels = list(dict.fromkeys(r["model"] for r in runs))
        for label in labels:
            base = baseline_of(label, labels)
            if base is None:
                continue
            by_seed = {r["seed"]: r for r in runs if r["model"] == label}
            ref_by_seed = {r["seed"]: r for r in runs if r["model"] == base}
            seeds = sorted(set(by_seed) & set(ref_by_seed))
            diffs = [by_seed[k]["dice"] - ref_by_seed[k]["dice"] for k in seeds]
            with_dice, base_dice = [by_seed[k]["dice"] for k in seeds], [ref_by_seed[k]["dice"] for k in seeds]
            pair = {
                "dataset": dataset,
                "with": label,
                "without": base,
                "seeds": seeds,
                "diffs": diffs,
                "diff_mean": float(np.mean(diffs)) if diffs else math.nan,
                "diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
                "spread_with": float(np.std(with_dice, ddof=1)) if len(seeds) > 1 else math.nan,
                "spread_without": float(np.std(base_dice, ddof=1)) if len(seeds) > 1 else math.nan,
                "iterations_with": float(np.mean([by_seed[k]["iterations"] for k in seeds])) if seeds else math.nan,
                "iterations_without": float(np.mean([ref_by_seed[k]["iterations"] for k in seeds]))
                if seeds
                else math.nan,
            }
            pair["verdict"] = paired_verdict(pair)
            pairs.append(pair)
    return pairs


def paired_verdict(pair: dict) -> str:
    """The paired difference in words: larger than the seed-to-seed spread of the arms, or within it."""
    mean, n = pair["diff_mean"], len(pair["diffs"])
    if n < 2 or not math.isfinite(pair["diff_std"]):
        return f"one seed only: {mean:+.4f}, no spread to compare with"
    spread = max(pair["spread_with"], pair["spread_without"])
    se = pair["diff_std"] / math.sqrt(n)
    if abs(mean) > spread and abs(mean) > 2 * se:
        side = "better" if mean > 0 else "worse"
        return f"{side} by more than the seed-to-seed spread (|Δ| {abs(mean):.4f} > spread {spread:.4f}, > 2 s.e.)"
    return f"within the seed-to-seed spread (|Δ| {abs(mean):.4f} vs spread {spread:.4f}, s.e. {se:.4f})"


def format_pairs(pairs: list[dict]) -> str:
    """Markdown table of :func:`paired_differences`."""
    from fusionseg.engine.report import format_table

    if not pairs:
        return ""
    seeds = sorted({k for p in pairs for k in p["seeds"]})
    return "Paired differences (with − without the module, same seed and budget):\n\n" + format_table(
        [
            "dataset",
            "with",
            "without",
            *[f"Δ seed {k}" for k in seeds],
            "Δ mean ± std",
            "spread with / without",
            "iterations with / without",
            "verdict",
        ],
        [
            [
                p["dataset"],
                p["with"],
                p["without"],
                *[f"{dict(zip(p['seeds'], p['diffs'])).get(k, math.nan):+.4f}" for k in seeds],
                f"{p['diff_mean']:+.4f} ± {p['diff_std']:.4f}",
                f"{p['spread_with']:.4f} / {p['spread_without']:.4f}",
                f"{p['iterations_with']:.0f} / {p['iterations_without']:.0f}",
                p["verdict"],
            ]
            for p in pairs
        ],
    )


def _delta(row: dict) -> str:
    if row["model"] == PEER:
        return "(peer)"
    return "–" if math.isnan(row["diff_vs_peer"]) else f"{row['diff_vs_peer']:+.4f}"


def format_tables(rows: list[dict], budgets: dict[str, float], copy_dice: dict[str, float] | None = None) -> str:
    """Markdown: the main table (every dataset) and a per-class table for multi-class datasets."""
    from fusionseg.engine.report import format_table

    main = format_table(
        [
            "dataset",
            "model",
            "Dice (mean ± std over seeds)",
            "Δ Dice vs peer",
            "seeds",
            "budget (s)",
            "iterations",
            "params (M)",
        ],
        [
            [
                r["dataset"],
                r["model"] + (" (peer)" if r["model"] == PEER else ""),
                f"{r['dice_mean']:.4f} ± {r['dice_std']:.4f}",
                _delta(r),
                r["seeds"],
                f"{budgets[r['dataset']]:g}",
                f"{r['iterations']:.0f}",
                f"{r['params_m']:.3f}",
            ]
            for r in rows
        ],
    )
    parts = [main]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        classes = [k for k in ds_rows[0] if k.startswith("dice_") and k not in ("dice_mean", "dice_std")]
        if len(classes) > 1:
            parts.append(
                f"Per-class Dice on {dataset} (mean over seeds):\n\n"
                + format_table(
                    ["model", *[c.removeprefix("dice_") for c in classes]],
                    [[r["model"], *[f"{r[c]:.3f}" for c in classes]] for r in ds_rows],
                )
            )
    notes = [f"- {d}: measured elsewhere: {ISSUE_REFERENCE[d]}." for d in dict.fromkeys(r["dataset"] for r in rows)]
    notes += [
        f"- {d}: the mirrored training label copied onto the test hemisphere (no learning) scores {v:.4f}."
        for d, v in (copy_dice or {}).items()
    ]
    parts.append("\n".join(notes))
    return "\n\n".join(parts)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# Defaults per dataset: the controlled ablation (the same backbone with and without the module).
DEFAULTS = {
    "model": {
        "nuclei2d": "basicunet,basicunet+dff,basicunet+tif,unet+dff",
        "brain3d": "basicunet,basicunet+dff,dnet_small",
    },
    "time_budget": {"nuclei2d": "180", "brain3d": "420"},
    "patch_size": {"nuclei2d": "128,128", "brain3d": "48,64,64"},
    "batch_size": {"nuclei2d": "4", "brain3d": "2"},
    "augment": {"nuclei2d": "true", "brain3d": "false"},
}


def per_dataset(entries: Sequence[str] | None, option: str, default: dict[str, str]) -> dict[str, str]:
    """``["nuclei2d=128,128", "64,64,64"]`` → ``{dataset: text}``; a value without ``DATASET=`` applies to all."""
    out = dict(default)
    everywhere = [e for e in entries or [] if "=" not in e]
    if everywhere:
        out = {d: ",".join(everywhere) for d in DATASETS}
    for entry in entries or []:
        name, sep, value = entry.partition("=")
        if not sep:
            continue
        if name not in DATASETS:
            raise InputError(f"{option} {entry}: unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
        out[name] = value
    return out


def _per_dataset_values(text: dict[str, str], option: str, parse) -> dict[str, object]:
    values = {}
    for dataset, value in text.items():
        try:
            values[dataset] = parse(value)
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise InputError(f"{option} {dataset}={value}: {err}") from None
    return values


def _bool(text: str) -> bool:
    from fusionseg.cli.options import boolean

    return boolean(text)


def _defaults_text(option: str) -> str:
    return " ".join(f"{d}={v}" for d, v in DEFAULTS[option].items())


def build_parser(prog: str) -> argparse.ArgumentParser:
    from fusionseg.cli.options import add_alias, positive_int

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None, help="folder with nuclei2d/ and brain3d/ (../shared/data)")
    p.add_argument("--output", type=Path, default=Path("runs/bench_real_data"), help="results folder")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: nuclei2d,brain3d")
    p.add_argument(
        "--model", nargs="+", metavar="[DATASET=]SPECS",
        help="comma-separated models per dataset: basicunet (MONAI peer), NAME+FUSION (NAME with that skip fusion: "
        "unet+dff, basicunet+tif, nnunet_plain+dff, ...) or registered names. Default "
        + _defaults_text("model"),
    )  # fmt: skip
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per model (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed: seeds are seed … seed+seeds-1 (default 0)")
    p.add_argument(
        "--time-budget", nargs="+", metavar="[DATASET=]SECONDS",
        help="training seconds per run (default " + _defaults_text("time_budget") + ")",
    )  # fmt: skip
    p.add_argument(
        "--patch-size", nargs="+", metavar="[DATASET=]N,N[,N]",
        help="training patch (default " + _defaults_text("patch_size") + ")",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", nargs="+", metavar="[DATASET=]N",
        help="patches per iteration (default " + _defaults_text("batch_size") + ")",
    )  # fmt: skip
    p.add_argument(
        "--augment", nargs="+", metavar="[DATASET=]BOOL",
        help="the engine's augmentation (default " + _defaults_text("augment") + "; 3D flips hurt at short budgets)",
    )  # fmt: skip
    p.add_argument("--features", type=_ints, default=[16, 32, 64, 128, 256], help="U-Net widths (peer: + first)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw", help="default adamw")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument("--iters-per-epoch", type=int, default=50, help="iterations between checkpoint writes")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap at test time (default 0.5)")
    p.add_argument(
        "--threads", default="auto", help="CPU threads of every run: auto (idle cores, chosen once) or a number"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    # Old spellings (one release): they print a note.
    add_alias(p, "--models", "--model", "model", nargs="+")
    add_alias(p, "--first-seed", "--seed", "seed", type=int)
    add_alias(p, "--eval-overlap", "--overlap", "overlap", type=float)
    for old in ("--budget2d", "--budget3d", "--patch2d", "--patch3d", "--batch2d", "--batch3d"):
        new = {"budget": "--time-budget", "patch": "--patch-size", "batch": "--batch-size"}[old[2:-2]]
        add_alias(p, old, f"{new} {'nuclei2d' if old.endswith('2d') else 'brain3d'}=…", f"old_{old[2:]}")
    add_alias(p, "--no-augment2d", "--augment nuclei2d=false", "old_no_augment2d", const=True)
    add_alias(p, "--augment3d", "--augment brain3d=true", "old_augment3d", const=True)
    return p


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """Per-dataset values of --model, --time-budget, --patch-size, --batch-size, --augment (old spellings merged)."""
    old = {k: v for k, v in vars(args).items() if k.startswith("old_") and v is not None}
    extra = {"time_budget": [], "patch_size": [], "batch_size": [], "augment": []}
    for key, value in old.items():
        name = key[4:]
        if name in ("budget2d", "budget3d"):
            extra["time_budget"].append(f"{'nuclei2d' if name.endswith('2d') else 'brain3d'}={value}")
        elif name in ("patch2d", "patch3d"):
            extra["patch_size"].append(f"{'nuclei2d' if name.endswith('2d') else 'brain3d'}={value}")
        elif name in ("batch2d", "batch3d"):
            extra["batch_size"].append(f"{'nuclei2d' if name.endswith('2d') else 'brain3d'}={value}")
        elif name == "no_augment2d":
            extra["augment"].append("nuclei2d=false")
        elif name == "augment3d":
            extra["augment"].append("brain3d=true")
    models = per_dataset(args.model, "--model", DEFAULTS["model"])
    args.models_by_dataset = {d: [m for m in v.split(",") if m.strip()] for d, v in models.items()}
    args.budget = _per_dataset_values(
        per_dataset((args.time_budget or []) + extra["time_budget"], "--time-budget", DEFAULTS["time_budget"]),
        "--time-budget", _positive_seconds,
    )  # fmt: skip
    args.patch = _per_dataset_values(
        per_dataset((args.patch_size or []) + extra["patch_size"], "--patch-size", DEFAULTS["patch_size"]),
        "--patch-size", _ints,
    )  # fmt: skip
    args.batch = _per_dataset_values(
        per_dataset((args.batch_size or []) + extra["batch_size"], "--batch-size", DEFAULTS["batch_size"]),
        "--batch-size", _positive,
    )  # fmt: skip
    args.augment_by_dataset = _per_dataset_values(
        per_dataset((args.augment or []) + extra["augment"], "--augment", DEFAULTS["augment"]), "--augment", _bool
    )
    for dataset, dims in (("nuclei2d", 2), ("brain3d", 3)):
        if len(args.patch[dataset]) != dims:
            raise InputError(f"--patch-size {dataset}= needs {dims} sizes, got {args.patch[dataset]}")
    return args


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0 seconds")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be ≥ 1")
    return value


def main(argv: list[str] | None = None, prog: str = "fusionseg bench real-data") -> int:
    args = build_parser(prog).parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in args.datasets if d not in DATASETS]
    if bad or not args.datasets:
        raise InputError(f"--datasets: unknown {bad or 'empty list'}; choose from {', '.join(DATASETS)}")
    resolve_options(args)
    for dataset in args.datasets:
        for spec in args.models_by_dataset[dataset]:
            parse_model_spec(spec, args.features)  # unknown names fail before any training
    if args.data_root is None:
        args.data_root = default_data_root()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    records, copy_dice = run_benchmark(args)
    rows = summarise(records)
    pairs = paired_differences(records)
    _write_csv(output / "real_data_runs.csv", records)
    _write_csv(output / "real_data.csv", rows)
    if pairs:
        _write_csv(output / "real_data_pairs.csv", [{**p, "seeds": p["seeds"], "diffs": p["diffs"]} for p in pairs])
    table = format_tables(rows, args.budget, copy_dice)
    if pairs:
        table += "\n\n" + format_pairs(pairs)
    command = f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    loads = [r["load_before"] for r in records]
    machine = f"{os.cpu_count()} CPU cores, 1-min load average {min(loads)}–{max(loads)} during the runs"
    write_text_atomic(output / "real_data.md", f"# Real-data benchmark\n\n`{command}`\n\n{machine}\n\n{table}\n")
    print(table)
    print(machine)
    print(f"wrote {output / 'real_data_runs.csv'}, {output / 'real_data.csv'} and {output / 'real_data.md'}")
    return 0


if __name__ == "__main__":  # run the package module (not this __main__ copy), errors as one line like the CLI
    from fusionseg.bench import real_data
    from fusionseg.errors import FusionSegError

    try:
        raise SystemExit(real_data.main(sys.argv[1:], "python -m fusionseg.bench.real_data"))
    except FusionSegError as err:
        print(f"python -m fusionseg.bench.real_data: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
