"""Shared by the careless-user tests: tiny training options and a snapshot of files to prove nothing was harmed."""

from __future__ import annotations

import hashlib
from pathlib import Path

TINY = ["--model-kwargs", '{"features": [4, 8]}', "--patch-size", "32,32", "--threads", "1", "--no-progress"]
SHORT = ["--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "2"]


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime_ns) of every file under ``roots`` (a root may be a file)."""
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}
