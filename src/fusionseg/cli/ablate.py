"""``fusionseg ablate``: equal-budget comparison of skip fusions (one model per fusion and seed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.cli.options import positive_float, positive_int
from fusionseg.cli.train import FOLD_OPTIONS, PER_RUN, config_from_args
from fusionseg.cli.train import build_parser as train_parser
from fusionseg.errors import InputError

__all__ = ["build_parser", "main"]

MAX_SEEDS = 100  # fusions × seeds × --time-budget is the run time: a typo of 10⁸ seeds would never end


def _default_fusions() -> str:
    """Every registered fusion, the reference (concat) first."""
    from fusionseg.fusion import list_fusions

    return ",".join(["concat", *(f for f in list_fusions() if f != "concat")])


def build_parser(prog: str = "fusionseg ablate") -> argparse.ArgumentParser:
    p = train_parser(prog, skip=PER_RUN + FOLD_OPTIONS, output=Path("runs/ablate"), epochs=1000, val_every=1000)
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
    from dataclasses import replace

    from fusionseg.files import folder_lock
    from fusionseg.fusion import list_fusions
    from fusionseg.runtime.devices import set_threads
    from fusionseg.workflows.ablate import format_ablation_table, run_ablation, write_ablation

    args = build_parser(prog).parse_args(argv)
    fusions = [f.strip().lower() for f in args.fusions.split(",") if f.strip()]
    unknown = [f for f in fusions if f not in list_fusions()]
    if unknown or not fusions:
        raise InputError(f"--fusions: unknown {unknown or 'empty list'}; choose from {', '.join(list_fusions())}")
    twice = sorted({f for f in fusions if fusions.count(f) > 1})
    if twice:
        raise InputError(f"--fusions lists {', '.join(twice)} more than once; name each fusion once")
    if args.num_seeds > MAX_SEEDS:
        raise InputError(f"--num-seeds {args.num_seeds} is more than a comparison needs (at most {MAX_SEEDS}); e.g. 3")
    if args.time_budget is None:
        raise InputError("--time-budget is required: the training seconds every run gets (e.g. --time-budget 60)")
    threads, reason = set_threads(args.threads)  # once: every run gets the same thread count
    print(f"CPU threads: {threads} ({reason}), for every run")
    base = replace(config_from_args(args), time_budget=None, threads=threads)
    base.check()  # before the folder lock creates --output (e.g. inside --data)
    seeds = [base.seed + k for k in range(args.num_seeds)]
    output = Path(args.output)
    with folder_lock(output, "ablation folder"):
        rows, records, reference = run_ablation(base, fusions, seeds, args.time_budget, output)
        table = format_ablation_table(rows, reference, args.time_budget)
        command = "fusionseg ablate " + " ".join(argv or [])
        report = f"# Fusion ablation ({base.model})\n\n`{command}`\n\n{table}\n"
        written = write_ablation(output, rows, records, report)
    print(table)
    print(f"wrote {', '.join(map(str, written))}")
    return 0
