"""The seed article's error, reproduced with ALTER ROLE ... CONNECTION LIMIT, and survived."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import lambda_db
from lambda_db import Database
from lambda_db._backoff import Backoff
from lambda_db.testing import LambdaContext
from tests.conftest import AppDb
from tests.support.drivers import Kit


@pytest.fixture
def full_role(app_db: AppDb) -> tuple[AppDb, Any]:
    """``app_db``'s role limited to one connection, and that one taken."""
    app_db.query(f"ALTER ROLE {app_db.role} CONNECTION LIMIT 1")
    blocker = app_db.connect(application_name="blocker")
    return app_db, blocker


class RecordingSleep:
    """A real sleep that remembers every wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def test_the_articles_error_is_real(full_role: tuple[AppDb, Any], dbapi: Kit) -> None:
    app_db, blocker = full_role
    with pytest.raises(dbapi.OperationalError, match="too many connections for role"):
        dbapi.connect(app_db)
    blocker.close()


def test_retries_with_jitter_then_typed_error_within_budget(
    full_role: tuple[AppDb, Any], dbapi: Kit
) -> None:
    app_db, blocker = full_role
    sleep = RecordingSleep()
    budget = 1.5
    db = Database(app_db.settings.replace(connect_budget=budget), sleep=sleep)
    started = time.monotonic()
    with pytest.raises(lambda_db.ConnectionLimitError) as info:
        db.get_connection()
    elapsed = time.monotonic() - started
    error = info.value
    assert error.attempts == len(sleep.waits) + 1 >= 3
    assert error.budget is not None
    assert abs(error.budget - budget) < 0.05
    assert f"{error.attempts} attempt(s)" in str(error)
    assert "1.50 s budget" in str(error)
    assert "too many connections for role" in str(error)
    assert isinstance(error.__cause__, dbapi.OperationalError)
    assert elapsed < budget + 0.5  # the last attempt starts before the deadline
    # Full jitter: every wait under its ceiling, and not all at the ceiling.
    backoff = Backoff()
    assert all(w <= backoff.ceiling(i) for i, w in enumerate(sleep.waits))
    assert len(set(sleep.waits)) == len(sleep.waits)
    assert db.stats.connects == 0
    blocker.close()


def test_success_when_a_slot_frees(full_role: tuple[AppDb, Any]) -> None:
    app_db, blocker = full_role
    sleep = RecordingSleep()
    db = Database(app_db.settings.replace(connect_budget=10.0), sleep=sleep)
    threading.Timer(0.4, blocker.close).start()
    conn = db.get_connection()
    assert conn.closed == 0
    assert sleep.waits  # it did wait
    assert db.stats.retries == len(sleep.waits)
    db.close()


def test_budget_comes_from_the_lambda_context(full_role: tuple[AppDb, Any]) -> None:
    app_db, blocker = full_role
    db = Database(app_db.settings.replace(connect_budget=60.0, deadline_margin=0.5))
    started = time.monotonic()
    with (
        pytest.raises(lambda_db.ConnectionLimitError) as info,
        db.invocation(LambdaContext(timeout=1.5)),
    ):
        db.get_connection()
    assert time.monotonic() - started < 1.5  # never outlives the invocation
    assert info.value.budget is not None
    assert info.value.budget <= 1.0  # 1.5 s less the explicit 0.5 s margin
    blocker.close()


def test_database_unavailable_when_nothing_listens(app_db: AppDb) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    db = Database(app_db.settings.replace(port=port, connect_budget=0.5), sleep=lambda s: None)
    with pytest.raises(lambda_db.DatabaseUnavailableError) as info:
        db.get_connection()
    assert not isinstance(info.value, lambda_db.ConnectionLimitError)
    assert info.value.attempts >= 2
