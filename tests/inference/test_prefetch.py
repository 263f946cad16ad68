"""The next case is loaded in the background, one ahead, and a loading error belongs to its own case."""

from __future__ import annotations

import threading

import pytest

from fusionseg.inference.prefetch import CasePrefetcher


def test_loads_one_case_ahead_in_the_background_and_skips_done_ones():
    loaded = []

    def load(cid, files):
        loaded.append((cid, threading.current_thread().name.startswith("fusionseg-prefetch")))
        if cid == "bad":
            raise OSError(f"{files}: unreadable")
        return cid.upper()

    cases = [("a", 1), ("done", 2), ("bad", 3), ("c", 4)]
    with CasePrefetcher(cases, load, skip=lambda cid, files: cid == "done") as loader:
        assert loader.get("a", 1) == "A"  # loaded now; "bad" (after the done case) starts loading
        with pytest.raises(OSError, match="3: unreadable"):
            loader.get("bad", 3)
        assert loader.get("c", 4) == "C"
    assert loaded == [("a", False), ("bad", True), ("c", True)]


def test_an_unexpected_case_is_loaded_now():
    with CasePrefetcher([("a", 1), ("b", 2), ("c", 3)], lambda cid, files: files) as loader:
        assert loader.get("a", 1) == 1
        assert loader.get("c", 3) == 3  # "b" was loading ahead: dropped
    assert loader.ahead is None
    with CasePrefetcher([], lambda cid, files: files) as loader:  # prefetch off
        assert loader.get("x", 5) == 5 and loader.ahead is None
