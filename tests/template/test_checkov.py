"""checkov (pinned in pyproject.toml's ``checkov`` extra) over the SAM-transformed template:
no failed check, and every skipped one skipped in the template with a written reason.

checkov pins boto3, packaging and networkx to versions the dev environment cannot take, so
it lives in a virtualenv of its own, ``.venv/checkov-VERSION`` (created on first use; set
``CHECKOV`` to use another checkov). It runs offline: ``--skip-download`` and
``BC_SKIP_MAPPING`` keep it from fetching guidelines from its vendor's API.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.template.conftest import REPO

#: Skipped checks, with the reason in the template's Metadata (docs/deploy.md lists them).
#: A new skip must be added here too, so none slips in unreviewed.
EXPECTED_SKIPS = {
    ("CKV_AWS_149", "AWS::SecretsManager::Secret.DatabaseSecret"),
    ("CKV_AWS_157", "AWS::RDS::DBInstance.Database"),
    ("CKV_AWS_118", "AWS::RDS::DBInstance.Database"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.ItemsLogGroup"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.ConnectionReportLogGroup"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.SchemaSetupLogGroup"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.ApiAccessLogGroup"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.ProxyLogGroup"),
    ("CKV_AWS_27", "AWS::SQS::Queue.ReportFailureQueue"),
    ("CKV_AWS_116", "AWS::Lambda::Function.ItemsFunction"),
    ("CKV_AWS_115", "AWS::Lambda::Function.ItemsFunction"),
    ("CKV_AWS_173", "AWS::Lambda::Function.ItemsFunction"),
    ("CKV_AWS_116", "AWS::Lambda::Function.ConnectionReportFunction"),
    ("CKV_AWS_115", "AWS::Lambda::Function.ConnectionReportFunction"),
    ("CKV_AWS_173", "AWS::Lambda::Function.ConnectionReportFunction"),
    ("CKV_AWS_116", "AWS::Lambda::Function.SchemaSetupFunction"),
    ("CKV_AWS_115", "AWS::Lambda::Function.SchemaSetupFunction"),
    ("CKV_AWS_173", "AWS::Lambda::Function.SchemaSetupFunction"),
    ("CKV_AWS_120", "AWS::ApiGateway::Stage.ItemsApiProdStage"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.StockLogGroup"),
    ("CKV_AWS_116", "AWS::Lambda::Function.StockFunction"),
    ("CKV_AWS_115", "AWS::Lambda::Function.StockFunction"),
    ("CKV_AWS_173", "AWS::Lambda::Function.StockFunction"),
    ("CKV_AWS_27", "AWS::SQS::Queue.ItemImportQueue"),
    ("CKV_AWS_27", "AWS::SQS::Queue.ItemImportDeadLetterQueue"),
    ("CKV_AWS_116", "AWS::Lambda::Function.ItemImportFunction"),
    ("CKV_AWS_115", "AWS::Lambda::Function.ItemImportFunction"),
    ("CKV_AWS_173", "AWS::Lambda::Function.ItemImportFunction"),
    ("CKV_AWS_158", "AWS::Logs::LogGroup.ItemImportLogGroup"),
}
#: A reason is a sentence or more, not a placeholder.
MIN_REASON_LENGTH = 60


def pinned_requirement() -> str:
    """``checkov==X.Y.Z`` from pyproject.toml's ``checkov`` extra."""
    with (REPO / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    (requirement,) = extras["checkov"]
    assert isinstance(requirement, str) and requirement.startswith("checkov=="), requirement
    return requirement


def _install(requirement: str) -> Path:
    """A virtualenv with ``requirement`` under this interpreter's prefix (cached)."""
    version = requirement.split("==", 1)[1]
    home = Path(sys.prefix) / f"checkov-{version}"
    checkov = home / "bin" / "checkov"
    marker = home / ".installed"
    home.parent.mkdir(parents=True, exist_ok=True)
    with (home.parent / f".checkov-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        if marker.exists() and checkov.exists():
            return checkov
        for command in (
            [sys.executable, "-m", "venv", "--clear", str(home)],
            [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement],
        ):
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=900, check=False
            )
            if result.returncode != 0:
                pytest.fail(f"could not install {requirement}: {result.stderr[-2000:]}")
        marker.write_text(requirement + "\n")
    return checkov


@pytest.fixture(scope="module")
def checkov() -> str:
    """The pinned checkov's executable (``CHECKOV`` overrides)."""
    return os.environ.get("CHECKOV") or str(_install(pinned_requirement()))


@pytest.fixture(scope="module")
def scan(
    checkov: str, transformed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """checkov's JSON report on the transformed template."""
    path = tmp_path_factory.mktemp("checkov") / "template.json"
    path.write_text(json.dumps(transformed, indent=1))
    result = subprocess.run(
        [
            checkov,
            "--file",
            str(path),
            "--framework",
            "cloudformation",
            "--output",
            "json",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"},
    )
    # checkov exits 1 when a check fails; anything else is checkov failing.
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one entry per framework
        (report,) = report
    assert isinstance(report, dict)
    return report


def test_checkov_is_the_pinned_version(scan: dict[str, Any]) -> None:
    assert scan["summary"]["checkov_version"] == pinned_requirement().split("==", 1)[1]
    assert scan["summary"]["parsing_errors"] == 0
    assert scan["summary"]["resource_count"] >= 50


def test_no_check_fails(scan: dict[str, Any]) -> None:
    failed = [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for check in scan["results"].get("failed_checks", [])
    ]
    assert failed == []
    assert scan["summary"]["passed"] > 0


def test_every_skip_is_expected_and_has_a_written_reason(scan: dict[str, Any]) -> None:
    skipped = scan["results"].get("skipped_checks", [])
    assert {(check["check_id"], check["resource"]) for check in skipped} == EXPECTED_SKIPS
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) >= MIN_REASON_LENGTH, (check["check_id"], check["resource"], reason)
