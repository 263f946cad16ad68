"""Worker processes for reading and preprocessing cases: ``with process_pool(4) as pool: pool.map(...)``.

Workers fork where the platform can (as torch's DataLoader does on Linux), so they start at once
instead of re-importing torch and MONAI, and run one torch thread each (they share the cores).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of ``workers`` processes (fork if available, else spawn), one torch thread each."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_one_thread)
