"""``fusionseg demo``: the shipped real nuclei image (or ``--phantoms``) → train a small DFF U-Net → predict →
evaluate → report (no downloads).

Parsing only; the work is :func:`fusionseg.workflows.demo.run_demo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionseg.cli.options import add_runtime_options, path

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "fusionseg demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Train, predict and evaluate on the real nuclei image shipped with fusionseg "
        "(12 training tiles, 4 test tiles), or on synthetic phantoms.",
    )
    p.add_argument("--output", type=path, default=Path("fusionseg_demo"), help="folder (default ./fusionseg_demo)")
    p.add_argument("--phantoms", action="store_true", help="synthetic phantoms instead of the real nuclei image")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of the same pipeline (seconds)")
    p.add_argument("--fusion", default="dff", help="fusion of the U-Net skips (default dff)")
    p.add_argument("--seed", type=int, default=0, help="data (phantoms) and training seed (default 0)")
    add_runtime_options(p, amp=False)
    return p


def main(argv: list[str] | None = None, prog: str = "fusionseg demo") -> int:
    from fusionseg.workflows.demo import run_demo

    args = build_parser(prog).parse_args(argv)
    return run_demo(**vars(args))
