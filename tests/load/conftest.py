"""Fixtures for the load runs."""

from tests.support.fixtures import ledger_db

__all__ = ["ledger_db"]
