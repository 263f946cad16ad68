"""Benchmarks: ``fusionseg bench NAME [options]`` runs ``fusionseg.bench.NAME.main``.

Every benchmark measures its baseline in the same run and prints ratios.
"""

from __future__ import annotations

import argparse
import importlib

# command name → module (names use hyphens like the commands)
BENCHMARKS = {
    "modules": "modules",
    "dnet": "dnet",
    "ds-transunet": "ds_transunet",
    "real-data": "real_data",
    "train-loop": "train_loop",
    "plug": "plug",
    "nnunet": "nnunet",
    "scale": "scale",
    "predict": "predict",
}


def main(argv: list[str], prog: str = "fusionseg bench") -> int:
    name = argv[0] if argv else None
    if name in BENCHMARKS:  # everything after the name (``--help`` too) goes to the benchmark
        module = importlib.import_module(f"fusionseg.bench.{BENCHMARKS[name]}")
        return int(module.main(argv[1:], f"{prog} {name}") or 0)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=list(BENCHMARKS))
    parser.parse_args(argv)  # prints usage or the error for a missing/unknown name
    return 2
