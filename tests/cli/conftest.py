"""Fixtures for the CLI tests: run ``lambda-db`` in-process, hold sessions open."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
import pytest

from lambda_db.cli.main import main
from lambda_db_lab.appdb import AppDb


@dataclass
class Outcome:
    """A command's exit status and output."""

    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., Outcome]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``cli("doctor", "--json", env=app_db)``: run ``lambda-db`` with ``env`` as DB_*."""

    def run(*argv: str, env: dict[str, str] | None = None) -> Outcome:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capsys.readouterr()
            status = main(list(argv))
            out, err = capsys.readouterr()
        return Outcome(status, out, err)

    return run


Sessions = Callable[..., list[psycopg2.extensions.connection]]


@pytest.fixture
def sessions(app_db: AppDb) -> Iterator[Sessions]:
    """``sessions(3, application_name="x")``: open idle connections as the app role."""
    opened: list[psycopg2.extensions.connection] = []

    def open_sessions(count: int, **extra: Any) -> list[psycopg2.extensions.connection]:
        new = [app_db.connect(**extra) for _ in range(count)]
        opened.extend(new)
        return new

    yield open_sessions
    for conn in opened:
        conn.close()
