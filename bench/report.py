"""BENCHMARKS.md from the figures ``python -m bench`` collected (the raw JSON goes in too)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from bench.peers import PRE_PING_PEERS

__all__ = ["goals", "render"]

GET_CONNECTION = "lambda-db get_connection()"


def _n(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_n(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return [*lines, ""]


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def goals(r: Mapping[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, the figure, met?) for every goal of issues 2 and 6; ``None``: not measured."""
    out: list[tuple[str, str, bool | None]] = []
    warm = _get(r, "warm_path", "median_us") or {}
    ours = warm.get(GET_CONNECTION)
    if ours is not None:
        out.append(("`get_connection()` median <= 10 µs", f"{ours:.2f} µs", ours <= 10))
        worst = min((warm[p] / ours, p) for p in PRE_PING_PEERS if p in warm)
        out.append(
            (
                "warm path >= 10x cheaper than any pre-ping peer",
                f"{worst[0]:.1f}x (the closest peer: {worst[1]})",
                worst[0] >= 10,
            )
        )
    trip = r.get("no_round_trip")
    if trip:
        out.append(
            (
                "`get_connection()` makes no round trip",
                f"{trip.get('calls', 0):,} calls with the backend stopped (SIGSTOP), "
                f"{trip.get('pings', 'n/a')} pings",
                bool(trip.get("verified")),
            )
        )
    imp = _get(r, "imports", "lambda_db")
    if imp:
        out.append(
            (
                "`import lambda_db` <= 60 ms cumulative (-X importtime)",
                f"{imp['importtime_ms']:.1f} ms",
                imp["importtime_ms"] <= 60,
            )
        )
        out.append(
            (
                "`import lambda_db` imports no boto3/botocore",
                ", ".join(imp["aws_modules"]) or "none imported",
                not imp["aws_modules"],
            )
        )
    for env in ("lambda_like", "as_installed"):
        ratio = _get(r, "credentials", "iam_cold_start", env, "ratio_end_to_end")
        if ratio is not None:
            out.append(
                (
                    f"cold start to a first IAM token <= 0.6 of boto3's ({env})",
                    f"{ratio:.2f}",
                    ratio <= 0.6,
                )
            )
    if "credentials" not in r:
        out.append(
            (
                "cold start to a first IAM token <= 0.6 of boto3's",
                "not measured: bench/bench_credentials.py absent",
                None,
            )
        )
    for key, label in (("burst", "burst"), ("load_kill", "load with a kill sweep")):
        ours_f = _get(r, key, "lambda-db", "failures_all_runs")
        if ours_f is None:
            ours_f = _get(r, key, "lambda-db", "failures")
        naive_f = _get(r, key, "naive", "failures")
        if ours_f is not None and naive_f is not None:
            out.append(
                (
                    f"zero failures where naive fails ({label})",
                    f"lambda-db {ours_f}, naive {naive_f}",
                    ours_f == 0 and naive_f > 0,
                )
            )
    out += _invocation_goals(r)
    for key, label in (("load", "steady"), ("load_kill", "kill sweep")):
        ours_rate = _get(r, key, "lambda-db", "invocations_per_s")
        naive_rate = _get(r, key, "naive", "invocations_per_s")
        if ours_rate and naive_rate:
            out.append(
                (
                    f"load ({label}): invocations/s >= 0.95x naive's",
                    f"{ours_rate:,.0f} vs {naive_rate:,.0f}/s ({ours_rate / naive_rate:.2f}x)",
                    ours_rate >= 0.95 * naive_rate,
                )
            )
    steady = _get(r, "load", "lambda-db")
    if steady:
        n = steady["environments"]
        peak = steady.get("peak_server_connections_all_runs", steady["peak_server_connections"])
        failures = steady.get("failures_all_runs", steady["failures"])
        out.append(
            (
                f"load: server connections never above {n}, zero failures (every run)",
                f"peak {peak}, {failures} failures",
                peak <= n and failures == 0,
            )
        )
    return out


def _invocation_goals(r: Mapping[str, Any]) -> list[tuple[str, str, bool | None]]:
    from bench.invocation import NAIVE, OURS

    out: list[tuple[str, str, bool | None]] = []
    counts = _get(r, "invocation", "statements")
    if counts:
        ours, naive = counts[OURS]["per_invocation"], counts[NAIVE]["per_invocation"]
        out.append(
            (
                "a warm invocation sends no more than the naive pattern",
                f"lambda-db {ours:g}, naive {naive:g} statements "
                f"({', '.join(counts[OURS]['statements'])})",
                ours <= naive,
            )
        )
        untouched = counts["untouched"]["lambda-db"]
        out.append(
            (
                "an invocation that never uses the database opens and sends nothing",
                f"{untouched['connections']} connections, {untouched['statements']} statements "
                f"in {counts['untouched']['invocations']} invocations",
                untouched["connections"] == 0 and untouched["statements"] == 0,
            )
        )
    ratio = _get(r, "invocation", "cpu", "ratio_to_naive", OURS)
    if ratio is not None:
        out.append(
            (
                "CPU per warm invocation <= 1.25x naive's (aim 1.1x)",
                f"{ratio:.2f}x",
                ratio <= 1.25,
            )
        )
    return out


def _invocation_lines(inv: Mapping[str, Any]) -> list[str]:
    counts, lat, cpu = inv["statements"], inv["latency"], inv["cpu"]
    cold = inv["cpu_cold"]
    patterns = [p for p in counts if p != "untouched"]
    untouched = counts["untouched"]
    return [
        "## A warm invocation, end to end",
        "",
        "Each pattern is a Lambda-shaped handler that inserts one row, written the way its "
        "users write it (the naive module-level psycopg2 connection committed with `with "
        "conn:`; `@with_connection` and `get_connection()`; SQLAlchemy `engine.begin()` on "
        "`QueuePool(pool_size=1, pool_pre_ping=True)`; psycopg_pool's `pool.connection()` "
        "with `check=check_connection`), each with its one connection warm. Statements come "
        "from the server's own statement log (a private server with `log_statement = all`); "
        "latency is the median of interleaved invocations, direct and through a relay that "
        "adds 1 ms per round trip (a VPC hop and RDS Proxy); round trips = the added latency "
        "over that of one bare `SELECT 1`; CPU is `time.process_time()` (every thread of the "
        f"process) per invocation, medians of {cpu['rounds']} interleaved rounds of "
        f"{cpu['calls_per_round']:,} invocations; its ratio to naive is the median of the "
        "rounds' own ratios (each batch against the naive batch of its round). *Caches "
        "cold*: the same, each invocation timed alone (its clock reads included, about 3 µs) "
        f"after {cold['evict_bytes'] // 2**20} MiB were written through (twice the "
        f"last-level cache), {cold['rounds']} rounds of {cold['calls_per_round']:,}: a "
        "colder bound than the load runs below, where 50 processes share 2 cores but also "
        "libpython's, libpq's and psycopg2's machine code; there every piece of code or data "
        "an invocation touches costs more than a warm benchmark shows.",
        "",
        *_table(
            [
                "pattern",
                "statements",
                "what it sends",
                "direct ms",
                "+1 ms relay ms",
                "round trips",
                "CPU µs",
                "CPU x naive",
                "caches cold µs",
                "cold x naive",
            ],
            [
                [
                    p,
                    counts[p]["per_invocation"],
                    ", ".join(f"`{x}`" if x else "`(empty)`" for x in counts[p]["statements"]),
                    lat[p]["direct_ms"],
                    lat[p]["relayed_ms"],
                    lat[p]["round_trips"],
                    cpu["cpu_us"][p],
                    cpu["ratio_to_naive"][p],
                    cold["cpu_us"][p],
                    cold["ratio_to_naive"][p],
                ]
                for p in patterns
            ],
        ),
        f"An invocation that never uses the database ({untouched['invocations']} of them, a "
        "handler that refuses a malformed request): lambda-db opened "
        f"{untouched['lambda-db']['connections']} connections and sent "
        f"{untouched['lambda-db']['statements']} statements; the naive pattern opened "
        f"{untouched['naive']['connections']} at its cold start, as it always does.",
        "",
    ]


def _runs_note(section: Mapping[str, Any]) -> str:
    """The throughput of every run, when a section repeated them (alternating the order)."""
    runs = {p: section[p].get("invocations_per_s_runs") for p in ("lambda-db", "naive")}
    if not all(runs.values()):
        return ""
    shown = "; ".join(
        f"{p} " + ", ".join(f"{x:,.0f}" for x in v) for p, v in runs.items() if v is not None
    )
    failures = sum(section[p].get("failures_all_runs", 0) for p in ("lambda-db",))
    return (
        f" Each pattern ran {len(runs['lambda-db'] or [])} times, in alternating order; the "
        f"table shows its median run by throughput (invocations/s of every run: {shown}; "
        f"lambda-db failures over all runs: {failures})."
    )


def _pattern_rows(section: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for pattern in ("lambda-db", "naive"):
        s = section.get(pattern)
        if not s:
            continue
        rows.append(
            [
                pattern,
                s["invocations"],
                s["failures"],
                s["peak_server_connections"],
                s["p50_ms"],
                s["p99_ms"],
                s["max_ms"],
                s["invocations_per_s"],
                s.get("client_cpu_us_per_invocation"),
                s["connects"],
                s["rows_committed"],
                s["ledger_exact"],
            ]
        )
    return rows


_PATTERN_HEADER = [
    "pattern",
    "invocations",
    "failures",
    "peak server conns",
    "p50 ms",
    "p99 ms",
    "max ms",
    "invocations/s",
    "environments' CPU µs/inv",
    "connects",
    "rows committed",
    "rows == successes",
]


def render(r: Mapping[str, Any]) -> str:
    """The whole of BENCHMARKS.md."""
    meta = r["meta"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`.venv/bin/python -m bench`); do not edit by hand. Every "
        "ratio compares figures measured in the same run, on the same server (a local "
        "PostgreSQL over TCP on 127.0.0.1, started by the run), on the same machine.",
        "",
        *_table(
            ["", ""],
            [
                ["date (UTC)", meta["date"]],
                ["command", f"`{meta['command']}`"],
                ["duration", f"{meta['duration_s']:.0f} s"],
                ["machine", meta["machine"]],
                ["load average at start", meta["loadavg"]],
                ["Python", meta["python"]],
                ["PostgreSQL", meta["server"]],
                ["versions", meta["versions"]],
            ],
        ),
        "## Goals",
        "",
        *_table(
            ["goal", "figure", "met"],
            [[g, f, "n/a" if ok is None else ("yes" if ok else "**no**")] for g, f, ok in goals(r)],
        ),
    ]
    warm = r.get("warm_path")
    if warm:
        med, ratio = warm["median_us"], warm["ratio_to_get_connection"]
        lines += [
            "## Warm path",
            "",
            "Per call, medians of batches, interleaved rounds "
            f"({warm['rounds']} rounds; {warm['calls_per_round']['get_connection']:,} "
            f"`get_connection()` calls and {warm['calls_per_round']['others']:,} of the others "
            "per round). A checkout is checkout plus checkin, each pool holding one "
            "connection. The invocation scope is `with db.invocation(context):` around one "
            "`get_connection()`: the checkout, the watchdog armed and disarmed, and nothing "
            "sent (no statement ran, so psycopg2 sends neither `BEGIN` nor `COMMIT`).",
            "",
            *_table(
                ["case", "median µs", "p99 of batches µs", "x get_connection()"],
                [[n, med[n], warm["p99_batch_us"][n], ratio[n]] for n in med],
            ),
        ]
    inv = r.get("invocation")
    if inv:
        lines += _invocation_lines(inv)
    drivers = r.get("psycopg_driver")
    if drivers:
        from bench import psycopg_driver

        lines += psycopg_driver.render(drivers)
    orm = r.get("sqlalchemy")
    if orm:
        from bench import sqlalchemy_bench

        lines += sqlalchemy_bench.render(orm)
    once = r.get("idempotency")
    if once:
        from bench import idempotency_bench

        lines += idempotency_bench.render(once)
    trip = r.get("no_round_trip")
    if trip:
        lines += [
            f"No round trip: {trip.get('calls', 0):,} `get_connection()` calls completed while "
            "the connection's server backend was stopped with SIGSTOP "
            f"(verified: {_n(trip.get('verified'))}; pings {trip.get('pings')}, "
            f"connects {trip.get('connects')}).",
            "",
        ]
    wd = r.get("watchdog")
    if wd:
        lines += [
            "## Watchdog (client-side deadline) per invocation",
            "",
            "One `arm` and one `disarm` of the watchdog, which every invocation that uses the "
            "database pays once (statements pay nothing: no wait callback), beside a "
            "`SELECT 1` round trip for scale.",
            "",
            *_table(
                ["SELECT 1 µs", "arm+disarm µs", "as % of SELECT 1"],
                [[wd["statement_us"], wd["arm_disarm_us"], wd["overhead_pct"]]],
            ),
        ]
    imports = r.get("imports")
    if imports:
        lines += [
            "## Cold start: imports",
            "",
            "Fresh interpreters, interleaved, medians: `-X importtime` cumulative for the "
            "module, and wall time (`perf_counter` around the import, separate runs).",
            "",
            *_table(
                ["module", "importtime ms", "wall ms", "boto3/botocore imported", "runs"],
                [
                    [
                        m,
                        v["importtime_ms"],
                        v["wall_ms"],
                        ", ".join(v["aws_modules"]) or "no",
                        v["repeats"],
                    ]
                    for m, v in imports.items()
                ],
            ),
        ]
    cred = r.get("credentials")
    lines += ["## Cold start: first IAM token, and Secrets Manager calls", ""]
    if cred:
        lines += [
            "From `bench/bench_credentials.py` (the credentials module's benchmark, run by "
            "`python -m bench`): lambda-db's path to a first token against "
            '`boto3.client("rds").generate_db_auth_token`. `lambda_like`: as in the Lambda '
            "runtime; `as_installed`: this virtualenv.",
            "",
            *_table(["figure", "value"], _flatten(cred)),
        ]
    else:
        lines += [
            "Not measured: `bench/bench_credentials.py` is absent or failed "
            f"({r.get('credentials_error', 'absent')}).",
            "",
        ]
    rec = r.get("recovery")
    if rec:
        lines += [
            "## Recovery",
            "",
            "Invocations back to back; the clock starts when the killed backend has exited "
            "(or when the restarted server accepts connections) and stops at the first "
            f"success. Medians of {rec['kills']} kills and {rec['restarts']} restarts. An "
            "invocation inserts its row, reads it back and commits; lambda-db's runs under "
            "the watchdog.",
            "",
            *_table(
                [
                    "pattern",
                    "warm invocation ms",
                    "after a kill ms",
                    "failures per kill",
                    "after a restart ms",
                    "failures per restart",
                ],
                [
                    [
                        p,
                        rec[p]["warm_invocation_ms"],
                        rec[p]["after_kill_ms"],
                        rec[p]["failures_per_kill"],
                        rec[p]["after_restart_ms"],
                        rec[p]["failures_per_restart"],
                    ]
                    for p in ("lambda-db", "naive")
                ],
            ),
        ]
    for key, title in (
        ("burst", "Burst: new environments beyond the role's connection limit"),
        ("load", "Load: environments with room on the server, steady"),
        ("load_kill", "Load: the same, every session terminated while frozen half-way"),
    ):
        section = r.get(key)
        if not section:
            continue
        ours = section["lambda-db"]
        setup = (
            f"{ours['environments']} environments, role `CONNECTION LIMIT "
            f"{ours['role_limit']}`, {ours['invocations_each']} invocations each holding "
            f"its transaction {ours['work_s']} s, function timeout {ours['timeout_ms']} ms; "
            "an environment leaves (its slot frees) after its last invocation."
            if key == "burst"
            else f"{ours['environments']} environments x {ours['invocations_each']} "
            f"invocations; sessions terminated: {ours.get('sessions_killed', 0)} (lambda-db), "
            f"{section['naive'].get('sessions_killed', 0)} (naive)." + _runs_note(section)
        )
        setup += (
            " Environments' CPU: the `time.process_time()` of every environment process "
            "from the start to its last invocation (handler, driver, reporting to the "
            "parent), over all invocations, failed ones included; not the parent's, nor "
            "the server's."
        )
        if key != "burst":
            setup += (
                " With 50 processes on 2 cores, CPU is what bounds these runs' throughput; "
                "the figure is that of the run shown."
            )
        lines += [f"## {title}", "", setup, "", *_table(_PATTERN_HEADER, _pattern_rows(section))]
        kinds = section["naive"].get("failure_kinds")
        if kinds:
            lines += [
                "Naive failures, most common: "
                + "; ".join(f"`{k}` x{v}" for k, v in kinds.items())
                + ".",
                "",
            ]
    lines += [
        "## Reproduce",
        "",
        "`make bench` (or `.venv/bin/python -m bench`; `--quick` for a smoke run with small "
        "sizes, `--only SECTION` for one section). The run starts its own PostgreSQL; it "
        "needs no AWS account (IAM tokens are signed locally with fixed example keys).",
        "",
        "<details><summary>Raw figures (JSON)</summary>",
        "",
        "```json",
        json.dumps(r, indent=1, default=str),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _flatten(data: Any, prefix: str = "") -> list[list[Any]]:
    if isinstance(data, Mapping):
        rows = []
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [[f"`{prefix}`", data]]
