"""template.yaml passes cfn-lint with no error and no warning, and ``sam validate --lint``
(both pinned in the dev dependencies, both offline)."""

from __future__ import annotations

import os
import subprocess

from tests.template.conftest import REPO, TEMPLATE, tool

QUIET_SAM = {**os.environ, "SAM_CLI_TELEMETRY": "0"}


def test_cfn_lint_reports_nothing() -> None:
    # Exit code 0 means no error, no warning and no informational finding.
    result = subprocess.run(
        [tool("cfn-lint"), "--format", "parseable", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_sam_validate_lint_passes() -> None:
    result = subprocess.run(
        [tool("sam"), "validate", "--lint", "--template", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO,
        env=QUIET_SAM,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr
