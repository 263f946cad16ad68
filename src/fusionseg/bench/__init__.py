"""Benchmarks: ``fusionseg bench NAME [options]`` runs ``fusionseg.bench.NAME.main``.

Every benchmark measures its baseline in the same run and prints ratios.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("modules", "dnet", "ds_transunet", "real_data")


def main(argv: list[str], prog: str = "fusionseg bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=BENCHMARKS)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(f"fusionseg.bench.{args.name}")
    return int(module.main(rest, f"{prog} {args.name}") or 0)
