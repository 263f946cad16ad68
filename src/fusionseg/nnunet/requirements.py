"""The one check that nnunetv2 is installed (before anything imports it).

Example:
    >>> require_nnunetv2("fusionseg nnunet install")   # InputError naming docs/nnunet.md when absent
"""

from __future__ import annotations

import importlib.util

from fusionseg.errors import InputError

__all__ = ["require_nnunetv2"]


def require_nnunetv2(what: str) -> None:
    """Raise :class:`InputError` saying ``what`` needs nnunetv2 when it is not installed."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise InputError(f"{what} needs nnunetv2; install it without touching torch as docs/nnunet.md says")
