"""Every event in events/ invoked the way ``sam local invoke -e EVENT --env-vars env.json``
would call it (handler and environment from template.yaml, env.json aimed at the test
server), asserting status, body, and that no request leaves a connection behind."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from lambda_db_lab.appdb import AppDb
from tests.template.conftest import EVENTS, CloudFormation, Run, load_event

ITEMS_APP = "items-api"


def header(response: dict[str, Any], name: str) -> str | None:
    """A response header, from ``headers`` or (Powertools' REST answer) ``multiValueHeaders``."""
    if name in (response.get("headers") or {}):
        value: str = response["headers"][name]
        return value
    values = (response.get("multiValueHeaders") or {}).get(name)
    return ",".join(values) if values else None


def body(response: dict[str, Any]) -> Any:
    assert header(response, "Content-Type") == "application/json", response
    return json.loads(response["body"])


def message(response: dict[str, Any]) -> str:
    doc = body(response)
    assert set(doc) == {"message"}, doc
    text: str = doc["message"]
    return text


def item_count(app_db: AppDb) -> int:
    count: int = app_db.query("SELECT count(*) FROM items")[0][0]
    return count


#: Statuses the items API answers before it needs the database: a malformed request gets
#: its answer without a connection (and even when the database is down).
NO_DATABASE = (400, 413)


def assert_no_leak(
    app_db: AppDb, application: str = ITEMS_APP, response: dict[str, Any] | None = None
) -> None:
    """The function keeps at most its one connection, idle, never idle in transaction; a
    request refused before it needed the database (``response``) opened none at all."""
    rows = app_db.query(
        "SELECT state FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        (app_db.name, application),
    )
    untouched = response is not None and response["statusCode"] in NO_DATABASE
    assert [state for (state,) in rows] == ([] if untouched else ["idle"]), rows


@pytest.fixture
def seeded(schema: None, run: Run, app_db: AppDb) -> None:
    """Three items (ids 1, 2, 3) created through the API itself."""
    for _ in range(3):
        assert run("items-create.json")["statusCode"] == 201
    assert item_count(app_db) == 3


def check_list(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200
    doc = body(response)
    assert [item["id"] for item in doc["items"]] == [1, 2, 3]
    assert doc["next_token"] is None


def check_list_page(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200
    doc = body(response)
    assert [item["id"] for item in doc["items"]] == [1, 2]
    assert isinstance(doc["next_token"], str)


def check_create(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 201
    item = body(response)
    assert item["id"] == 4
    assert (item["name"], item["description"], item["quantity"]) == (
        "Widget",
        "A useful widget",
        3,
    )
    assert header(response, "Location") == "/items/4"


def check_get(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200
    item = body(response)
    assert set(item) == {"id", "name", "description", "quantity", "created_at", "updated_at"}
    assert (item["id"], item["name"], item["quantity"]) == (1, "Widget", 3)


def check_update(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 200
    item = body(response)
    assert (item["id"], item["name"], item["description"], item["quantity"]) == (
        1,
        "Widget v2",
        "Now with more widget",
        5,
    )
    assert item["updated_at"] >= item["created_at"]


def check_delete(response: dict[str, Any]) -> None:
    assert response["statusCode"] == 204
    assert not response.get("body")


def client_error(status: int, *words: str) -> Callable[[dict[str, Any]], None]:
    def check(response: dict[str, Any]) -> None:
        assert response["statusCode"] == status, response
        text = message(response)
        for word in words:
            assert word in text, text
        assert "Traceback" not in response["body"]

    return check


#: event file -> (check of the response, items in the table afterwards)
ITEMS_EVENTS: dict[str, tuple[Callable[[dict[str, Any]], None], int]] = {
    "items-list.json": (check_list, 3),
    "items-list-page.json": (check_list_page, 3),
    "items-list-bad-token.json": (client_error(400, "next_token"), 3),
    "items-list-bad-limit.json": (client_error(400, "limit"), 3),
    "items-create.json": (check_create, 4),
    "items-create-idempotent.json": (check_create, 4),
    "items-create-malformed.json": (client_error(400, "not valid JSON"), 3),
    "items-create-wrong-types.json": (client_error(400, "name must be a string"), 3),
    "items-create-missing-name.json": (client_error(400, "name is required"), 3),
    "items-create-oversized.json": (client_error(413, "limit is 16384"), 3),
    "items-get.json": (check_get, 3),
    "items-get-unknown.json": (client_error(404, "999999"), 3),
    "items-get-bad-id.json": (client_error(400, "positive integer"), 3),
    "items-update.json": (check_update, 3),
    "items-update-idempotent.json": (check_update, 3),
    "items-update-unknown.json": (client_error(404, "999999"), 3),
    "items-delete.json": (check_delete, 2),
}
OTHER_EVENTS = {
    "connection-report.json",
    "item-import-batch.json",  # tests/template/test_item_import.py
    "schema-create.json",
    "schema-update.json",
    "schema-delete.json",
    # The SQLAlchemy example's, checked by tests/sqlalchemy/test_example.py (every one).
    *(path.name for path in EVENTS.glob("stock-*.json")),
}


def test_every_event_file_is_checked() -> None:
    files = {path.name for path in EVENTS.glob("*.json")} - {"env.json"}
    assert files == set(ITEMS_EVENTS) | OTHER_EVENTS


@pytest.mark.parametrize("name", sorted(ITEMS_EVENTS))
def test_items_event(name: str, seeded: None, run: Run, app_db: AppDb) -> None:
    check, items_after = ITEMS_EVENTS[name]
    response = run(name, close_connections=False)
    check(response)
    assert_no_leak(app_db, response=response)
    assert item_count(app_db) == items_after


def test_next_token_pages_through_every_item(seeded: None, run: Run) -> None:
    first = body(run("items-list-page.json"))
    event = load_event("items-list-page.json")
    event["queryStringParameters"] = {"limit": "2", "next_token": first["next_token"]}
    second = run("items-list-page.json", event=event)
    assert second["statusCode"] == 200
    doc = body(second)
    assert [item["id"] for item in doc["items"]] == [3]
    assert doc["next_token"] is None


@pytest.mark.parametrize(
    "token",
    [
        "eyJ2IjoxLCJhZnRlciI6LTF9",  # {"v":1,"after":-1}
        "eyJ2IjoyLCJhZnRlciI6MX0",  # {"v":2,"after":1}
        "eyJ2IjoxLCJhZnRlciI6IngifQ",  # {"v":1,"after":"x"}
        "WzFd",  # [1]
        "%%%",
        "a" * 500,
    ],
)
def test_tampered_tokens_are_400(token: str, seeded: None, run: Run, app_db: AppDb) -> None:
    event = load_event("items-list.json")
    event["queryStringParameters"] = {"next_token": token}
    response = run("items-list.json", event=event, close_connections=False)
    assert response["statusCode"] == 400
    assert "next_token" in message(response)
    assert_no_leak(app_db, response=response)


def test_deleted_item_is_gone(seeded: None, run: Run) -> None:
    assert run("items-delete.json")["statusCode"] == 204
    assert run("items-get.json")["statusCode"] == 404
    assert run("items-delete.json")["statusCode"] == 404


def test_a_malformed_request_gets_its_400_when_the_database_is_down(run: Run) -> None:
    """No database is needed to refuse bad input: nothing listens at DB_PORT here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    response = run("items-create-malformed.json", environ={"DB_PORT": str(port)})
    client_error(400, "not valid JSON")(response)


def test_unknown_route_is_404_json(seeded: None, run: Run) -> None:
    event = load_event("items-list.json")
    event["path"] = "/nothing-here"
    response = run("items-list.json", event=event)
    assert response["statusCode"] == 404
    assert "/nothing-here" in message(response)


def test_full_database_is_503_with_retry_after(seeded: None, run: Run, app_db: AppDb) -> None:
    app_db.query(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 0')
    # A short connect budget: the function stops retrying 1.5 s into its 10 s timeout.
    response = run("items-list.json", environ={"DB_DEADLINE_MARGIN": "8.5"})
    assert response["statusCode"] == 503
    assert header(response, "Retry-After") == "5"
    assert "retry later" in message(response)


def test_unexpected_error_is_opaque_500_and_rolls_back(
    seeded: None, run: Run, app_db: AppDb
) -> None:
    app_db.query("ALTER TABLE items RENAME TO items_elsewhere")
    response = run("items-create.json", close_connections=False)
    assert response["statusCode"] == 500
    assert message(response) == "internal error"
    assert "items" not in response["body"]
    assert_no_leak(app_db)


def test_schema_setup_is_idempotent(
    run: Run, cloudformation: CloudFormation, app_db: AppDb
) -> None:
    for name in ("schema-create.json", "schema-create.json", "schema-update.json"):
        answer = run(name)
        assert answer["Status"] == "SUCCESS", answer
        assert answer["PhysicalResourceId"] == "lambda-db-schema"
    assert [request[2]["Status"] for request in cloudformation.requests] == ["SUCCESS"] * 3
    method, headers, sent = cloudformation.requests[-1]
    assert method == "PUT"
    assert headers.get("Content-Type") == ""
    assert sent["RequestId"] == load_event("schema-update.json")["RequestId"]
    assert sent["LogicalResourceId"] == "Schema"
    assert item_count(app_db) == 0


def test_schema_delete_keeps_the_data_and_needs_no_database(
    schema: None, run: Run, cloudformation: CloudFormation, app_db: AppDb
) -> None:
    app_db.query("INSERT INTO items (name) VALUES ('kept')")
    answer = run("schema-delete.json", environ={"DB_PORT": "9"})
    assert answer["Status"] == "SUCCESS"
    assert cloudformation.last()["Status"] == "SUCCESS"
    assert item_count(app_db) == 1


def test_schema_failure_still_answers_cloudformation(
    run: Run, cloudformation: CloudFormation
) -> None:
    # Nothing listens on port 9: the connection retries end 2 s into the 300 s timeout.
    answer = run("schema-create.json", environ={"DB_PORT": "9", "DB_DEADLINE_MARGIN": "298"})
    assert answer["Status"] == "FAILED"
    assert "DatabaseUnavailableError" in answer["Reason"]
    assert cloudformation.last() == answer


def test_schema_answer_without_a_reachable_url_is_logged_not_raised(run: Run) -> None:
    event = load_event("schema-delete.json")  # ResponseURL: http://127.0.0.1:9/...
    answer = run("schema-delete.json", event={**event, "ResponseURL": "file:///etc/passwd"})
    assert answer["Status"] == "SUCCESS"


def test_connection_report_publishes_every_limit(
    schema: None, run: Run, app_db: AppDb, capsys: pytest.CaptureFixture[str]
) -> None:
    app_db.query(f'ALTER ROLE "{app_db.role}" CONNECTION LIMIT 10')
    capsys.readouterr()
    report = run("connection-report.json", close_connections=False)
    limits = {(entry["scope"], entry["name"]): entry for entry in report["limits"]}
    role = limits[("role", app_db.role)]
    assert (role["limit"], role["used"]) == (10, 1)
    assert role["utilization_percent"] == 10.0
    assert ("server", "max_connections") in limits
    assert report["max_utilization_percent"] == max(
        entry["utilization_percent"] for entry in report["limits"]
    )
    assert report["idle_in_transaction"] == 0
    assert_no_leak(app_db, "connection-report")

    printed = capsys.readouterr()
    assert '"_aws"' not in printed.out  # sam local invoke prints the function's output on stderr
    emf = [json.loads(line) for line in printed.err.splitlines() if '"_aws"' in line]
    published = {
        (
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            doc.get("scope"),
            doc.get("limit"),
        )
        for doc in emf
        if len(doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]) == 1
    }
    assert ("ConnectionUtilization", "role", app_db.role) in published
    assert ("ConnectionHeadroom", "role", app_db.role) in published
    summary = [doc for doc in emf if "MaxConnectionUtilization" in doc]
    assert len(summary) == 1
    assert summary[0]["MaxConnectionUtilization"] == [report["max_utilization_percent"]]
    assert summary[0]["service"] == "connection-report"  # fixed per function in template.yaml
    assert summary[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "LambdaDb/local"


@pytest.mark.parametrize(
    ("body_text", "status", "words"),
    [
        ('{"name": "\\ud800"}', 400, ("name", "Unicode")),  # a lone surrogate
        ("[" * 5000 + "]" * 5000, 400, ("not valid JSON",)),  # nesting past the recursion limit
    ],
)
def test_hostile_bodies_are_400_not_500(
    body_text: str, status: int, words: tuple[str, ...], seeded: None, run: Run, app_db: AppDb
) -> None:
    event = load_event("items-create.json")
    event["body"] = body_text
    response = run("items-create.json", event=event, close_connections=False)
    client_error(status, *words)(response)
    assert item_count(app_db) == 3
    assert_no_leak(app_db, response=response)


def test_a_limit_with_thousands_of_digits_is_400(seeded: None, run: Run, app_db: AppDb) -> None:
    event = load_event("items-list.json")
    event["queryStringParameters"] = {"limit": "9" * 5000}
    response = run("items-list.json", event=event, close_connections=False)
    client_error(400, "limit")(response)
    assert_no_leak(app_db, response=response)
