"""Full-jitter backoff: bounds, growth, spread."""

from __future__ import annotations

import random

import pytest

from lambda_db._backoff import Backoff


def test_ceiling_doubles_then_caps() -> None:
    b = Backoff()
    assert [b.ceiling(n) for n in range(4)] == [0.05, 0.1, 0.2, 0.4]
    assert b.ceiling(10) == Backoff.CAP == 2.0
    assert b.ceiling(10_000) == Backoff.CAP  # no overflow


def test_delays_stay_within_ceiling_and_spread() -> None:
    b = Backoff(rng=random.Random(1))
    delays = [b.delay(3) for _ in range(2000)]
    assert all(0.0 <= d <= b.ceiling(3) for d in delays)
    # Full jitter: uniform over [0, ceiling], so both halves are well populated.
    low = sum(d < b.ceiling(3) / 2 for d in delays)
    assert 800 < low < 1200
    assert len(set(delays)) > 1900


def test_tunables_are_class_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Backoff, "BASE", 1.0)
    monkeypatch.setattr(Backoff, "CAP", 3.0)
    b = Backoff(rng=random.Random(2))
    assert [b.ceiling(n) for n in range(3)] == [1.0, 2.0, 3.0]
