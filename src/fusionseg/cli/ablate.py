"""``fusionseg ablate``: equal-budget comparison of skip fusions (one model per fusion and seed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.cli.options import add_alias, positive_float, positive_int
from fusionseg.cli.train import FOLD_OPTIONS, PER_RUN, config_from_args
from fusionseg.cli.train import build_parser as train_parser
from fusionseg.errors import InputError

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg ablate") -> argparse.ArgumentParser:
    p = train_parser(prog, skip=PER_RUN + FOLD_OPTIONS, output=Path("runs/ablate"), epochs=1000, val_every=1000)
    p.description = "Equal-budget comparison of skip fusions (trains one model per fusion and seed)."
    p.add_argument(
        "--fusion", default="concat,add,dff,tif", help="comma-separated fusions (default concat,add,dff,tif)"
    )
    add_alias(p, "--fusions", "--fusion", "fusion")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per fusion: --seed, --seed+1, ... (default 3)")
    p.add_argument(
        "--time-budget", type=positive_float, required=False, help="training seconds per run (equal for all)"
    )
    add_alias(p, "--budget", "--time-budget", "time_budget", type=positive_float)
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg ablate") -> int:
    from dataclasses import replace

    from fusionseg.engine.ablate import format_ablation_table, run_ablation, write_csv
    from fusionseg.engine.runtime import set_threads
    from fusionseg.files import write_text_atomic
    from fusionseg.fusion import list_fusions

    args = build_parser(prog).parse_args(argv)
    fusions = [f.strip().lower() for f in args.fusion.split(",") if f.strip()]
    unknown = [f for f in fusions if f not in list_fusions()]
    if unknown or not fusions:
        raise InputError(f"--fusion: unknown {unknown or 'empty list'}; choose from {', '.join(list_fusions())}")
    if args.time_budget is None:
        raise InputError("--time-budget is required: the training seconds every run gets (e.g. --time-budget 60)")
    args.fusion = None
    threads, reason = set_threads(args.threads)  # once: every run gets the same thread count
    print(f"CPU threads: {threads} ({reason}), for every run")
    base = replace(config_from_args(args), time_budget=None, threads=threads)
    seeds = [base.seed + k for k in range(args.seeds)]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows, records, reference = run_ablation(base, fusions, seeds, args.time_budget, output)
    write_csv(output / "ablation_cases.csv", records)
    write_csv(output / "ablation.csv", rows)
    table = format_ablation_table(rows, reference, args.time_budget)
    command = "fusionseg ablate " + " ".join(argv or [])
    write_text_atomic(output / "ablation.md", f"# Fusion ablation ({base.model})\n\n`{command}`\n\n{table}\n")
    print(table)
    print(f"wrote {output / 'ablation.csv'}, {output / 'ablation_cases.csv'} and {output / 'ablation.md'}")
    return 0
