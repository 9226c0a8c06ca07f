"""Shared fixtures: one throwaway PostgreSQL for the whole run, a fresh database per test.

The server is real (``lambda_db_lab.localpg``): TCP on 127.0.0.1, scram-sha-256, TLS with a
CA made for this run. Nothing here mocks psycopg2.

The functional and fault tests run once per DB-API driver (``tests/support/drivers.py``):
``app_db`` carries ``DB_DRIVER`` from the ``db_driver`` fixture, ``psycopg2`` outside them.

The pin recorder (``tests/support/pinlog.py``) watches that server for the whole run: it
logs every statement, and after each test that used it, every statement a non-superuser
session sent during the test is checked against RDS Proxy's pinning list. ``$LAMBDA_DB_PINLOG``
chooses what a finding does: ``enforce`` fails the test, ``report`` lists it in the
summary, ``off`` turns the statement log off. A test that pins on purpose says so with
``@pytest.mark.pins("why")``: its findings are reported, never failed.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

import lambda_db
from lambda_db_lab.appdb import AppDb as AppDb  # re-exported: the tests import it from here
from lambda_db_lab.localpg import LocalPostgres
from tests.support.drivers import DEFAULT as DEFAULT_DRIVER
from tests.support.drivers import Kit, with_driver
from tests.support.pinlog import (
    ENV_MODE,
    Finding,
    Mode,
    PinLog,
    findings,
    mode_from_env,
    verdict,
)

_counter = itertools.count()

#: A pinning statement fails its test (``LAMBDA_DB_PINLOG=report`` lists them instead).
PINLOG_DEFAULT: Mode = "enforce"
PINLOG_MODE: Mode = mode_from_env(PINLOG_DEFAULT)

_FINDINGS = pytest.StashKey[dict[str, tuple[list[Finding], str | None]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pins(reason): the test pins a connection on purpose; the pin recorder reports its "
        "findings instead of failing it",
    )
    config.addinivalue_line(
        "markers",
        "drivers(*names, reason): in the driver matrix, run only for these drivers (say why)",
    )
    config.stash[_FINDINGS] = {}


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    """The suite's PostgreSQL server (TLS available on ``pg.tls_port``), logging statements."""
    server = LocalPostgres(
        tls=True, settings={"max_connections": "120"}, statement_log=PINLOG_MODE != "off"
    )
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pinlog(pg: LocalPostgres) -> Iterator[PinLog]:
    """The suite server's statement log (``with pinlog.capture() as block: ...``)."""
    if PINLOG_MODE == "off":
        pytest.skip(f"{ENV_MODE}=off: the server keeps no statement log")
    log = PinLog(pg)
    try:
        yield log
    finally:
        log.close()


@pytest.fixture(autouse=True)
def _pin_recorder(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the suite's server: no pinning statement, unless marked ``pins``."""
    if PINLOG_MODE == "off" or "pg" not in request.fixturenames:
        yield
        return
    log: PinLog = request.getfixturevalue("pinlog")
    yield
    found = findings(log.take(), log.superusers)
    marker = request.node.get_closest_marker("pins")
    pins = None if marker is None else str(marker.args[0] if marker.args else "marked pins")
    if found or pins is not None:
        request.config.stash[_FINDINGS][request.node.nodeid] = (found, pins)
    failure = verdict(found, pins=pins, mode=PINLOG_MODE)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What the pin recorder found: by reason and statement; tests marked ``pins`` in full."""
    seen = config.stash.get(_FINDINGS, {})
    if not seen:
        return
    tr = terminalreporter
    tr.section(f"pin recorder ({ENV_MODE}={PINLOG_MODE})")
    tests_with = sum(1 for found, _ in seen.values() if found)
    total = sum(len(found) for found, _ in seen.values())
    tr.write_line(
        f"{total} pinning statement(s) from non-superuser sessions in {tests_with} test(s)"
    )
    shapes: dict[str, set[str]] = {}
    for nodeid, (found, _) in seen.items():
        for f in found:
            shape = re.sub(r"'[^']*'|\b\d+\b", "?", " ".join(f.record.sql.split()))[:100]
            shapes.setdefault(f"{f.reason}: {shape}", set()).add(nodeid)
    for shape, nodeids in sorted(shapes.items(), key=lambda kv: -len(kv[1])):
        tr.write_line(f"  {len(nodeids):4d} test(s)  {shape}")
    for nodeid, (found, pins) in seen.items():
        if pins is None and config.get_verbosity() < 1:
            continue
        why = f" [pins: {pins}]" if pins is not None else ""
        tr.write_line(f"{nodeid}: {len(found)} finding(s){why}")
        for f in found[:3]:
            tr.write_line(f"    {f}")


@pytest.fixture
def db_driver() -> str:
    """The DB-API driver (``DB_DRIVER``) of the test: ``psycopg2``, except in the driver
    matrix (``tests/functional``, ``tests/faults``), where each test runs for each driver."""
    return DEFAULT_DRIVER


@pytest.fixture
def dbapi(db_driver: str) -> Kit:
    """What differs between the drivers (error classes, COPY, a plain connection)."""
    return Kit(db_driver)


@pytest.fixture
def app_db(pg: LocalPostgres, db_driver: str) -> Iterator[AppDb]:
    """A new database owned by a new role, dropped (with its sessions) afterwards; its
    ``DB_*`` variables name the test's driver."""
    name = f"app{os.getpid()}_{next(_counter)}"
    password = "pw-" + secrets.token_urlsafe(12)
    pg.create_role(name, password)
    pg.create_database(name, owner=name)
    db = with_driver(AppDb(pg, name, password), db_driver)
    try:
        yield db
    finally:
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture(autouse=True)
def _reset_default_database() -> Iterator[None]:
    """Every test starts and ends without the module-level default connection."""
    lambda_db.reset()
    yield
    lambda_db.reset()


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.advance(30)``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock."""
    return FakeClock()
