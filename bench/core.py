"""lambda-db's own figures: the warm path (and proof it makes no round trip), the
invocation scope, the watchdog's cost per statement, and the cost of ``import lambda_db``.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg2

import lambda_db
from bench.timing import import_cost, interleaved
from lambda_db._socket import Transport
from lambda_db._watchdog import WATCHDOG
from lambda_db.testing import LambdaContext

__all__ = ["import_figures", "lambda_db_cases", "no_round_trip", "watchdog_overhead"]

#: ``get_connection()`` calls per round (each batch is 100 calls).
FAST_CALLS = 10_000
#: Statements per round for anything that makes a round trip.
SLOW_CALLS = 1_000


def lambda_db_cases(env: Mapping[str, str]) -> dict[str, tuple[Callable[[], object], int, int]]:
    """The warm-path cases for :func:`bench.timing.interleaved`, connected and warm.

    ``env`` (the ``DB_*`` variables) is exported, as Lambda does, so that the public
    ``lambda_db.get_connection()`` configures itself.
    """
    os.environ.update(env)
    lambda_db.reset()
    lambda_db.get_connection()
    db = lambda_db.default_database()
    context = LambdaContext(timeout=30.0)

    def invocation() -> None:
        with db.invocation(context):
            db.get_connection()

    return {
        "lambda-db get_connection()": (lambda_db.get_connection, FAST_CALLS, 100),
        "lambda-db invocation scope (nothing sent)": (invocation, SLOW_CALLS, 20),
    }


def no_round_trip(calls: int = 10_000, patience: float = 10.0) -> dict[str, Any]:
    """``get_connection()`` with its server backend stopped (SIGSTOP): finishing proves
    no call waited for the server. Needs permission to signal the backend (root here)."""
    conn = lambda_db.get_connection()
    pid = conn.info.backend_pid
    stats = lambda_db.default_database().stats
    before = (stats.reuses, stats.pings, stats.connects)
    done = threading.Event()

    def hammer() -> None:
        for _ in range(calls):
            lambda_db.get_connection()
        done.set()

    try:
        os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        return {"verified": False, "why": "no permission to SIGSTOP the backend"}
    try:
        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        finished = done.wait(patience)
    finally:
        os.kill(pid, signal.SIGCONT)
    thread.join()
    after = (stats.reuses, stats.pings, stats.connects)
    return {
        "verified": finished and after[1:] == before[1:],
        "calls": calls,
        "reuses": after[0] - before[0],
        "pings": after[1] - before[1],
        "connects": after[2] - before[2],
    }


def watchdog_overhead(connect_kwargs: Mapping[str, Any], rounds: int) -> dict[str, float]:
    """What the client-side deadline costs an invocation: one ``arm`` and one ``disarm`` of
    the watchdog (no wait callback: statements themselves cost nothing more), beside a
    ``SELECT 1`` round trip for scale."""
    conn = psycopg2.connect(**connect_kwargs)
    conn.autocommit = True
    cur = conn.cursor()
    transport = Transport(conn.fileno())

    def bare() -> None:
        cur.execute("SELECT 1")

    def armed() -> None:
        WATCHDOG.arm(transport, time.monotonic() + 3600)
        WATCHDOG.disarm(transport)

    samples = interleaved(
        {"bare": (bare, SLOW_CALLS, 20), "arm+disarm": (armed, FAST_CALLS, 100)},
        rounds=rounds,
    )
    transport.close()
    conn.close()
    plain = statistics.median(samples["bare"])
    watched = statistics.median(samples["arm+disarm"])
    return {
        "statement_us": plain,
        "arm_disarm_us": watched,
        "overhead_pct": 100.0 * watched / plain,
    }


def import_figures(repeats: int) -> dict[str, dict[str, object]]:
    """``import lambda_db`` beside its driver and the AWS Advanced Python Wrapper."""
    return import_cost(["lambda_db", "psycopg2", "aws_advanced_python_wrapper"], repeats=repeats)
