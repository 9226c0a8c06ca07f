"""The peers, measured on the same server in the same run as lambda-db.

* SQLAlchemy ``QueuePool(pool_pre_ping=True)``: a pool checkout (which pings) and checkin;
* psycopg 3's ``ConnectionPool(check=ConnectionPool.check_connection)``: the same;
* a bare ``SELECT 1`` on an open psycopg2 connection: what any pre-ping costs at least.

Each pool holds one connection, as a Lambda environment would.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg2

from bench.core import FAST_CALLS, SLOW_CALLS, lambda_db_cases
from bench.timing import interleaved

__all__ = ["PRE_PING_PEERS", "peer_cases", "warm_path"]

Cases = dict[str, tuple[Callable[[], object], int, int]]

SQLALCHEMY = "SQLAlchemy QueuePool(pool_pre_ping=True) checkout"
PSYCOPG_POOL = "psycopg_pool check_connection checkout"
BARE_PING = "bare SELECT 1 (psycopg2)"
#: The peers that ping before handing out a connection (the 10x goal's comparison).
PRE_PING_PEERS = (SQLALCHEMY, PSYCOPG_POOL)


@contextmanager
def peer_cases(kwargs: Mapping[str, Any]) -> Iterator[Cases]:
    """Open the peers on ``kwargs`` (psycopg2 connect arguments); close them afterwards."""
    import sqlalchemy
    from psycopg_pool import ConnectionPool

    with ExitStack() as stack:
        engine = sqlalchemy.create_engine(
            "postgresql+psycopg2://",
            creator=lambda: psycopg2.connect(**kwargs),
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,
        )
        stack.callback(engine.dispose)

        def sqlalchemy_checkout() -> None:
            engine.pool.connect().close()

        conninfo = " ".join(f"{k}={v}" for k, v in kwargs.items() if k != "connect_timeout")
        pool = ConnectionPool(
            conninfo, min_size=1, max_size=1, check=ConnectionPool.check_connection, open=True
        )
        stack.callback(pool.close)
        pool.wait()

        def psycopg_pool_checkout() -> None:
            with pool.connection():
                pass

        bare = psycopg2.connect(**kwargs)
        bare.autocommit = True
        stack.callback(bare.close)
        cursor = bare.cursor()

        def ping() -> None:
            cursor.execute("SELECT 1")

        yield {
            SQLALCHEMY: (sqlalchemy_checkout, SLOW_CALLS, 20),
            PSYCOPG_POOL: (psycopg_pool_checkout, SLOW_CALLS, 20),
            BARE_PING: (ping, SLOW_CALLS, 20),
        }


def warm_path(env: Mapping[str, str], kwargs: Mapping[str, Any], *, rounds: int) -> dict[str, Any]:
    """lambda-db's warm path beside the peers: medians (µs) and ratios, one interleaved run."""
    ours = lambda_db_cases(env)
    with peer_cases(kwargs) as theirs:
        samples = interleaved({**ours, **theirs}, rounds=rounds)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    headline = medians["lambda-db get_connection()"]
    return {
        "rounds": rounds,
        "calls_per_round": {"get_connection": FAST_CALLS, "others": SLOW_CALLS},
        "median_us": medians,
        "p99_batch_us": {
            name: sorted(values)[int(0.99 * (len(values) - 1))] for name, values in samples.items()
        },
        "ratio_to_get_connection": {name: m / headline for name, m in medians.items()},
    }
