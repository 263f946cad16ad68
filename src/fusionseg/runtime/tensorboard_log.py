"""TensorBoard scalars beside ``log.csv`` when the ``tensorboard`` package is installed (else a no-op).

``torch.utils.tensorboard`` needs the ``tensorboard`` package (``pip install tensorboard``, in the
``dev`` extra). Without it :class:`ScalarLog` says so once and does nothing. Only the main process
creates one (the trainer keeps a disabled log on the other ranks).

Example:
    >>> log = ScalarLog(Path("runs/exp1"))               # events.out.tfevents.* in runs/exp1
    >>> log.add(step=50, values={"train/loss": 0.71, "val/dice": 0.62})
    >>> log.close()
    # view with: tensorboard --logdir runs
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["ScalarLog", "tensorboard_available"]


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write event files (the ``tensorboard`` package is importable)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class ScalarLog:
    """Scalars written to TensorBoard event files in ``folder``; ``folder=None`` or no tensorboard → no-op.

    Args:
        folder: where the event files go (the run folder, beside ``log.csv``).
        purge_step: when resuming, events at or after this step from the interrupted run are hidden.
        log: receives the one-line note when tensorboard is not installed.
    """

    def __init__(
        self, folder: str | Path | None, purge_step: int | None = None, log: Callable[[str], None] = print
    ) -> None:
        self.writer = None
        if folder is None:
            return
        if not tensorboard_available():
            log("TensorBoard logging skipped: the tensorboard package is not installed (pip install tensorboard)")
            return
        from torch.utils.tensorboard import SummaryWriter

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per tag at ``step`` (NaN/None values are skipped); flushed at once."""
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag, float(value), global_step=int(step))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
