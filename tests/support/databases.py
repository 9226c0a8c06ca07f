"""Databases for tests that use several from threads."""

from __future__ import annotations

from lambda_db import Database
from lambda_db.testing import LambdaContext

__all__ = ["opened"]


def opened(db: Database) -> Database:
    """``db`` with its connection open and idle, nothing sent on it: threads that use it
    then never connect. A connect in one thread while another thread's statement starts
    can fail that statement ("wait callback not available", the known limit in
    ``lambda_db/_psycopg2.py``), which tests of other things must not meet."""
    with db.invocation(LambdaContext(timeout=10)):
        db.get_connection()
    return db
