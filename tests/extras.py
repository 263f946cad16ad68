"""Optional extras the tests need, and the skip reasons naming them (``pip install -e ".[dev]"`` has neither)."""

from __future__ import annotations

import importlib.util

import pytest

NEEDS_DNA = (
    "needs dynamic-network-architectures (nnU-Net's networks, from the nnunet extra: "
    "pip install --no-deps -r requirements/nnunet-nodeps.txt, docs/nnunet.md)"
)
NEEDS_HIGHDICOM = 'needs highdicom (DICOM SEG output, the dicom extra: pip install "fusionseg[dicom]")'
NEEDS_NNUNET = "needs nnunetv2 (the nnunet extra: install it as docs/nnunet.md says)"


def has(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        return False


def require(module: str, reason: str):
    """``pytest.importorskip`` with a reason naming the extra."""
    return pytest.importorskip(module, reason=reason)
