"""The driver matrix: the functional and fault tests run once per DB-API driver.

A test that takes ``app_db`` (or ``db_driver``) under ``tests/functional`` or
``tests/faults`` runs for ``psycopg2`` and for ``psycopg`` (psycopg 3): the directories'
``conftest.py`` call :func:`parametrize` from ``pytest_generate_tests``, ``app_db`` then
carries ``DB_DRIVER``, and everything built from it (``app_db.settings``, the environment
``env_db`` exports, the processes ``Environments`` starts) uses that driver. A test whose
subject exists for one driver only says so, with its reason::

    @pytest.mark.drivers("psycopg2", reason="large objects: psycopg 3 has no such API")

The test bodies stay driver-neutral: what differs (the error classes, COPY, what a plain
connection of that driver looks like in the server's log) is in :class:`Kit`, the ``dbapi``
fixture. ``$LAMBDA_DB_DRIVERS`` (``psycopg2,psycopg`` by default) narrows the matrix for a
quick local run.

Example::

    def test_x(app_db: AppDb, dbapi: Kit) -> None:
        with pytest.raises(dbapi.errors.UniqueViolation): ...
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
from types import ModuleType
from typing import Any, Final

import pytest

__all__ = ["DEFAULT", "DRIVERS", "ENV_DRIVERS", "Kit", "chosen", "parametrize", "with_driver"]

#: Every driver lambda-db supports (``lambda_db.config.DRIVERS``), the default first.
DRIVERS: Final = ("psycopg2", "psycopg")
DEFAULT: Final = "psycopg2"
#: Narrows the matrix: ``LAMBDA_DB_DRIVERS=psycopg`` runs the psycopg 3 half only.
ENV_DRIVERS: Final = "LAMBDA_DB_DRIVERS"

#: The DB-API module each driver name imports.
_MODULES: Final = {"psycopg2": "psycopg2", "psycopg": "psycopg"}


def chosen() -> tuple[str, ...]:
    """The drivers this run tests (``$LAMBDA_DB_DRIVERS``, else all)."""
    raw = os.environ.get(ENV_DRIVERS, "").strip()
    if not raw:
        return DRIVERS
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in DRIVERS]
    if unknown:
        raise ValueError(f"{ENV_DRIVERS}: unknown driver(s) {unknown}; known: {DRIVERS}")
    return names


def parametrize(metafunc: pytest.Metafunc) -> None:
    """``pytest_generate_tests`` for a directory in the matrix: one case per driver.

    Only tests that use ``db_driver`` (``app_db`` does) are parametrized; a test marked
    ``@pytest.mark.drivers(...)`` runs for the drivers it names.
    """
    if "db_driver" not in metafunc.fixturenames:
        return
    names = chosen()
    marker = metafunc.definition.get_closest_marker("drivers")
    if marker is not None:
        if not marker.kwargs.get("reason"):
            raise ValueError(f"{metafunc.definition.nodeid}: drivers(...) needs a reason=")
        names = tuple(n for n in names if n in marker.args)
    params = [
        pytest.param(
            name,
            id=name,
            marks=pytest.mark.skipif(
                importlib.util.find_spec(_MODULES[name]) is None,
                reason=f"{_MODULES[name]} is not installed (pip install 'lambda-db[{name}]')",
            ),
        )
        for name in names
    ]
    metafunc.parametrize("db_driver", params)


def with_driver(env: Any, driver: str) -> Any:
    """``env`` (an ``AppDb``, a ``DB_*`` mapping) set to use ``driver``; returns it."""
    if driver == DEFAULT:
        env.pop("DB_DRIVER", None)  # the default, as most deployments leave it
    else:
        env["DB_DRIVER"] = driver
    return env


class Kit:
    """What differs between the drivers, for tests that touch the DB-API directly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module: ModuleType = importlib.import_module(_MODULES[name])
        #: ``psycopg2.errors`` or ``psycopg.errors``: the SQLSTATE classes share names.
        self.errors: ModuleType = importlib.import_module(_MODULES[name] + ".errors")
        self.Error: type[Exception] = self.module.Error
        self.OperationalError: type[Exception] = self.module.OperationalError

    def __repr__(self) -> str:
        return f"<Kit {self.name}>"

    def connect(self, app_db: Any, **extra: Any) -> Any:
        """A plain connection of this driver as ``app_db``'s role (not through lambda-db),
        with the driver's defaults: what naive code holds at module level."""
        kwargs = app_db.pg.connect_kwargs(
            user=app_db.role, password=app_db.password, dbname=app_db.name, **extra
        )
        return self.module.connect(**kwargs)

    def copy_in(self, cur: Any, sql: str, data: str) -> None:
        """``COPY ... FROM STDIN`` of ``data`` (``copy_expert``, or psycopg 3's ``copy``)."""
        if self.name == "psycopg2":
            cur.copy_expert(sql, io.StringIO(data))
            return
        with cur.copy(sql) as copy:
            copy.write(data)

    def copy_out(self, cur: Any, sql: str) -> str:
        """``COPY ... TO STDOUT``, as text."""
        if self.name == "psycopg2":
            out = io.StringIO()
            cur.copy_expert(sql, out)
            return out.getvalue()
        with cur.copy(sql) as copy:
            return b"".join(bytes(block) for block in copy).decode()

    def ssl_in_use(self, conn: Any) -> bool:
        """Whether ``conn`` talks TLS (psycopg 3 keeps it on the libpq connection)."""
        info = conn.info if self.name == "psycopg2" else conn.pgconn
        return bool(info.ssl_in_use)

    def logged(self, sql: str, *values: str) -> str:
        """How the server's log shows ``sql`` run with ``values`` (SQL literals) by this driver:
        psycopg2 interpolates on the client, psycopg 3 binds ``$1``, ``$2``... on the server."""
        if self.name == "psycopg2":
            return sql % values
        for n in range(1, len(values) + 1):
            sql = sql.replace("%s", f"${n}", 1)
        return sql
