"""Real-data benchmark: fusion U-Nets vs MONAI ``BasicUNet`` at an equal wall-clock training budget.

Two tasks are built from the real data shipped with the package (:mod:`fusionseg.resources`, builders in
:mod:`fusionseg.data.real`; see ``docs/real_data.md`` for the exact protocol):

- ``nuclei2d``: one 512×512 fluorescence field; train on the left half (columns x < 256), test on the
  right half (x ≥ 256, not mirrored); score = foreground Dice.
- ``brain3d``: Colin27 T1 with the AAL atlas merged into 7 hemisphere-agnostic groups, resampled to
  2 mm by the training pipeline; train on the left hemisphere, test on the right hemisphere mirrored
  onto the left one's grid; score = mean Dice over the 7 classes.

Every (dataset, seed, model) run trains with :func:`fusionseg.training.trainer.train` for the same
training-time budget (the LR schedule ends at the budget; data loading counts, checkpoint writes do
not) and is scored with sliding-window inference and :func:`fusionseg.evaluation.metrics.dice_iou`.
The peer, MONAI ``BasicUNet``, is the registered model ``monai_basicunet`` (``fusionseg.nets.external``), so it
goes through exactly the same loop, loss, optimiser and evaluation; ``basicunet+dff`` is the same network with
its skips fused by DFF (``fusionseg.plug``). Seeds run outside, models inside, so a change of machine load
hits every model alike. Statistics and tables: :mod:`fusionseg.bench.real_data_stats`.

Outputs in ``--output``: ``data/`` (the built datasets), ``runs/DATASET/MODEL_seedK/`` (each
training run), ``real_data_runs.csv`` (one row per run), ``real_data.csv`` (mean ± std per model and
dataset), ``real_data_pairs.csv`` (paired differences) and ``real_data.md`` (the tables and the command).

Options that differ per dataset take ``DATASET=VALUE`` entries (a value without ``DATASET=`` applies to
every dataset): ``--model nuclei2d=basicunet,basicunet+dff brain3d=basicunet,dnet_small``,
``--time-budget nuclei2d=180 brain3d=420``, ``--patch-size nuclei2d=128,128``, ``--batch-size brain3d=2``.

Example:
    $ fusionseg bench real-data --num-seeds 3 --threads 2
    $ fusionseg bench real-data --num-seeds 1 --time-budget 3   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionseg.bench.real_data_stats import PEER, format_pairs, format_tables, paired_differences, summarise
from fusionseg.cli.options import add_runtime_options, boolean, positive_float, positive_int, sizes
from fusionseg.data.preprocessing import Preprocessing, own_preprocessing
from fusionseg.data.real import build_brain3d, build_nuclei2d
from fusionseg.errors import InputError
from fusionseg.files import write_csv_atomic, write_text_atomic
from fusionseg.nets.registry import list_models
from fusionseg.resources import REAL_DATASETS, real_data_path

__all__ = [
    "DATASETS",
    "build_parser",
    "label_copy_dice",
    "main",
    "parse_model_spec",
    "resolve_options",
    "run_benchmark",
]

DATASETS = REAL_DATASETS
BUILDERS = {"nuclei2d": build_nuclei2d, "brain3d": build_brain3d}

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
            f"--model: unknown model {text!r}; use basicunet, unet+FUSION, NAME+FUSION or one of {list_models()}"
        )
    if fusion:
        from fusionseg.fusion import list_fusions

        if fusion not in list_fusions():
            raise InputError(f"--model: unknown fusion in {text!r}; choose from {', '.join(list_fusions())}")
    widths = {"unet": list(features), "monai_basicunet": [*features, features[0]]}
    return ModelSpec(text, model, fusion or None, {"features": widths[model]} if model in widths else {})


# ------------------------------------------------------------------------------------------ running


def _score(best: Path, data_dir: Path, device: str, overlap: float) -> tuple[float, dict[str, float], int]:
    """Mean foreground Dice, per-class Dice (each averaged over the test cases), and the model's parameters."""
    from monai.data import Dataset

    from fusionseg import data
    from fusionseg.checkpoints.loading import load_model
    from fusionseg.evaluation.metrics import dice_iou
    from fusionseg.inference.sliding_window import predict_volume
    from fusionseg.runtime.devices import pick_device

    model, stored, _ = load_model(best, pick_device(device))
    pre = own_preprocessing(stored, best)
    info = data.scan_dataset(data_dir)
    cases = [c for c in info.test_cases if c.label is not None]
    names = pre.label_layout.names
    per_class: dict[str, list[float]] = {names[k]: [] for k in range(1, pre.num_classes)}
    dataset = Dataset([data.case_dict(c) for c in cases], data.eval_transforms(pre))
    for item in dataset:  # type: ignore[attr-defined]  # no __iter__: iterated by __getitem__
        pred = predict_volume(model, item["image"], pre, overlap=overlap).argmax(0).numpy()
        label = np.asarray(item["label"])[0]
        for k in range(1, pre.num_classes):
            per_class[names[k]].append(dice_iou(pred == k, label == k)[0])
    class_means = {name: float(np.mean(v)) for name, v in per_class.items()}
    params = sum(p.numel() for p in model.parameters())
    return float(np.mean(list(class_means.values()))), class_means, params


def label_copy_dice(data_dir: Path, pre: Preprocessing) -> float:
    """Mean class Dice of the training label used as the prediction for the test case (same grid; no learning).

    For brain3d this is the atlas' own left/right symmetry at the evaluation resolution: a reference
    for what copying the mirrored training hemisphere would score.
    """
    from fusionseg import data
    from fusionseg.evaluation.metrics import dice_iou

    info = data.scan_dataset(data_dir)
    transform = data.eval_transforms(pre)
    train = np.asarray(transform(data.case_dict(info.cases[0]))["label"])[0]
    test = np.asarray(transform(data.case_dict(info.test_cases[0]))["label"])[0]
    if train.shape != test.shape:
        raise InputError(f"{data_dir}: train and test label grids differ ({train.shape} vs {test.shape})")
    return float(np.mean([dice_iou(train == k, test == k)[0] for k in range(1, pre.num_classes)]))


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def run_benchmark(args: argparse.Namespace) -> tuple[list[dict], dict[str, float]]:
    """Build the datasets, train and score every (dataset, seed, model).

    Returns one record per run, and brain3d's :func:`label_copy_dice` (``{"brain3d": dice}``).
    """
    from fusionseg.runtime.devices import set_threads
    from fusionseg.training.config import TrainConfig
    from fusionseg.training.trainer import train

    root = Path(args.data_root)
    output = Path(args.output)
    features = list(args.features)
    threads, reason = set_threads(args.threads)  # once: every run gets the same thread count
    print(f"CPU threads: {threads} ({reason}), for every run")
    records, copy_dice = [], {}
    for dataset in args.datasets:
        specs = [parse_model_spec(m, features) for m in args.models_by_dataset[dataset]]
        source = root / dataset
        if not source.is_dir():
            raise InputError(f"{source}: real data folder missing; pass --data-root (the folder holding {dataset}/)")
        data_dir = BUILDERS[dataset](output / "data" / dataset, source)
        s = {
            "budget": args.budget[dataset],
            "patch": args.patch[dataset],
            "batch": args.batch[dataset],
            "augment": args.augment_by_dataset[dataset],
        }
        for seed in range(args.seed, args.seed + args.num_seeds):
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
            from fusionseg.checkpoints.checkpoint import load_checkpoint

            pre = Preprocessing.from_dict(load_checkpoint(best)["preprocessing"])
            copy_dice[dataset] = label_copy_dice(data_dir, pre)
    return records, copy_dice


def _write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts) as CSV, columns in first-seen order, written atomically."""
    write_csv_atomic(path, rows, list(dict.fromkeys(k for r in rows for k in r)))


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


def _defaults_text(option: str) -> str:
    return " ".join(f"{d}={v}" for d, v in DEFAULTS[option].items())


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-root", type=Path, default=None,
        help="folder with nuclei2d/ and brain3d/ (default: the copy shipped with fusionseg)",
    )  # fmt: skip
    p.add_argument("--output", type=Path, default=Path("runs/bench_real_data"), help="results folder")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: nuclei2d,brain3d")
    p.add_argument(
        "--model", nargs="+", metavar="[DATASET=]SPECS",
        help="comma-separated models per dataset: basicunet (MONAI peer), NAME+FUSION (NAME with that skip fusion: "
        "unet+dff, basicunet+tif, nnunet_plain+dff, ...) or registered names. Default "
        + _defaults_text("model"),
    )  # fmt: skip
    p.add_argument("--num-seeds", type=positive_int, default=3, help="seeds per model (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed: seeds are seed … seed+num_seeds-1 (default 0)")
    p.add_argument(
        "--time-budget", nargs="+", metavar="[DATASET=]SECONDS",
        help="wall-clock seconds per training run, validation included (default " + _defaults_text("time_budget") + ")",
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
        help="fusionseg's augmentation (default " + _defaults_text("augment") + "; 3D flips hurt at short budgets)",
    )  # fmt: skip
    p.add_argument("--features", type=sizes, default=(16, 32, 64, 128, 256), help="U-Net widths (peer: + first)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw", help="default adamw")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument("--iters-per-epoch", type=positive_int, default=50, help="iterations between checkpoint writes")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap at test time (default 0.5)")
    add_runtime_options(p, amp=False, progress=False)
    return p


def _per_dataset_values(text: dict[str, str], option: str, parse: Callable[[str], object]) -> dict[str, object]:
    values = {}
    for dataset, value in text.items():
        try:
            values[dataset] = parse(value)
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise InputError(f"{option} {dataset}={value}: {err}") from None
    return values


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """Per-dataset values of --model, --time-budget, --patch-size, --batch-size and --augment."""
    models = per_dataset(args.model, "--model", DEFAULTS["model"])
    args.models_by_dataset = {d: [m for m in v.split(",") if m.strip()] for d, v in models.items()}
    for option, dest, parse in (
        ("--time-budget", "budget", positive_float),
        ("--patch-size", "patch", lambda text: list(sizes(text))),
        ("--batch-size", "batch", positive_int),
        ("--augment", "augment_by_dataset", boolean),
    ):
        key = option[2:].replace("-", "_")
        entries = per_dataset(getattr(args, key), option, DEFAULTS[key])
        setattr(args, dest, _per_dataset_values(entries, option, parse))
    for dataset, dims in (("nuclei2d", 2), ("brain3d", 3)):
        if len(args.patch[dataset]) != dims:
            raise InputError(f"--patch-size {dataset}= needs {dims} sizes, got {args.patch[dataset]}")
    return args


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
        args.data_root = real_data_path()
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
