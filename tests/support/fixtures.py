"""Fixtures the fault and load packages share (imported by their ``conftest.py``)."""

from __future__ import annotations

import pytest

from lambda_db_lab.appdb import AppDb
from lambda_db_lab.ledger import create_table

__all__ = ["ledger_db"]


@pytest.fixture
def ledger_db(app_db: AppDb) -> AppDb:
    """``app_db`` with the ledger table (one row per successful invocation)."""
    create_table(app_db)
    return app_db
