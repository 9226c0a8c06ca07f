"""The pin recorder's rules, on statements and log records written out by hand.

The recorder's controls against a real server are in ``tests/functional/test_statements.py``;
these pin the classification of forms a live test would not think to send.
"""

from __future__ import annotations

import pytest

from tests.support.pinlog import (
    MAX_STATEMENT_BYTES,
    Finding,
    Record,
    findings,
    mode_from_env,
    pinning_reason,
    verdict,
)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("set search_path = app", "SET"),
        ("  /* hint */ SET SESSION statement_timeout = 0", "SET"),
        ("-- comment\nSET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET"),
        ("SELECT 1; set local work_mem = '1MB'", "SET"),
        ("RESET ALL", "RESET"),
        ("SELECT pg_catalog.set_config('search_path', '', false)", "set_config()"),
        ("SELECT SET_CONFIG ('a.b', 'c', true)", "set_config()"),
        ("DISCARD PLANS", "DISCARD"),
        ("PREPARE q (int) AS SELECT $1", "PREPARE"),
        ("EXECUTE q (1)", "EXECUTE of a prepared statement"),
        ("DEALLOCATE ALL", "DEALLOCATE"),
        ("LISTEN jobs", "LISTEN"),
        ("SELECT pg_advisory_lock_shared(7)", "session-level advisory lock"),
        ("SELECT pg_try_advisory_lock(1, 2)", "session-level advisory lock"),
        ("CREATE TEMPORARY TABLE t (n int)", "temporary table"),
        ("CREATE GLOBAL TEMP TABLE t (n int)", "temporary table"),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "temporary table"),
        ("SELECT * INTO TEMP t FROM items", "temporary table"),
        ("DECLARE c CURSOR FOR SELECT 1", "DECLARE (cursor)"),
        ("DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$", "set_config()"),
    ],
)
def test_pinning_statements(sql: str, reason: str) -> None:
    assert pinning_reason(sql) == reason


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_try_advisory_xact_lock_shared(1)",
        "SELECT pg_advisory_unlock(1)",
        "UPDATE t SET n = 1",
        "ALTER ROLE app SET statement_timeout = '5s'",
        "INSERT INTO notes VALUES ('SET x; LISTEN y; set_config(')",
        "INSERT INTO notes VALUES (E'it\\'s; SET x')",
        "SELECT 1 -- SET x",
        "SELECT /* set_config( */ 1",
        "CREATE TABLE temp (n int)",
        "SELECT current_setting('work_mem')",
        "BEGIN",
        "",
    ],
)
def test_harmless_statements(sql: str) -> None:
    assert pinning_reason(sql) is None


def test_sixteen_kilobytes_is_the_limit() -> None:
    at_limit = "SELECT '" + "x" * (MAX_STATEMENT_BYTES - 9) + "'"
    assert len(at_limit.encode()) == MAX_STATEMENT_BYTES
    assert pinning_reason(at_limit) is None
    assert (
        pinning_reason(at_limit + " ")
        == f"statement of {MAX_STATEMENT_BYTES + 1} bytes (over 16 KB)"
    )
    assert pinning_reason("SELECT 'é'" + "x" * (MAX_STATEMENT_BYTES - 10)) is not None  # bytes


def record(message: str, **extra: object) -> Record:
    data = {"user": "app", "dbname": "app", "pid": 42, "message": message, **extra}
    parsed = Record.parse(data)
    assert parsed is not None
    return parsed


def test_records_from_the_extended_protocol() -> None:
    unnamed = record("execute <unnamed>: SELECT $1", application_name="api")
    named = record("execute _pg3_0: SELECT $1")
    portal = record("execute <unnamed>/C_1: SELECT $1")
    fetch = record("execute fetch from S_2/C_3: SELECT $1")
    assert (unnamed.kind, unnamed.sql, unnamed.application_name) == (
        "statement",
        "SELECT $1",
        "api",
    )
    assert unnamed.pinning_reason() is None
    assert portal.prepared is None
    assert named.pinning_reason() == "execution of the named prepared statement '_pg3_0'"
    assert fetch.prepared == "S_2"
    assert record("execute <unnamed>: SET x = 1").pinning_reason() == "SET"


def test_connection_records_carry_the_startup_application_name() -> None:
    plain = record("connection authorized: user=app database=app application_name=lambda db x")
    tls = record(
        "connection authorized: user=app database=app application_name=api "
        "SSL enabled (protocol=TLSv1.3, cipher=TLS_AES_256_GCM_SHA384, bits=256)"
    )
    bare = record("connection authorized: user=app database=app")
    assert [r.application_name for r in (plain, tls, bare)] == ["lambda db x", "api", ""]
    assert plain.kind == "connection"
    assert plain.pinning_reason() is None


def test_other_log_lines_are_not_records() -> None:
    assert Record.parse({"message": "checkpoint starting: time"}) is None
    assert Record.parse({"message": "connection received: host=127.0.0.1"}) is None


def test_superusers_send_no_findings() -> None:
    ours = record("statement: SET work_mem = 1")
    theirs = Record.parse({"user": "postgres", "message": "statement: SET work_mem = 1"})
    assert theirs is not None
    assert findings([ours, theirs], frozenset({"postgres"})) == [Finding("SET", ours)]


def test_verdict_fails_only_unmarked_findings_when_enforcing() -> None:
    found = [Finding("SET", record("statement: SET work_mem = 1"))]
    message = verdict(found, pins=None, mode="enforce")
    assert message is not None
    assert "SET: 'SET work_mem = 1'" in message
    assert "@pytest.mark.pins" in message
    assert verdict(found, pins="control", mode="enforce") is None
    assert verdict(found, pins=None, mode="report") is None
    assert verdict([], pins=None, mode="enforce") is None


def test_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMBDA_DB_PINLOG", raising=False)
    assert mode_from_env() == "enforce"
    assert mode_from_env("report") == "report"
    monkeypatch.setenv("LAMBDA_DB_PINLOG", " Off ")
    assert mode_from_env() == "off"
    monkeypatch.setenv("LAMBDA_DB_PINLOG", "strict")
    with pytest.raises(ValueError, match="LAMBDA_DB_PINLOG='strict'"):
        mode_from_env()
