"""``fusionseg ablate``: equal-budget comparison of skip fusions (one model per fusion and seed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.cli.options import positive_float, positive_int
from fusionseg.cli.train import build_parser as train_parser
from fusionseg.cli.train import config_from_args
from fusionseg.training.config import one_time_fields

__all__ = ["NOT_FROM_TRAIN", "build_parser", "main"]

# Options of `fusionseg train` that ablate does not take: it sets them per run (the fusion, its own --time-budget
# per run), starts every run from scratch (no --init / --pretrained) and scores its own held-out cases (no folds);
# no run-config file. Nor the one-time actions of an invocation: every run resumes by itself.
NOT_FROM_TRAIN = ("config", "fusion", "time_budget", "init", "pretrained",
                  "fold", "cross_validate", "num_folds", "splits")  # fmt: skip


def _default_fusions() -> str:
    """Every registered fusion, the reference (concat) first."""
    from fusionseg.fusion import list_fusions

    return ",".join(["concat", *(f for f in list_fusions() if f != "concat")])


def build_parser(prog: str = "fusionseg ablate") -> argparse.ArgumentParser:
    skip = NOT_FROM_TRAIN + one_time_fields()
    p = train_parser(prog, skip=skip, output=Path("runs/ablate"), epochs=1000, val_every=1000)
    p.description = "Equal-budget comparison of skip fusions (trains one model per fusion and seed)."
    default = _default_fusions()
    p.add_argument(
        "--fusions", default=default, help=f"comma-separated registered fusions to compare (default {default})"
    )
    p.add_argument(
        "--num-seeds", type=positive_int, default=3, help="seeds per fusion: --seed, --seed+1, ... (default 3)"
    )
    p.add_argument(
        "--time-budget", type=positive_float, required=False, help="wall-clock seconds per run (equal for all)"
    )
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg ablate") -> int:
    from fusionseg.workflows.ablate import run_ablation

    args = build_parser(prog).parse_args(argv)
    fusions = [f.strip().lower() for f in args.fusions.split(",") if f.strip()]
    command = "fusionseg ablate " + " ".join(argv or [])
    return run_ablation(config_from_args(args), fusions, args.num_seeds, command)
