"""Fixtures for the fault matrix: a ledger table, and a private server for destructive cases.

Restarting or starving the suite's shared server would break other tests, so those cases
get their own :class:`~lambda_db_lab.localpg.LocalPostgres`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lambda_db_lab.localpg import LocalPostgres
from tests.support.fixtures import ledger_db

__all__ = ["ledger_db", "private_pg"]


@pytest.fixture(scope="package")
def private_pg() -> Iterator[LocalPostgres]:
    """A server of our own, free to be restarted or filled.

    ``synchronous_commit`` is on: the suite's server turns it off for speed, and then a
    crash (``stop -m immediate``) loses commits already acknowledged, which the ledger
    rightly reports as lost invocations.
    """
    with LocalPostgres(settings={"max_connections": "40", "synchronous_commit": "on"}) as server:
        yield server
