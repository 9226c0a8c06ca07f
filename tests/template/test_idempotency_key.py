"""The items API's ``Idempotency-Key``, invoked as ``sam local invoke`` would: a retry gets
the original response and writes nothing, even after a COMMIT whose answer was lost; a key
reused for another request is a 422."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from lambda_db_lab.appdb import AppDb
from lambda_db_lab.commit_relay import CommitRelay
from tests.template.conftest import Run, load_event
from tests.template.test_events import assert_no_leak, body, header, item_count, message

CREATE = "items-create-idempotent.json"
UPDATE = "items-update-idempotent.json"


def with_key(name: str, key: str | None, **changes: Any) -> dict[str, Any]:
    event = copy.deepcopy(load_event(name))
    for headers in (event["headers"], event["multiValueHeaders"]):
        headers.pop("Idempotency-Key", None)
    if key is not None:
        event["headers"]["idempotency-key"] = key  # HTTP/2 clients send lower case
    event.update(changes)
    return event


@pytest.fixture
def relay(app_db: AppDb) -> Iterator[CommitRelay]:
    """A relay to the test server that can lose a COMMIT (env.json's sslmode is disable)."""
    with CommitRelay(app_db.pg.host, app_db.pg.port) as commit_relay:
        yield commit_relay


def via(relay: CommitRelay) -> dict[str, str]:
    return {"DB_HOST": relay.host, "DB_PORT": str(relay.port)}


def test_a_retried_post_returns_the_original_201_and_writes_once(
    schema: None, run: Run, app_db: AppDb
) -> None:
    first = run(CREATE)
    again = run(CREATE, close_connections=False)
    assert first["statusCode"] == again["statusCode"] == 201
    assert body(again) == body(first)
    assert header(again, "Location") == header(first, "Location") == "/items/1"
    assert item_count(app_db) == 1
    assert_no_leak(app_db)


def test_the_header_name_is_case_insensitive(schema: None, run: Run, app_db: AppDb) -> None:
    first = run(CREATE)
    again = run(CREATE, event=with_key(CREATE, "7c9e6679-7425-40de-944b-e07fc1f90ae7"))
    assert body(again) == body(first)
    assert item_count(app_db) == 1


def test_without_a_key_every_post_creates_an_item(schema: None, run: Run, app_db: AppDb) -> None:
    for _ in range(2):
        assert run(CREATE, event=with_key(CREATE, None))["statusCode"] == 201
    assert item_count(app_db) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"body": json.dumps({"name": "Gadget"})},
        {"path": "/items/1", "httpMethod": "PUT", "resource": "/items/{id}"},
    ],
    ids=["other-body", "other-method"],
)
def test_the_same_key_for_another_request_is_422(
    change: dict[str, Any], schema: None, run: Run, app_db: AppDb
) -> None:
    run(CREATE)
    response = run(CREATE, event={**load_event(CREATE), **change}, close_connections=False)
    assert response["statusCode"] == 422
    assert "Idempotency-Key" in message(response)
    assert item_count(app_db) == 1
    assert_no_leak(app_db)


def test_a_retried_put_returns_the_first_answer(schema: None, run: Run, app_db: AppDb) -> None:
    run(CREATE)
    first = run(UPDATE)
    app_db.query("UPDATE items SET quantity = 42")  # someone else changes the item
    again = run(UPDATE)
    assert first["statusCode"] == again["statusCode"] == 200
    assert body(again) == body(first)  # the stored answer, not a second update
    assert app_db.query("SELECT quantity FROM items") == [(42,)]


@pytest.mark.parametrize("key", ["x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400(key: str, schema: None, run: Run, app_db: AppDb) -> None:
    response = run(CREATE, event=with_key(CREATE, key))
    assert response["statusCode"] == 400
    assert "Idempotency-Key" in message(response)
    assert item_count(app_db) == 0


def test_a_lost_commit_reply_then_a_retry_returns_the_same_item(
    schema: None, run: Run, app_db: AppDb, relay: CommitRelay
) -> None:
    relay.lose_reply()
    lost = run(CREATE, environ=via(relay))
    assert relay.lost == ["reply"]
    # The COMMIT happened, but the function cannot know: with a key, retrying is safe.
    assert lost["statusCode"] == 503
    assert header(lost, "Retry-After") == "1"
    assert item_count(app_db) == 1
    again = run(CREATE, environ=via(relay))
    assert again["statusCode"] == 201
    (row,) = app_db.query("SELECT id, name FROM items")
    assert (body(again)["id"], body(again)["name"]) == row
    assert item_count(app_db) == 1


def test_a_lost_commit_request_then_a_retry_creates_the_item_once(
    schema: None, run: Run, app_db: AppDb, relay: CommitRelay
) -> None:
    relay.lose_request()
    lost = run(CREATE, environ=via(relay))
    assert relay.lost == ["request"]
    assert lost["statusCode"] == 503
    assert item_count(app_db) == 0
    again = run(CREATE, environ=via(relay))
    assert again["statusCode"] == 201
    assert item_count(app_db) == 1


def test_control_without_a_key_a_lost_reply_is_500_and_a_retry_duplicates(
    schema: None, run: Run, app_db: AppDb, relay: CommitRelay
) -> None:
    event = with_key(CREATE, None)
    relay.lose_reply()
    lost = run(CREATE, event=event, environ=via(relay))
    assert lost["statusCode"] == 500
    assert "unknown" in message(lost)
    assert "Idempotency-Key" in message(lost)
    assert run(CREATE, event=event, environ=via(relay))["statusCode"] == 201
    assert item_count(app_db) == 2  # what the key prevents


def test_a_retry_while_the_first_still_runs_waits_then_409_at_lock_timeout(
    schema: None, run: Run, app_db: AppDb
) -> None:
    app_db.query(f"ALTER ROLE \"{app_db.role}\" SET lock_timeout = '300ms'")
    first = app_db.connect()  # the first request, mid-transaction: it holds the key
    try:
        with first.cursor() as cur:
            cur.execute(
                "INSERT INTO lambda_db_idempotency (key, expires_at)"
                " SELECT key, now() + interval '1 hour' FROM (SELECT %s AS key) k",
                (key_of_create(),),
            )
        response = run(CREATE, close_connections=False)
    finally:
        first.rollback()
        first.close()
    assert response["statusCode"] == 409
    assert header(response, "Retry-After") == "1"
    assert "still running" in message(response)
    assert item_count(app_db) == 0
    assert_no_leak(app_db)
    assert run(CREATE)["statusCode"] == 201  # the first rolled back: the retry runs


def key_of_create() -> str:
    """The record key the items API stores for events/items-create-idempotent.json."""
    from lambda_db.idempotency._decorator import KEY_PREFIX, _digest

    value = load_event(CREATE)["headers"]["Idempotency-Key"]
    return f"{KEY_PREFIX}items_api.handler#{_digest(value)}"


def test_a_refused_request_spends_no_key(schema: None, run: Run, app_db: AppDb) -> None:
    """A 400 stores nothing: the client fixes the request and retries with the same key."""
    bad = run(CREATE, event=with_key(CREATE, "k-400", body=json.dumps({"name": ""})))
    assert bad["statusCode"] == 400
    fixed = run(CREATE, event=with_key(CREATE, "k-400"), close_connections=False)
    assert fixed["statusCode"] == 201


def test_the_same_json_in_another_order_is_the_same_request(
    schema: None, run: Run, app_db: AppDb
) -> None:
    doc = {"name": "Widget", "quantity": 3}
    first = run(CREATE, event=with_key(CREATE, "k-order", body=json.dumps(doc)))
    reordered = json.dumps(dict(reversed(list(doc.items()))), indent=1)
    again = run(CREATE, event=with_key(CREATE, "k-order", body=reordered))
    assert (first["statusCode"], again["statusCode"]) == (201, 201)
    assert again["body"] == first["body"]  # the stored answer, not a second item
    assert app_db.query("SELECT count(*) FROM items") == [(1,)]


def test_an_empty_key_is_a_400(schema: None, run: Run) -> None:
    assert run(CREATE, event=with_key(CREATE, ""))["statusCode"] == 400


@pytest.mark.filterwarnings("ignore:POWERTOOLS_DEV environment variable is enabled")
def test_a_500_the_resolver_makes_commits_nothing_and_spends_no_key(
    schema: None, env_vars: dict[str, Any], app_db: AppDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With POWERTOOLS_DEV the resolver answers a route's exception with a 500 instead of
    raising it: what the route wrote before failing is rolled back, and the key is not
    spent on the 500. In process, to make the route fail after its INSERT."""
    import importlib.util

    import lambda_db
    from lambda_db.cli.invoke import load_function
    from lambda_db.testing import LambdaContext
    from tests.template.conftest import TEMPLATE

    config = load_function("ItemsFunction", template_path=TEMPLATE, env_vars=env_vars)
    for name, value in {**config.variables, "POWERTOOLS_DEV": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(config.code_uri))
    spec = importlib.util.spec_from_file_location("items_api_dev", config.code_uri / "items_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    item = module._item

    def fails_after_the_insert(row: Any) -> Any:
        raise RuntimeError("a bug after the write")

    monkeypatch.setattr(module, "_item", fails_after_the_insert)
    lambda_db.reset()
    try:
        failed = module.handler(with_key(CREATE, "k-500"), LambdaContext())
        assert failed["statusCode"] == 500
        assert item_count(app_db) == 0  # the INSERT before the failure was rolled back
        assert app_db.query("SELECT count(*) FROM lambda_db_idempotency") == [(0,)]
        monkeypatch.setattr(module, "_item", item)
        fixed = module.handler(with_key(CREATE, "k-500"), LambdaContext())
        assert fixed["statusCode"] == 201
        assert item_count(app_db) == 1
    finally:
        lambda_db.reset()
