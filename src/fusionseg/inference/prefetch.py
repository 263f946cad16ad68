"""Read and preprocess the next case in a background thread while the current one is predicted.

:class:`CasePrefetcher` wraps ``load(case_id, files)``: :meth:`~CasePrefetcher.get` returns the case asked for
(loaded ahead when it was the expected next one, else loaded now) and starts loading the case after it in
the list (skipping those ``skip`` says are done). At most one case is loaded ahead (a bounded queue of one:
two images in memory, never more). A loading error is raised by ``get`` of that case, so it is reported
as that case's failure.

Example:
    >>> loader = CasePrefetcher(cases, lambda cid, files: load_for_inference(files, pre))
    >>> for cid, files in cases:
    ...     image, meta = loader.get(cid, files)    # the next case is being read meanwhile
    >>> loader.close()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["CasePrefetcher"]


class CasePrefetcher:
    """Loads ``cases`` [(case_id, files)] one ahead of :meth:`get` in a single background thread."""

    def __init__(
        self,
        cases: Sequence[tuple[str, Any]],
        load: Callable[[str, Any], Any],
        skip: Callable[[str, Any], bool] | None = None,
    ) -> None:
        self.cases, self.load, self.skip = list(cases), load, skip
        self.position = {cid: i for i, (cid, _) in enumerate(self.cases)}
        self.ahead: tuple[str, Future] | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionseg-prefetch")

    def get(self, cid: str, files: Any) -> Any:
        """The loaded case ``cid`` (raises what its loading raised); starts loading the next one."""
        future = None
        if self.ahead is not None:
            ahead_cid, ahead_future = self.ahead
            self.ahead = None
            if ahead_cid == cid:
                future = ahead_future
            else:
                ahead_future.cancel()
        try:
            return future.result() if future is not None else self.load(cid, files)
        finally:
            self._start_after(cid)

    def _start_after(self, cid: str) -> None:
        for next_cid, next_files in self.cases[self.position.get(cid, len(self.cases)) + 1 :]:
            if self.skip is None or not self.skip(next_cid, next_files):
                self.ahead = (next_cid, self.pool.submit(self.load, next_cid, next_files))
                return

    def close(self) -> None:
        """Stop: a case still loading ahead is finished and dropped."""
        if self.ahead is not None:
            self.ahead[1].cancel()
            self.ahead = None
        self.pool.shutdown(wait=True)

    def __enter__(self) -> CasePrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
