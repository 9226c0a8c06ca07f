"""Counters: the stable interface for what happened (log text is not)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["MetricsSink", "Stats"]


class MetricsSink(Protocol):
    """What we need of Powertools ``Metrics`` (``add_metric(name=..., unit=..., value=...)``)."""

    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class Stats:
    """What a :class:`~lambda_db.Database` did, counted.

    ``connects`` connections opened; ``reuses`` warm hand-outs of an existing one;
    ``health_check_failures`` connections found dead or too old and replaced; ``pings``
    idle-threshold round trips; ``retries`` waits between connect attempts;
    ``auth_refreshes`` credential refreshes after an authentication failure;
    ``leftover_rollbacks`` transactions of an earlier invocation found open;
    ``invocations`` scopes entered, ``checkouts`` those that used the database at all;
    ``commits`` and ``rollbacks`` their outcomes; ``conflict_retries`` handlers run again
    after a serialization failure or deadlock; ``connections_lost`` invocations whose
    connection died under them, ``deadlines_exceeded`` those cut at the deadline (a subset).

    >>> Stats().as_dict()["connects"]
    0
    """

    __slots__ = (
        "auth_refreshes",
        "checkouts",
        "commits",
        "conflict_retries",
        "connections_lost",
        "connects",
        "deadlines_exceeded",
        "health_check_failures",
        "invocations",
        "leftover_rollbacks",
        "pings",
        "retries",
        "reuses",
        "rollbacks",
    )

    auth_refreshes: int
    checkouts: int
    commits: int
    conflict_retries: int
    connections_lost: int
    connects: int
    deadlines_exceeded: int
    health_check_failures: int
    invocations: int
    leftover_rollbacks: int
    pings: int
    retries: int
    reuses: int
    rollbacks: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and metrics)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return "Stats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"
