"""``fusionseg preprocess``: preprocess a dataset to the cache (options: :mod:`fusionseg.cli.plan`).

Parsing only; the work is :func:`fusionseg.data.run.run_preprocess`.
"""

from __future__ import annotations

from functools import partial

from fusionseg.cli.plan import build_parser as _build_parser

__all__ = ["build_parser", "main"]

build_parser = partial(_build_parser, preprocess=True)


def main(argv: list[str] | None = None, prog: str = "fusionseg preprocess") -> int:
    from fusionseg.data.run import run_preprocess

    args = build_parser(prog).parse_args(argv)
    return run_preprocess(**vars(args))
