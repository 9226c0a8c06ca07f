"""One invocation's time model, built once and read everywhere.

Lambda gives each invocation a budget (``context.get_remaining_time_in_millis()``). lambda-db
keeps a *margin* of it free, so that the function can still answer (a ``503``, a rollback)
before Lambda's own timeout kills the environment::

    started          connect_by                cutoff        end
       |------ connect, statements ------|--- margin/2 ---|--- margin/2 ---|
                                          ^ statement_timeout (opt-in) ends here
                                                          ^ the watchdog cuts the socket

* ``connect_by``: no connect attempt starts after it, and an opt-in per-invocation
  ``statement_timeout`` ends there;
* ``cutoff``: the client-side deadline: a statement still waiting then has its socket shut
  down (:mod:`lambda_db._watchdog`), and no ``COMMIT`` is sent after it;
* ``end``: Lambda's deadline.

Without a Lambda context there is no ``end``: connecting gets ``DB_CONNECT_BUDGET`` seconds
and statements are not bounded client-side. All values are on the :class:`~lambda_db.Database`'s
injected clock.

Example::

    >>> from lambda_db.config import Settings
    >>> d = Deadline.start(Settings(), remaining=3.0, clock=lambda: 100.0)
    >>> d.margin, d.connect_by, d.cutoff, d.end
    (0.75, 102.25, 102.625, 103.0)
    >>> Deadline.start(Settings(), remaining=None, clock=lambda: 100.0).cutoff is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lambda_db.config import Settings

__all__ = ["Deadline", "LambdaContext", "remaining_seconds"]


class LambdaContext(Protocol):
    """The part of the Lambda context object we use."""

    def get_remaining_time_in_millis(self) -> int: ...


class Deadline:
    """When an invocation must be done: see the module docstring for the three moments."""

    __slots__ = ("clock", "connect_by", "cutoff", "end", "margin", "started")

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        started: float,
        end: float | None,
        margin: float,
        connect_budget: float,
    ) -> None:
        self.clock = clock
        self.started = started
        self.end = end
        self.margin = margin
        if end is None:
            self.connect_by = started + connect_budget
            self.cutoff: float | None = None
        else:
            self.connect_by = end - margin
            self.cutoff = end - margin / 2

    @classmethod
    def start(
        cls,
        settings: Settings,
        *,
        remaining: float | None,
        clock: Callable[[], float],
        started: float | None = None,
    ) -> Deadline:
        """The deadline of an invocation that had ``remaining`` seconds left (``None``: no
        context) at ``started`` (default: now)."""
        now = clock() if started is None else started
        return cls(
            clock=clock,
            started=now,
            end=None if remaining is None else now + remaining,
            margin=settings.margin_for(remaining),
            connect_budget=settings.connect_budget,
        )

    def left(self) -> float:
        """Seconds until ``connect_by`` (negative once it has passed)."""
        return self.connect_by - self.clock()

    def budget(self) -> float:
        """Seconds from the start to ``connect_by``: the budget an error message names."""
        return max(0.0, self.connect_by - self.started)

    def past_cutoff(self) -> bool:
        """True once the client-side deadline has come (never without a Lambda context)."""
        return self.cutoff is not None and self.clock() >= self.cutoff

    def __repr__(self) -> str:
        if self.end is None:
            return f"<Deadline connect within {self.budget():.3f} s, statements unbounded>"
        return (
            f"<Deadline {self.end - self.started:.3f} s, margin {self.margin:.3f} s, "
            f"{self.left():.3f} s left>"
        )


def remaining_seconds(context: Any) -> float | None:
    """The invocation's time left from a Lambda context, or ``None`` without one.

    >>> remaining_seconds(None) is None
    True
    """
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if getter is None:
        return None
    return float(getter()) / 1000.0
