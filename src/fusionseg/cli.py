"""``fusionseg`` command line: ``fusionseg COMMAND --help`` for each command.

Each command lives in its own module and is imported only when used, so ``fusionseg --help``
is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fusionseg import __version__

BENCHMARKS = {
    "modules": "fusionseg.bench.modules",
    "dnet": "fusionseg.bench.dnet",
    "ds_transunet": "fusionseg.bench.ds_transunet",
}


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    return int(module.main(rest) or 0)


def _not_yet(name: str):
    def run(args: argparse.Namespace, rest: list[str]) -> int:
        print(f"fusionseg {name}: not yet available in this version")
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fusionseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train, predict and evaluate on built-in synthetic phantoms")
    p.set_defaults(func=_not_yet("demo"))

    p = sub.add_parser("bench", help="benchmarks (options after the name go to the benchmark)", add_help=True)
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
