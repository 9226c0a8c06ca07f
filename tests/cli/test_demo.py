"""lambda-db demo: the reproduction really fails with 53300; lambda-db really does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lambda_db.cli.demo import DemoConfig, render, run_demo
from lambda_db_lab.localpg import LocalPostgres
from lambda_db_lab.pgbouncer import find_pgbouncer

SHORT = DemoConfig(environments=3, invocations=6, limit=4, bad_every=2, work_ms=5, pool_size=2)


@pytest.mark.slow
@pytest.mark.pins(
    "its third run goes through pgbouncer, which sends SET application_name on its server "
    "sessions (lambda-db sends none)"
)
def test_short_demo_on_the_test_server(pg: LocalPostgres) -> None:
    result = run_demo(SHORT, server=pg)
    naive, fixed = result.phase("naive"), result.phase("lambda-db")
    assert naive is not None
    assert fixed is not None

    # (1) 3 environments leak 3 connections each: more than the limit of 4
    too_many = f'OperationalError: FATAL: too many connections for role "{result.role}"'
    assert naive.failures.get(too_many, 0) > 0, naive.failures
    assert naive.invocations == 18
    assert naive.peak_server_connections <= SHORT.limit

    # (2) one connection per environment, reused through the bad events
    assert fixed.failures == {}
    assert fixed.invocations == 18
    assert fixed.bad_events == 9
    assert fixed.ok == 9
    assert 1 <= fixed.peak_server_connections <= SHORT.environments

    # (3) the leaked clients share the pool's server connections
    pooled = result.phase("pgbouncer")
    if find_pgbouncer() is None:
        assert pooled is None
        assert result.pooler_skipped == "pgbouncer not installed"
    else:
        assert pooled is not None
        assert pooled.failures == {}
        assert pooled.peak_server_connections <= SHORT.pool_size
        assert pooled.peak_clients is not None
        assert pooled.peak_clients > SHORT.pool_size
        assert pooled.show_pools is not None
        assert pooled.show_pools["pool_mode"] == "transaction"

    assert result.ok, result.checks()
    text = render(result)
    assert "too many connections for role" in text
    # the demo cleaned up its role and database
    admin = pg.admin()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (result.role,))
            assert cur.fetchone() == (0,)
    finally:
        admin.close()


@pytest.mark.slow
def test_the_command_starts_its_own_server() -> None:
    """What ``make demo`` runs, shortened: its own LocalPostgres, JSON on stdout."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lambda_db.cli",
            "demo",
            "--environments",
            "2",
            "--invocations",
            "6",
            "--limit",
            "3",
            "--bad-every",
            "2",
            "--work-ms",
            "5",
            "--no-pooler",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True
    assert data["role"] == "demo_app"
    assert data["pooler_skipped"] == "--no-pooler"
    assert [p["name"] for p in data["phases"]] == ["naive", "lambda-db"]
    assert data["phases"][1]["failed"] == 0
    assert "1 naive" in out.stderr  # live progress goes to stderr
