"""The SQLAlchemy example function (``functions/stock``): its events, its bad-input behaviour
(the items API's), and what it sends.

The events run the way ``sam local invoke -e EVENT --env-vars env.json`` would (handler and
environment from template.yaml, under the Lambda runtime client: ``tests/template``'s
``run``). The statement and lost-connection checks import the module in this process, as
its own tests would, to reach the server's log and the moment before ``COMMIT``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from lambda_db.sqlalchemy._engine import default_engine
from lambda_db.testing import LambdaContext
from lambda_db_lab.appdb import AppDb
from tests.support.pinlog import PinLog
from tests.template.conftest import (
    EVENTS,
    REPO,
    Run,
    app_role,
    cloudformation,
    env_vars,
    load_event,
    master,
    report_role,
    run,
    schema,
)
from tests.template.test_events import assert_no_leak, body, client_error, header, message

from .test_statements import shapes

# fixtures, by name
__all__ = ["app_role", "cloudformation", "env_vars", "master", "report_role", "run", "schema"]

STOCK_APP = "stock-api"
STARTING_QUANTITY = 3


def quantity(app_db: AppDb, item_id: int = 1) -> int | None:
    rows = app_db.query("SELECT quantity FROM items WHERE id = %s", (item_id,))
    return int(rows[0][0]) if rows else None


@pytest.fixture
def stocked(schema: None, app_db: AppDb) -> None:
    """Items 1, 2 and 3, three of each in stock (the schema setup made the table)."""
    app_db.query(
        "INSERT INTO items (name, quantity) SELECT 'Widget ' || n, %s FROM generate_series(1, 3) n",
        (STARTING_QUANTITY,),
    )


def check_stock(expected: int) -> Callable[[dict[str, Any]], None]:
    def check(response: dict[str, Any]) -> None:
        assert response["statusCode"] == 200, response
        doc = body(response)
        assert set(doc) == {"id", "quantity", "updated_at"}
        assert (doc["id"], doc["quantity"]) == (1, expected)
        assert doc["updated_at"].endswith("+00:00")

    return check


#: event file -> (check of the response, item 1's quantity afterwards)
STOCK_EVENTS: dict[str, tuple[Callable[[dict[str, Any]], None], int]] = {
    "stock-get.json": (check_stock(3), 3),
    "stock-get-unknown.json": (client_error(404, "999999"), 3),
    "stock-get-bad-id.json": (client_error(400, "positive integer"), 3),
    "stock-adjust.json": (check_stock(1), 1),
    "stock-adjust-below-zero.json": (client_error(409, "has 3 in stock", "-4"), 3),
    "stock-adjust-unknown.json": (client_error(404, "999999"), 3),
    "stock-adjust-malformed.json": (client_error(400, "not valid JSON"), 3),
    "stock-adjust-wrong-type.json": (client_error(400, "delta must be an integer"), 3),
}


def test_every_stock_event_is_checked() -> None:
    assert {path.name for path in EVENTS.glob("stock-*.json")} == set(STOCK_EVENTS)


@pytest.mark.parametrize("name", sorted(STOCK_EVENTS))
def test_stock_event(name: str, stocked: None, run: Run, app_db: AppDb) -> None:
    check, after = STOCK_EVENTS[name]
    response = run(name, close_connections=False)
    check(response)
    assert_no_leak(app_db, STOCK_APP, response=response)
    assert quantity(app_db) == after


@pytest.mark.parametrize(
    ("body_text", "status", "words"),
    [
        ('{"delta": -1, "note": "x"}', 400, ("unknown field", "'note'")),
        ("{}", 400, ("delta is required",)),
        ("[1]", 400, ("JSON object",)),
        ('{"delta": true}', 400, ("delta must be an integer",)),
        ('{"delta": 0}', 400, ("non-zero",)),
        ('{"delta": 99999999999}', 400, ("non-zero",)),
        ("[" * 2000 + "]" * 2000, 400, ("not valid JSON",)),  # nesting past the recursion limit
        ('{"delta": ' + "1" * 5000 + "}", 413, ("limit is 4096",)),
    ],
)
def test_bad_bodies_are_4xx_without_the_database(
    body_text: str, status: int, words: tuple[str, ...], stocked: None, run: Run, app_db: AppDb
) -> None:
    event_ = load_event("stock-adjust.json")
    event_["body"] = body_text
    response = run("stock-adjust.json", event=event_, close_connections=False)
    client_error(status, *words)(response)
    assert_no_leak(app_db, STOCK_APP, response=response)
    assert quantity(app_db) == STARTING_QUANTITY


def test_a_malformed_request_gets_its_400_when_the_database_is_down(run: Run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    response = run("stock-adjust-malformed.json", environ={"DB_PORT": str(port)})
    client_error(400, "not valid JSON")(response)


def test_full_database_is_503_with_retry_after(stocked: None, run: Run, app_db: AppDb) -> None:
    app_db.query(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 0')
    response = run("stock-adjust.json", environ={"DB_DEADLINE_MARGIN": "8.5"})
    assert response["statusCode"] == 503
    assert header(response, "Retry-After") == "5"
    assert "retry later" in message(response)
    assert quantity(app_db) == STARTING_QUANTITY


def test_unexpected_error_is_opaque_500_and_rolls_back(
    stocked: None, run: Run, app_db: AppDb
) -> None:
    app_db.query("ALTER TABLE items RENAME COLUMN quantity TO amount")
    response = run("stock-adjust.json", close_connections=False)
    assert response["statusCode"] == 500
    assert message(response) == "internal error"
    assert "amount" not in response["body"] and "quantity" not in response["body"]
    assert_no_leak(app_db, STOCK_APP)


def test_adjustments_add_up(stocked: None, run: Run, app_db: AppDb) -> None:
    event_ = load_event("stock-adjust.json")
    for delta in (5, -7, 10):
        event_["body"] = json.dumps({"delta": delta})
        assert run("stock-adjust.json", event=event_)["statusCode"] == 200
    assert quantity(app_db) == STARTING_QUANTITY + 8


# -- in this process: what it sends, and a COMMIT cut ------------------------------------------


@pytest.fixture
def stock_api(
    stocked: None, app_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """``functions/stock/stock_api.py`` imported as Lambda would, with ``app_db``'s environment."""
    for key, value in app_db.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DB_APPLICATION_NAME", STOCK_APP)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", STOCK_APP)
    path = REPO / "functions" / "stock" / "stock_api.py"
    spec = importlib.util.spec_from_file_location("stock_api_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        del sys.modules[spec.name]


def call(module: ModuleType, name: str, **changes: Any) -> dict[str, Any]:
    response: dict[str, Any] = module.handler({**load_event(name), **changes}, LambdaContext())
    return response


def test_an_adjustment_sends_a_locking_read_an_update_and_commit(
    stock_api: ModuleType, app_db: AppDb, pinlog: PinLog
) -> None:
    assert call(stock_api, "stock-get.json")["statusCode"] == 200  # warm
    with pinlog.capture() as block:
        assert call(stock_api, "stock-adjust.json")["statusCode"] == 200
    # SQLAlchemy 2.0 labels the columns (AS items_id), 2.1 does not.
    sent = [re.sub(r" AS items_\w+", "", sql) for sql in shapes(block.statements(app_db.role))]
    assert sent == [
        "BEGIN",
        "SELECT items.id, items.quantity, items.updated_at FROM items WHERE items.id = ? "
        "FOR UPDATE",
        "UPDATE items SET quantity=?, updated_at=now() WHERE items.id = ? RETURNING "
        "items.updated_at",
        "COMMIT",
    ]
    assert block.connections(app_db.role) == 0


def kill_after(engine: Engine, app_db: AppDb, verb: str) -> None:
    """Terminate the backend once a statement starting with ``verb`` has been answered, and
    wait for the FATAL to reach the socket: the next round trip is lambda-db's ``COMMIT``."""

    done: list[bool] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not done and statement.lstrip().upper().startswith(verb):
            done.append(True)
            app_db.terminate_all()

    event.listen(engine, "after_cursor_execute", after)


def test_an_adjustment_whose_commit_is_lost_is_500_outcome_unknown(
    stock_api: ModuleType, app_db: AppDb
) -> None:
    assert call(stock_api, "stock-get.json")["statusCode"] == 200
    kill_after(default_engine(), app_db, "UPDATE")
    response = call(stock_api, "stock-adjust.json")
    assert response["statusCode"] == 500
    assert header(response, "Retry-After") is None
    assert "check before retrying" in message(response)
    assert call(stock_api, "stock-get.json")["statusCode"] == 200  # a fresh connection


def test_a_read_whose_commit_is_lost_is_503(stock_api: ModuleType, app_db: AppDb) -> None:
    assert call(stock_api, "stock-get.json")["statusCode"] == 200
    kill_after(default_engine(), app_db, "SELECT")
    response = call(stock_api, "stock-get.json")
    assert response["statusCode"] == 503
    assert header(response, "Retry-After") == "1"


def test_the_module_imports_the_package_as_a_user_would() -> None:
    source = Path(REPO / "functions" / "stock" / "stock_api.py").read_text()
    assert "from lambda_db.sqlalchemy import with_session" in source
    assert "lambda_db._" not in source and "lambda_db.sqlalchemy._" not in source
