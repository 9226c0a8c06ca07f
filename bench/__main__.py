"""``python -m bench``: run every benchmark and rewrite BENCHMARKS.md.

Sections (``--only`` takes these names): imports, credentials, warm, invocation, drivers,
sqlalchemy, idempotency, watchdog, recovery, burst, load. ``--quick`` shrinks every size
for a smoke run (its figures are not the ones to publish).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lambda_db_lab.localpg import LocalPostgres

SECTIONS = (
    "imports",
    "credentials",
    "warm",
    "invocation",
    "drivers",
    "sqlalchemy",
    "idempotency",
    "watchdog",
    "recovery",
    "burst",
    "load",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run this section")
    parser.add_argument("--output", default="BENCHMARKS.md", help="where to write the report")
    args = parser.parse_args(argv)
    only = set(args.only or SECTIONS)
    quick = args.quick
    started = time.monotonic()
    results: dict[str, Any] = {"meta": _machine()}
    results["meta"]["command"] = (
        "python -m bench"
        + (" --quick" if quick else "")
        + "".join(f" --only {s}" for s in args.only or ())
    )

    # Cold-start figures first, while the machine is quiet (no server, no environments).
    if "imports" in only:
        from bench.core import import_figures

        _say("imports")
        results["imports"] = import_figures(repeats=5 if quick else 21)
    if "credentials" in only:
        _say("credentials (bench/bench_credentials.py)")
        try:
            from bench import bench_credentials

            results["credentials"] = bench_credentials.run()
        except Exception as exc:  # absent or broken: say so in the report, run the rest
            results["credentials_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    with LocalPostgres(settings={"max_connections": "150"}) as pg:
        results["meta"]["server"] = _server_version(pg)
        _run_server_sections(pg, only, quick, results)

    results["meta"]["duration_s"] = time.monotonic() - started
    from bench.report import goals, render

    Path(args.output).write_text(render(results))
    for goal, figure, met in goals(results):
        print(f"{'n/a ' if met is None else ('ok  ' if met else 'MISS')} {goal}: {figure}")
    print(f"wrote {args.output}")
    return 0


def _run_server_sections(
    pg: LocalPostgres, only: set[str], quick: bool, results: dict[str, Any]
) -> None:
    from lambda_db_lab.appdb import ledger_app_db

    app_db = ledger_app_db(pg, "bench")
    kwargs = pg.connect_kwargs(user=app_db.role, password=app_db.password, dbname=app_db.name)
    rounds = 3 if quick else 9
    if "warm" in only:
        from bench.core import no_round_trip
        from bench.peers import warm_path

        _say("warm path")
        results["warm_path"] = warm_path(dict(app_db), kwargs, rounds=rounds)
        results["no_round_trip"] = no_round_trip()
    if "invocation" in only:
        from bench.invocation import run as invocation

        _say("a warm invocation: statements, latency through +1 ms, CPU")
        results["invocation"] = invocation(pg, kwargs, quick=quick)
    if "drivers" in only:
        from bench import psycopg_driver

        _say("drivers: psycopg2 and psycopg 3")
        results["psycopg_driver"] = psycopg_driver.run(dict(app_db), rounds)
    if "sqlalchemy" in only:
        from bench import sqlalchemy_bench

        _say("SQLAlchemy via lambda-db, QueuePool(pool_pre_ping), NullPool")
        results["sqlalchemy"] = sqlalchemy_bench.run(dict(app_db), rounds)
    if "idempotency" in only:
        from bench import idempotency_bench

        _say("idempotent: what it adds to a warm invocation")
        results["idempotency"] = idempotency_bench.run(dict(app_db), rounds)
    if "watchdog" in only:
        from bench.core import watchdog_overhead

        _say("watchdog")
        results["watchdog"] = watchdog_overhead(kwargs, rounds=rounds)
    if "recovery" in only:
        from bench.recovery import recovery

        _say("recovery")
        results["recovery"] = recovery(
            pg, app_db, kills=5 if quick else 21, restarts=1 if quick else 5
        )
    if "burst" in only:
        from bench.burst import burst

        _say("burst")
        results["burst"] = burst(
            pg, environments=10 if quick else 50, role_limit=4 if quick else 20
        )
    if "load" in only:
        from bench.burst import load

        n, k = (10, 20) if quick else (50, 200)
        _say("load (steady)")
        results["load"] = load(pg, environments=n, invocations=k, kill_halfway=False)
        _say("load (kill sweep)")
        results["load_kill"] = load(pg, environments=n, invocations=k, kill_halfway=True)


def _say(section: str) -> None:
    print(f"bench: {section}", file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    memory = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        )
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    versions = []
    for dist in (
        "psycopg2-binary",
        "SQLAlchemy",
        "psycopg",
        "psycopg-pool",
        "aws-advanced-python-wrapper",
        "boto3",
        "aws-lambda-powertools",
    ):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} absent")
    import psycopg2

    versions.append(f"libpq {psycopg2.__libpq_version__}")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu}, {os.cpu_count()} CPUs{memory}, {platform.platform()}",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": sys.version.split()[0],
        "versions": ", ".join(versions),
    }


def _server_version(pg: LocalPostgres) -> str:
    conn = pg.admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            return str(row[0]) if row else "unknown"
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
