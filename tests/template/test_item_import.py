"""The item import (SQS): its queue, dead-letter queue, event source and alarms in the
template, and the function itself run on events/item-import-batch.json as ``sam local
invoke`` would: a partial batch response, and nothing written twice when the batch comes
back."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

from lambda_db_lab.appdb import AppDb
from tests.template.conftest import REPO, Run, load_event
from tests.template.test_events import assert_no_leak, item_count
from tests.template.test_structure import props


def item_import_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "item_import", REPO / "functions/item_import/item_import.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_queue_dead_letters_after_max_receives_and_keeps_messages_as_long_as_keys(
    template: dict[str, Any],
) -> None:
    queue = props(template, "ItemImportQueue")
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["ItemImportDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "ItemImportMaxReceiveCount"},
    }
    function_timeout = props(template, "ItemImportFunction").get(
        "Timeout", template["Globals"]["Function"]["Timeout"]
    )
    assert queue["VisibilityTimeout"] >= 6 * function_timeout  # AWS's advice
    # A message can come back as long as the queue keeps it: its key must live as long.
    assert queue["MessageRetentionPeriod"] == item_import_module().KEY_EXPIRES_AFTER
    dead_letters = props(template, "ItemImportDeadLetterQueue")
    assert dead_letters["MessageRetentionPeriod"] >= queue["MessageRetentionPeriod"]
    assert dead_letters["SqsManagedSseEnabled"] is True


def test_the_event_source_reports_batch_item_failures_with_bounded_concurrency(
    template: dict[str, Any],
) -> None:
    mapping = props(template, "ItemImportEventSource")
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["ItemImportQueue", "Arn"]}
    assert mapping["FunctionName"] == {"Ref": "ItemImportFunction"}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 10
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "ItemImportMaxConcurrency"}}
    concurrency = template["Parameters"]["ItemImportMaxConcurrency"]
    assert 2 <= concurrency["MinValue"] <= concurrency["Default"]  # SQS allows 2 at least
    assert "connection" in concurrency["Description"]
    assert not props(template, "ItemImportFunction").get("Events")  # the mapping above


def test_alarms_watch_the_dead_letter_queue_and_the_backlog(template: dict[str, Any]) -> None:
    dead = props(template, "ItemImportDeadLettersAlarm")
    assert (dead["Namespace"], dead["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert dead["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["ItemImportDeadLetterQueue", "QueueName"]}}
    ]
    assert dead["Threshold"] == 1
    backlog = props(template, "ItemImportBacklogAlarm")
    assert backlog["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert backlog["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["ItemImportQueue", "QueueName"]}}
    ]
    for alarm in (dead, backlog):
        assert alarm["AlarmActions"] == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }
    assert {"ItemImportQueueUrl", "ItemImportDeadLetterQueueUrl"} <= set(template["Outputs"])


def test_a_batch_commits_the_good_messages_and_reports_the_bad_one(
    schema: None, run: Run, app_db: AppDb
) -> None:
    event = load_event("item-import-batch.json")
    bad = event["Records"][1]["messageId"]
    answer = run("item-import-batch.json", close_connections=False)
    assert answer == {"batchItemFailures": [{"itemIdentifier": bad}]}
    assert_no_leak(app_db, "item-import")
    assert app_db.query("SELECT name, quantity FROM items ORDER BY id") == [
        ("Bolt", 100),
        ("Nut", 250),
    ]
    keys = app_db.query("SELECT count(*) FROM lambda_db_idempotency")
    assert keys == [(2,)]  # the failed message's key rolled back with its savepoint


def test_a_batch_delivered_again_creates_nothing_twice(
    schema: None, run: Run, app_db: AppDb
) -> None:
    first = run("item-import-batch.json")
    event = load_event("item-import-batch.json")
    for record in event["Records"]:  # what a redelivery changes
        record["attributes"]["ApproximateReceiveCount"] = "2"
        record["receiptHandle"] += "-again"
    again = run("item-import-batch.json", event=event)
    assert again == first  # the bad message fails again, and only it
    assert item_count(app_db) == 2


def test_a_message_reused_with_another_body_fails_alone(
    schema: None, run: Run, app_db: AppDb
) -> None:
    run("item-import-batch.json")
    event = load_event("item-import-batch.json")
    event["Records"][0]["body"] = json.dumps({"name": "Bolt", "quantity": 1})
    answer = run("item-import-batch.json", event=event)
    failed = {failure["itemIdentifier"] for failure in answer["batchItemFailures"]}
    assert failed == {event["Records"][0]["messageId"], event["Records"][1]["messageId"]}
    assert item_count(app_db) == 2
