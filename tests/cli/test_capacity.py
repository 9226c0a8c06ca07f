"""lambda-db capacity: the arithmetic (no server needed)."""

from __future__ import annotations

import pytest

from lambda_db.cli.capacity import (
    INSTANCE_CLASSES,
    RDS_MAX_CONNECTIONS_CAP,
    max_connections_upper_bound,
    plan_capacity,
)
from lambda_db_lab.appdb import AppDb
from tests.cli.conftest import Cli


@pytest.mark.parametrize(
    ("instance_class", "bound"),
    [("db.t3.micro", 112), ("db.t3.small", 225), ("db.t4g.medium", 450), ("db.r6g.large", 1802)],
)
def test_upper_bounds_match_facts(instance_class: str, bound: int) -> None:
    assert max_connections_upper_bound(INSTANCE_CLASSES[instance_class]) == bound


def test_large_classes_hit_the_5000_cap() -> None:
    assert max_connections_upper_bound(INSTANCE_CLASSES["db.r7g.2xlarge"]) == 5000
    assert max_connections_upper_bound(INSTANCE_CLASSES["db.m5.xlarge"]) == 1802
    assert all(
        max_connections_upper_bound(g) <= RDS_MAX_CONNECTIONS_CAP for g in INSTANCE_CLASSES.values()
    )


def test_the_table_covers_the_families() -> None:
    for family in ("db.t3", "db.t4g", "db.m5", "db.m6g", "db.m7g", "db.r5", "db.r6g", "db.r7g"):
        assert any(name.startswith(family + ".") for name in INSTANCE_CLASSES), family
    assert INSTANCE_CLASSES["db.t4g.micro"] == 1
    assert INSTANCE_CLASSES["db.r6g.large"] == 16
    assert INSTANCE_CLASSES["db.m7g.large"] == 8


def test_plan_arithmetic() -> None:
    p = plan_capacity(
        max_connections=200,
        reserved=3,
        other_connections=10,
        lambda_concurrency=150,
        replicas=4,
        pool_size=5,
        max_overflow=10,
        function_timeout=30,
    )
    assert p.usable == 197
    assert p.alarm_at == 160  # 80 % of max_connections
    assert p.lambda_budget == 150  # min(160, 197) - 10
    assert p.lambda_fits is True
    assert p.pool_connections == 60  # (5 + 10) x 4, the article's math
    assert p.pool_fits is True
    assert p.max_replicas == 10  # 150 // 15
    assert p.recommended_max_connections_percent == 75  # 150 of 200
    assert p.recommended_max_idle_connections_percent == 37
    assert p.proxy_max_connections == 200
    assert p.recommended_borrow_timeout == 10
    assert p.fits


def test_the_articles_example_does_not_fit_a_small_instance() -> None:
    p = plan_capacity(max_connections=112, replicas=10)  # 10 replicas x (5 + 10) = 150
    assert p.pool_connections == 150
    assert p.pool_fits is False
    assert not p.fits
    assert any("Pool math" in r for r in p.recommendations)


def test_proxy_share() -> None:
    p = plan_capacity(max_connections=450, proxy_max_connections_percent=50)
    assert p.proxy_max_connections == 225


def test_cli_instance_class_is_an_upper_bound(cli: Cli) -> None:
    result = cli("capacity", "--instance-class", "db.t3.micro", "--lambda-concurrency", "50")
    assert result.status == 0
    assert "max_connections <= 112" in result.stdout
    assert "upper bound" in result.stdout


def test_cli_exits_1_when_concurrency_does_not_fit(cli: Cli) -> None:
    result = cli("capacity", "--max-connections", "100", "--lambda-concurrency", "90", "--json")
    assert result.status == 1
    data = result.json()
    assert data["lambda_budget"] == 80
    assert data["lambda_fits"] is False
    assert data["upper_bound"] is False


def test_cli_table_and_unknown_class(cli: Cli) -> None:
    result = cli("capacity", "--json")
    rows = {r["instance_class"]: r["max_connections_at_most"] for r in result.json()}
    assert rows["db.t3.micro"] == 112
    unknown = cli("capacity", "--instance-class", "db.x9.huge")
    assert unknown.status == 2
    assert "unknown instance class" in unknown.stderr


def test_cli_reads_the_real_server(cli: Cli, app_db: AppDb) -> None:
    """``--from-server``: max_connections and the reserved slots as the server says."""
    real = app_db.query(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int"
    )[0]
    result = cli("capacity", "--from-server", "--lambda-concurrency", "10", "--json", env=app_db)
    assert result.status == 0, result.stderr
    data = result.json()
    assert data["max_connections"] == real[0]
    assert data["reserved"] >= real[1]
    assert data["upper_bound"] is False
    assert data["source"] == f"{app_db.role}@{app_db['DB_HOST']}:{app_db['DB_PORT']}/{app_db.name}"
    text = cli("capacity", "--from-server", env=app_db).stdout
    assert f"max_connections = {real[0]} (SHOW max_connections on" in text
