"""Connection slots taken by other clients: the role's limit and the server's.

The article's error, both ways: ``ALTER ROLE ... CONNECTION LIMIT`` (``too many
connections for role``) and a server whose ``max_connections`` is used up (``remaining
connection slots are reserved``). lambda-db waits with full jitter inside the
invocation's deadline: it gets in when a slot frees, and otherwise fails with
``ConnectionLimitError`` before Lambda would have killed it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import lambda_db
from lambda_db import Database
from lambda_db._backoff import Backoff
from lambda_db.testing import LambdaContext
from lambda_db_lab.appdb import ledger_app_db
from lambda_db_lab.ledger import (
    Ledger,
    committed_ids,
    create_table,
    handler_for,
    invoke,
    new_event,
)
from lambda_db_lab.localpg import LocalPostgres
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb
from tests.support.drivers import with_driver

SEED = 20260317


@dataclass
class Full:
    """A database whose slots are all held by other clients."""

    app_db: AppDb
    holders: list[Any]
    #: The server's words for it.
    wording: str

    def free_one(self) -> None:
        """Close one holder and wait until the server has let its slot go."""
        holder = self.holders.pop()
        pid = holder.info.backend_pid
        holder.close()
        wait_for(
            lambda: not self.app_db.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
            "a slot to free",
        )


@pytest.fixture(scope="module")
def small_pg() -> Iterator[LocalPostgres]:
    """A server with five slots for ordinary roles (8 minus 3 reserved for superusers)."""
    with LocalPostgres(settings={"max_connections": "8"}) as server:
        yield server


@pytest.fixture(params=["role-limit", "server-limit"])
def full(request: pytest.FixtureRequest, app_db: AppDb, db_driver: str) -> Iterator[Full]:
    if request.param == "role-limit":
        target = app_db
        create_table(target)
        target.query(f'ALTER ROLE "{target.role}" CONNECTION LIMIT 2')
        holders = [target.connect(application_name="holder") for _ in range(2)]
        wording = "too many connections for role"
    else:
        server: LocalPostgres = request.getfixturevalue("small_pg")
        target = with_driver(ledger_app_db(server), db_driver)
        holders = [target.connect(application_name="holder") for _ in range(5)]
        wording = "remaining connection slots are reserved"
    full = Full(target, holders, wording)
    try:
        yield full
    finally:
        for conn in full.holders:
            conn.close()


def recording_sleep(waits: list[float], then: Callable[[], None] | None = None) -> Any:
    """A real sleep that appends each wait to ``waits``, then calls ``then``."""

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)
        if then is not None:
            then()

    return sleep


def test_waits_with_full_jitter_and_gets_in_when_a_slot_frees(full: Full) -> None:
    waits: list[float] = []

    def during_the_third_wait() -> None:
        if len(waits) == 3:
            full.free_one()  # another client leaves

    sleep = recording_sleep(waits, then=during_the_third_wait)
    db = Database(full.app_db.settings, sleep=sleep, backoff=Backoff(rng=random.Random(SEED)))
    outcome = invoke(handler_for(db), new_event(), LambdaContext(timeout=10))

    assert outcome.ok, outcome
    rng, backoff = random.Random(SEED), Backoff()
    assert waits == [rng.uniform(0.0, backoff.ceiling(i)) for i in range(3)]  # full jitter
    assert db.stats.retries == 3
    Ledger.check([outcome], committed_ids(full.app_db)).assert_exact()
    db.close()


def test_typed_error_inside_the_deadline_when_no_slot_frees(full: Full) -> None:
    waits: list[float] = []
    db = Database(full.app_db.settings, sleep=recording_sleep(waits))
    context = LambdaContext(timeout=2)
    deadline = time.monotonic() + 2.0
    handler = handler_for(db)
    with pytest.raises(lambda_db.ConnectionLimitError) as info:
        handler(new_event(), context)

    assert time.monotonic() < deadline
    error = info.value
    assert full.wording in str(error)
    assert error.attempts == len(waits) + 1 >= 2
    assert error.budget is not None
    assert 0 < error.budget < 2.0  # the budget ends before the function's deadline
    assert committed_ids(full.app_db) == []
    db.close()
