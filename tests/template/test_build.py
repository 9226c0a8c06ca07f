"""``sam build`` works here without Docker, although this Python is not the runtime's, and
what it builds is right for the runtime: CPython 3.12 on x86_64 Linux, no boto3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.template.conftest import REPO, TEMPLATE, tool

RUNTIME = "3.12"
CP = "cp" + RUNTIME.replace(".", "")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sam build`` into a temporary directory; returns its build directory."""
    root = tmp_path_factory.mktemp("sam")
    build_dir = root / "build"
    result = subprocess.run(
        [
            tool("sam"),
            "build",
            "--template",
            str(TEMPLATE),
            "--build-dir",
            str(build_dir),
            "--cache-dir",
            str(root / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
        # functions/layer/Makefile runs pip with $(PYTHON): this interpreter, not the runtime's.
        env={**os.environ, "SAM_CLI_TELEMETRY": "0", "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Build Succeeded" in result.stdout + result.stderr
    return build_dir


def test_layer_holds_lambda_db_and_a_cp312_manylinux_psycopg2(built: Path) -> None:
    site = built / "LambdaDbLayer" / "python"
    assert (site / "lambda_db" / "__init__.py").is_file()
    assert (site / "lambda_db" / "diagnostics.py").is_file()
    assert not (site / "lambda_db" / "cli").exists()
    (extension,) = (site / "psycopg2").glob("_psycopg*.so")
    assert extension.name == f"_psycopg.cpython-{CP[2:]}-x86_64-linux-gnu.so"
    (wheel,) = site.glob("psycopg2_binary-*.dist-info")
    tags = [
        line.split(": ", 1)[1]
        for line in (wheel / "WHEEL").read_text().splitlines()
        if line.startswith("Tag: ")
    ]
    assert tags and all(tag.startswith(f"{CP}-{CP}-manylinux") for tag in tags), tags
    assert all(tag.endswith("_x86_64") for tag in tags), tags
    for name in ("certifi", "aws_lambda_powertools"):
        assert (site / name).is_dir(), name
    for name in ("boto3", "botocore", "s3transfer"):
        assert not (site / name).exists(), f"{name} is in the layer; the runtime ships it"
    assert not list(site.rglob("__pycache__"))


def test_functions_hold_only_their_own_code(built: Path) -> None:
    for function, module in (
        ("ItemsFunction", "items_api.py"),
        ("ConnectionReportFunction", "connection_report.py"),
        ("SchemaSetupFunction", "schema_setup.py"),
    ):
        assert sorted(path.name for path in (built / function).iterdir()) == [module]


def _runtime_python() -> str | None:
    """A local CPython of the runtime's version, when this machine has one."""
    candidates = [shutil.which(f"python{RUNTIME}")]
    candidates += [
        str(p)
        for p in Path("~/.pyenv/versions").expanduser().glob(f"{RUNTIME}.*/bin/python{RUNTIME}")
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                subprocess.run(
                    [candidate, "-c", "pass"], check=True, timeout=30, capture_output=True
                )
            except (OSError, subprocess.SubprocessError):
                continue
            return candidate
    return None


def test_handlers_import_on_the_runtimes_python_from_the_layer_alone(built: Path) -> None:
    python = _runtime_python()
    if python is None:
        pytest.skip(f"no local python{RUNTIME} to import the built artifacts with")
    layer = built / "LambdaDbLayer" / "python"
    for function, module in (
        ("ItemsFunction", "items_api"),
        ("ConnectionReportFunction", "connection_report"),
        ("SchemaSetupFunction", "schema_setup"),
    ):
        # -S: no site-packages, so everything beyond the standard library comes from the
        # function and the layer, as on Lambda (which adds only boto3/botocore).
        code = (
            "import sys; "
            f"sys.path[:0] = [{str(built / function)!r}, {str(layer)!r}]; "
            f"import psycopg2, lambda_db, {module}; "
            "assert psycopg2.__file__.startswith(sys.path[1]), psycopg2.__file__; "
            f"assert callable({module}.handler); "
            "assert not [m for m in sys.modules if m.startswith(('boto3', 'botocore', 'yaml'))]; "
            "print(psycopg2.__version__)"
        )
        result = subprocess.run(
            [python, "-S", "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={
                "AWS_SAM_LOCAL": "true",
                "POWERTOOLS_METRICS_NAMESPACE": "LambdaDb",
                "PATH": os.environ.get("PATH", ""),
            },
        )
        assert result.returncode == 0, (function, result.stderr)
