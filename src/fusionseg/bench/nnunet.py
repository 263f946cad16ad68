"""nnU-Net epoch benchmark: ``fusionseg bench nnunet [--iters-per-epoch 250 --val-iterations 50] [--quick]``.

Times one nnU-Net v2 epoch of each fusionseg trainer next to nnU-Net's default ``nnUNetTrainer``
on the same configuration, in one run: phantom datasets in nnU-Net's raw layout (3D 32³ NIfTI and
2D 64² PNG, 5 training cases each) are planned and preprocessed by ``nnUNetv2_plan_and_preprocess``
(not timed), then every trainer is set up as ``nnUNetv2_train`` would (``on_train_start``), warmed
up with 2 training iterations, and its epoch — ``iters-per-epoch`` train steps (forward, Dice+CE on
every deep-supervision output, backward, SGD step) plus ``val-iterations`` validation steps, with
nnU-Net's own data loading and augmentation — is timed. An epoch in nnU-Net is 250 + 50 iterations
(the defaults here). Augmentation runs in this process (``nnUNet_n_proc_DA=0``) unless
``--workers`` says otherwise. Needs nnunetv2 (docs/nnunet.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fusionseg.bench.common import format_table
from fusionseg.cli.options import add_old_spelling
from fusionseg.errors import InputError

__all__ = ["main"]

# (trainer, dataset dims, configuration); the default trainer of a configuration is its baseline
RUNS = (
    ("nnUNetTrainer", 3, "3d_fullres"),
    ("nnUNetTrainerDNetSmall", 3, "3d_fullres"),
    ("nnUNetTrainerDFF", 3, "3d_fullres"),
    ("nnUNetTrainerTIF", 3, "3d_fullres"),
    ("nnUNetTrainer", 2, "2d"),
    ("nnUNetTrainerDSTransUNetSmall", 2, "2d"),
)
DATASETS = {3: ("951", "Dataset951_BenchPhantom3D"), 2: ("952", "Dataset952_BenchPhantom2D")}


def _prepare(work: Path, dims: set[int]) -> None:
    """Raw phantom datasets + nnU-Net planning/preprocessing under ``work`` (skipped when already there)."""
    from fusionseg.nnunet.phantoms import make_nnunet_phantoms

    todo = [d for d in sorted(dims) if not (work / "preprocessed" / DATASETS[d][1] / "nnUNetPlans.json").is_file()]
    if not todo:
        return
    for d in todo:
        if not (work / "raw" / DATASETS[d][1] / "dataset.json").is_file():
            make_nnunet_phantoms(work / "raw" / DATASETS[d][1], spatial_dims=d)
    script = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    ids = [DATASETS[d][0] for d in todo]
    cmd = [str(script), "-d", *ids, "-c", "2d", "3d_fullres", "-np", "1", "-npfp", "1"]
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_n_proc_DA"}  # planning needs ≥ 1 thread
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise InputError(f"nnUNetv2_plan_and_preprocess failed: {(proc.stdout + proc.stderr).strip()[-300:]}")


def _trainer_class(name: str) -> type:
    if name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    from fusionseg.nnunet.trainers import TRAINERS

    return TRAINERS[name]


def _epoch(name: str, dims: int, configuration: str, work: Path, iterations: int, val_iterations: int) -> dict:
    """Set up ``name`` like nnUNetv2_train (fold 0, CPU), warm up, and time one epoch → measurements."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    dataset = DATASETS[dims][1]
    plans = load_json(str(work / "preprocessed" / dataset / "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(work / "preprocessed" / dataset / "dataset.json"))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        trainer = _trainer_class(name)(plans, configuration, 0, dataset_json, torch.device("cpu"))
        trainer.num_epochs = 1
        trainer.on_train_start()
        for _ in range(2):  # warm-up (allocator, first augmentation batches)
            trainer.train_step(next(trainer.dataloader_train))
        start = time.perf_counter()
        trainer.on_train_epoch_start()
        outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(iterations)]
        trainer.on_train_epoch_end(outputs)
        train_s = time.perf_counter() - start
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            outputs = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(val_iterations)]
            trainer.on_validation_epoch_end(outputs)
        epoch_s = time.perf_counter() - start
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
    return {
        "patch": "×".join(map(str, trainer.configuration_manager.patch_size)),
        "batch": trainer.batch_size,
        "params": sum(p.numel() for p in trainer.network.parameters()),
        "train_s": train_s,
        "val_s": epoch_s - train_s,
        "epoch_s": epoch_s,
    }


def build_parser(prog: str = "fusionseg bench nnunet") -> argparse.ArgumentParser:
    """The options of ``fusionseg bench nnunet``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--iters-per-epoch", type=int, default=250, help="training iterations per epoch (nnU-Net: 250)")
    parser.add_argument("--val-iterations", type=int, default=50, help="validation iterations (nnU-Net: 50)")
    parser.add_argument("--quick", action="store_true", help="10 + 2 iterations (a smoke run, not the README numbers)")
    parser.add_argument(
        "--workers", type=int, default=0, help="nnU-Net's data-loading and augmentation processes (0: this one)"
    )
    parser.add_argument("--only", nargs="+", default=None, help="trainers to run (with their configuration's baseline)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the datasets (default: a temp folder)")
    parser.add_argument("--threads", default="auto", help="CPU threads: auto (idle cores, default) or a number")
    for old, new in (("--iterations", "--iters-per-epoch"), ("--da-workers", "--workers"), ("--work", "--workdir")):
        add_old_spelling(parser, old, new)
    return parser


def main(argv: list[str] | None = None, prog: str = "fusionseg bench nnunet") -> int:
    from fusionseg.runtime.devices import set_threads

    args = build_parser(prog).parse_args(argv)
    from fusionseg.nnunet import require_nnunetv2

    require_nnunetv2("fusionseg bench nnunet")
    if args.quick:
        args.iters_per_epoch, args.val_iterations = 10, 2
    if args.iters_per_epoch < 1 or args.val_iterations < 0:
        raise InputError("--iters-per-epoch must be ≥ 1 and --val-iterations ≥ 0")
    threads, reason = set_threads(args.threads)
    chosen = [r for r in RUNS if r[0] != "nnUNetTrainer" and (args.only is None or r[0] in args.only)]
    if args.only is not None and len(chosen) != len(set(args.only)):
        names = ", ".join(r[0] for r in RUNS if r[0] != "nnUNetTrainer")
        raise InputError(f"--only takes trainer names among {names}; got {' '.join(args.only)}")
    configurations = {r[2] for r in chosen}
    runs = [r for r in RUNS if r in chosen or (r[0] == "nnUNetTrainer" and r[2] in configurations)]
    with tempfile.TemporaryDirectory(prefix="fusionseg_bench_nnunet_") as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
            os.environ[key] = str(work / sub)
        os.environ["nnUNet_n_proc_DA"] = str(args.workers)  # noqa: SIM112 (nnU-Net's name)
        print(
            f"torch {torch.__version__}, {threads} threads ({reason}), device cpu; one nnU-Net epoch = "
            f"{args.iters_per_epoch} train + {args.val_iterations} validation iterations, "
            f"augmentation workers {args.workers}",
            flush=True,
        )
        _prepare(work, {r[1] for r in runs})
        results, rows = {}, []
        for name, dims, configuration in runs:
            results[name, configuration] = r = _epoch(
                name, dims, configuration, work, args.iters_per_epoch, args.val_iterations
            )
            base = results[("nnUNetTrainer", configuration)]["epoch_s"]
            rows.append([
                name, configuration, r["patch"], r["batch"], f"{r['params'] / 1e6:.2f} M", r["train_s"], r["val_s"],
                r["epoch_s"], f"{r['epoch_s'] / base:.2f}×",
            ])  # fmt: skip
            print(f"  {name} {configuration}: {r['epoch_s']:.1f} s", file=sys.stderr, flush=True)
    header = ["trainer", "configuration", "patch", "batch", "params", "train s", "val s", "epoch s", "vs nnUNetTrainer"]
    print(format_table(header, rows))
    print("vs nnUNetTrainer = epoch time / nnU-Net's default trainer's epoch time on the same configuration")
    return 0
