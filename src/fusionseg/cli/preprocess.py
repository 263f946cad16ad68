"""``fusionseg preprocess``: see :mod:`fusionseg.cli.plan`."""

from __future__ import annotations

from functools import partial

from fusionseg.cli.plan import build_parser as _build_parser
from fusionseg.cli.plan import preprocess_main as main

__all__ = ["build_parser", "main"]

build_parser = partial(_build_parser, preprocess=True)
