"""Time for the AWS modes' network calls: bounds per attempt, attempts within a budget, and
the memory of a failed fetch. Pure arithmetic on an injected clock: no botocore here.

* :class:`Bounds` says what one kind of call may take: per-attempt connect and read
  timeouts, a number of attempts, and the budget used when the caller has no deadline;
* :class:`Attempts` makes the attempts within the caller's budget: each attempt's
  timeouts are cut to fit what is left, and the full-jitter waits between attempts are
  counted too;
* :class:`FailureMemory` is the negative cache: a failed fetch is remembered for a short
  period on the provider's monotonic clock, so a dead endpoint costs one bounded wait per
  period, not one per invocation.

Example::

    attempts = Attempts(bounds, budget, clock=time.monotonic, sleep=time.sleep)
    for _ in attempts:
        try:
            return call(*bounds.timeouts(attempts.remaining()))
        except TransientError as exc:
            last = exc
    raise DatabaseUnavailableError(f"... {attempts.summary()}") from last
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from lambda_db._backoff import Backoff
from lambda_db.errors import ConfigurationError, DatabaseUnavailableError, LambdaDbError

__all__ = ["Attempts", "Bounds", "BudgetSpent", "FailureMemory"]


class BudgetSpent(Exception):
    """Too little of the budget is left to start (the next step of) an attempt."""


@dataclass(frozen=True)
class Bounds:
    """What one kind of AWS call may take.

    ``connect`` and ``read`` are the per-attempt timeouts when time is plentiful,
    ``attempts`` the most attempts per fetch, ``total`` the budget when the caller gives
    none. :meth:`timeouts` cuts both to fit what is left (a third of it at most for
    connecting: a TCP or TLS handshake to an AWS endpoint takes milliseconds), rounded
    down to :attr:`STEP` so that nearby budgets share a client.

    >>> b = Bounds(connect=2.0, read=5.0, attempts=3, total=10.0)
    >>> b.timeouts(10.0), b.timeouts(2.25), b.timeouts(0.3)
    ((2.0, 5.0), (0.7, 1.5), (0.1, 0.2))
    """

    connect: float
    read: float
    attempts: int
    total: float

    #: No attempt starts with less than this left (seconds).
    MIN_ATTEMPT: ClassVar[float] = 0.3
    #: Timeouts are multiples of this (seconds), and never less.
    STEP: ClassVar[float] = 0.1

    def timeouts(self, left: float) -> tuple[float, float]:
        """``(connect, read)`` for an attempt with ``left`` seconds left; their sum fits."""
        connect = _step_down(min(self.connect, left / 3))
        return connect, _step_down(min(self.read, left - connect))


def _step_down(seconds: float) -> float:
    """``seconds`` rounded down to a multiple of :attr:`Bounds.STEP`, at least one step."""
    steps = math.floor(seconds / Bounds.STEP + 1e-9)
    return round(max(1, steps) * Bounds.STEP, 3)


class Attempts:
    """The attempts of one fetch within ``budget`` seconds (``None``: ``bounds.total``).

    Iterating makes attempts: the first at once; each next one after a full-jitter wait
    (:class:`~lambda_db._backoff.Backoff`), and only while fewer than ``bounds.attempts``
    were made and the wait plus :attr:`Bounds.MIN_ATTEMPT` fits in what is left. Inside an
    attempt, :meth:`remaining` is what its calls may use (their timeouts come from it).

    A silent endpoint (every attempt waits its whole read timeout), on a fake clock:

    >>> now, bounds = [0.0], Bounds(connect=2.0, read=5.0, attempts=3, total=10.0)
    >>> attempts = Attempts(bounds, 2.0, clock=lambda: now[0], sleep=lambda s: None)
    >>> for _ in attempts:
    ...     now[0] += bounds.timeouts(attempts.remaining())[1]
    >>> attempts.made, round(now[0], 2)
    (2, 1.8)
    """

    def __init__(
        self,
        bounds: Bounds,
        budget: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.bounds = bounds
        self.budget = bounds.total if budget is None else max(0.0, budget)
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self.start = clock()
        self.deadline = self.start + self.budget
        self.made = 0

    def __iter__(self) -> Iterator[int]:
        while self.made < self.bounds.attempts:
            wait = self._backoff.delay(self.made - 1) if self.made else 0.0
            if self.deadline - self._clock() - wait < self.bounds.MIN_ATTEMPT:
                return
            if wait > 0:
                self._sleep(wait)
            self.made += 1
            yield self.made

    def remaining(self) -> float:
        """Seconds left for the current attempt; :class:`BudgetSpent` below two steps."""
        left = self.deadline - self._clock()
        if left < 2 * Bounds.STEP:
            raise BudgetSpent(f"the {self.budget:.2f} s budget ran out during the attempt")
        return left

    def elapsed(self) -> float:
        """Seconds since the first attempt started."""
        return self._clock() - self.start

    def summary(self) -> str:
        """How many attempts, how long they took, and the budget (for error messages)."""
        return f"{self.made} attempt(s) in {self.elapsed():.2f} s (budget {self.budget:.2f} s)"


class FailureMemory:
    """The last failed fetch, remembered for a period on the provider's monotonic clock.

    >>> memory = FailureMemory()
    >>> memory.remember(DatabaseUnavailableError("Secrets Manager did not answer"), at=100.0)
    >>> memory.active(now=105.0, period=10.0) is not None, memory.active(110.0, 10.0)
    (True, None)
    >>> str(memory.recalled(now=105.0, period=10.0))  # doctest: +NORMALIZE_WHITESPACE
    'Secrets Manager did not answer [remembered: this failed 5.0 s ago; no new attempt
    for another 5.0 s]'
    """

    def __init__(self) -> None:
        self._error: LambdaDbError | None = None
        self._at = 0.0

    def __repr__(self) -> str:
        kind = type(self._error).__name__ if self._error is not None else "nothing"
        return f"<FailureMemory {kind}>"

    def remember(self, error: LambdaDbError, *, at: float) -> None:
        """Remember ``error`` as the outcome of a fetch that ended at ``at``."""
        self._error, self._at = error, at

    def forget(self) -> None:
        """A fetch succeeded (or the provider was invalidated): nothing to remember."""
        self._error = None

    def active(self, now: float, period: float) -> LambdaDbError | None:
        """The remembered error while ``period`` seconds have not passed since it."""
        if self._error is None or now - self._at >= period:
            return None
        return self._error

    def recalled(self, now: float, period: float) -> LambdaDbError:
        """A new error of the same kind that says the failure is remembered, since when,
        and until when (raise it ``from`` :meth:`active`'s error)."""
        error = self._error
        assert error is not None
        age = now - self._at
        message = (
            f"{error} [remembered: this failed {age:.1f} s ago; no new attempt for "
            f"another {max(0.0, period - age):.1f} s]"
        )
        if isinstance(error, ConfigurationError):
            return ConfigurationError(message, variable=error.variable)
        if isinstance(error, DatabaseUnavailableError):
            return DatabaseUnavailableError(message, attempts=0, budget=error.budget)
        return LambdaDbError(message)
