"""The wall clock of a training run and its time budget (``config.time_budget``).

The budget counts the whole run — setup, training, validation and checkpoint writes, summed over resumed
invocations. Training stops when the next iteration would not leave room for the closing validation and
checkpoint (their last measured cost, at most ``BUDGET_VALIDATION_SHARE`` of the budget); a validation
that would still overrun scores only the cases that fit. The LR schedule ends at the budget
(:meth:`RunClock.fraction_used`).

Example:
    >>> clock = RunClock(60.0)                  # a 60 s budget; RunClock(None): no budget, never out of time
    >>> clock.elapsed()                         # wall seconds since the clock started (+ earlier invocations)
    0.0001
    >>> clock.out_of_time(num_val_cases=4)      # no room for another iteration and the closing validation?
    False
"""

from __future__ import annotations

import time

__all__ = ["BUDGET_FIRST_GUESS", "BUDGET_VALIDATION_SHARE", "RunClock"]

BUDGET_VALIDATION_SHARE = 0.25  # at most this share of a time budget is kept back for the closing validation
BUDGET_FIRST_GUESS = 0.1  # share kept back for validation before its cost has been measured


class RunClock:
    """Wall seconds of a run against ``budget`` (None: no budget), with the measured costs that decide
    what is kept back: ``val_case_s`` (one validation case), ``save_s`` (the last checkpoint write),
    ``first_step_s`` (an epoch's start to its first iteration's end)."""

    def __init__(self, budget: float | None) -> None:
        self.budget = budget
        self.val_case_s: float | None = None
        self.save_s = 0.0
        self.first_step_s = 0.0
        self.restart()

    def restart(self) -> None:
        """Count from now; ``before``: seconds spent by earlier invocations of a resumed run (set on resume)."""
        self._start, self.before = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        """Wall seconds of the run so far (earlier invocations of a resumed run included)."""
        return self.before + time.perf_counter() - self._start

    def fraction_used(self, training_start: float | None) -> float:
        """Share of the budget's training part (after ``training_start``: planning, preprocessing) used so far."""
        start = training_start or 0.0
        return (self.elapsed() - start) / max(self._seconds() - start, 1e-9)

    def reserve(self, num_val_cases: int) -> float:
        """Seconds kept back for the closing validation of ``num_val_cases`` and the checkpoint write
        (measured, else a share of the budget)."""
        budget = self._seconds()
        if not num_val_cases:
            validation = 0.0
        elif self.val_case_s is None:
            validation = BUDGET_FIRST_GUESS * budget
        else:
            validation = min(self.val_case_s * num_val_cases, BUDGET_VALIDATION_SHARE * budget)
        return validation + self.save_s

    def out_of_time(self, num_val_cases: int, closings: int = 1, extra: float = 0.0) -> bool:
        """Whether training must stop now to end inside the budget, leaving room for ``closings`` validations
        (of ``num_val_cases``) and checkpoint writes and ``extra`` seconds; False without a budget."""
        if self.budget is None:
            return False
        return self.elapsed() + closings * self.reserve(num_val_cases) + extra >= self.budget

    def validation_limit(self, closing: bool, num_val_cases: int) -> float:
        """Elapsed seconds by which a validation must end: the closing one leaves room for the checkpoint
        write, one before it also for another epoch's first iteration and the closing validation."""
        kept = 0.0 if closing else self.first_step_s + self.reserve(num_val_cases)
        return self._seconds() - self.save_s - kept

    def _seconds(self) -> float:
        """The budget (asked only of a run that has one)."""
        if self.budget is None:
            raise ValueError("RunClock(None) has no time budget; pass the budget's seconds")
        return float(self.budget)
