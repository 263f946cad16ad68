"""Benchmarks: ``fusionseg bench NAME [options]`` runs ``fusionseg.bench.NAME.main``.

Every benchmark measures its baseline in the same run and prints ratios.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("modules", "dnet", "ds_transunet", "real_data", "nnunet")


def main(argv: list[str], prog: str = "fusionseg bench") -> int:
    if argv and argv[0] in BENCHMARKS:  # everything after the name (``--help`` too) goes to the benchmark
        module = importlib.import_module(f"fusionseg.bench.{argv[0]}")
        return int(module.main(argv[1:], f"{prog} {argv[0]}") or 0)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=BENCHMARKS)
    parser.parse_args(argv)  # prints usage or the error for a missing/unknown name
    return 2
