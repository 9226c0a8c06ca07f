"""Fixtures for the fault matrix: a ledger table, and a private server for destructive cases.

Restarting or starving the suite's shared server would break other tests, so those cases
get their own :class:`~lambda_db.localpg.LocalPostgres`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lambda_db.localpg import LocalPostgres
from tests.conftest import AppDb
from tests.support.ledger import create_table


@pytest.fixture
def ledger_db(app_db: AppDb) -> AppDb:
    """``app_db`` with the ledger table (one row per successful invocation)."""
    create_table(app_db)
    return app_db


@pytest.fixture(scope="package")
def private_pg() -> Iterator[LocalPostgres]:
    """A server of our own, free to be restarted or filled."""
    with LocalPostgres(settings={"max_connections": "40"}) as server:
        yield server
