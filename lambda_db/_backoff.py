"""Full-jitter exponential backoff: one small object, every input injectable.

The wait before retry ``n`` (0-based) is drawn uniformly from
``[0, min(CAP, BASE * 2**n)]``: the "Full Jitter" strategy of
Marc Brooker, *Exponential Backoff And Jitter* (AWS Architecture Blog, 2015).
Spreading retries uniformly is what keeps a burst of Lambda environments that all
met a full server from coming back in lockstep.

Tests monkeypatch ``Backoff.BASE``/``Backoff.CAP`` or pass ``rng``.

Example::

    >>> import random
    >>> b = Backoff(rng=random.Random(7))
    >>> 0 <= b.delay(0) <= Backoff.BASE
    True
    >>> b.ceiling(30) == Backoff.CAP
    True
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Computes jittered waits; the caller owns the clock, the deadline and the sleep."""

    #: First ceiling, seconds.
    BASE = 0.05
    #: Largest ceiling, seconds.
    CAP = 2.0

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)

    def reseed(self) -> None:
        """Draw a fresh seed from the OS (after a SnapStart restore, copies must differ)."""
        self.rng.seed()

    def ceiling(self, retry: int) -> float:
        """Upper bound of the wait before retry ``retry`` (0-based)."""
        return float(min(self.CAP, self.BASE * 2 ** min(retry, 32)))

    def delay(self, retry: int) -> float:
        """A wait drawn uniformly from ``[0, ceiling(retry)]``."""
        return self.rng.uniform(0.0, self.ceiling(retry))
