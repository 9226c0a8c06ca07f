"""``sam build`` works here without Docker, although this Python is not the runtime's, and
what it builds is right for the runtime: CPython 3.14 on Linux, one layer for arm64 and one
for x86_64, holding only what runs in Lambda."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.template.conftest import FUNCTIONS, REPO, TEMPLATE, tool

RUNTIME = "3.14"
CP = "cp" + RUNTIME.replace(".", "")
#: Layer logical id -> the machine its binaries are for (pip's and the wheel tags' name).
LAYERS = {"LambdaDbLayerArm64": "aarch64", "LambdaDbLayerX86": "x86_64"}
#: Everything a layer may hold at its top level: lambda_db and its runtime dependencies
#: (psycopg2-binary, certifi, Powertools and Powertools' own: jmespath, typing_extensions),
#: each with its dist-info. Nothing laptop-side (lambda_db_lab, the CLI), no boto3.
LAYER_CONTENTS = {
    "lambda_db",
    "psycopg2",
    "psycopg2_binary.libs",
    "psycopg2_binary.dist-info",
    "certifi",
    "certifi.dist-info",
    "aws_lambda_powertools",
    "aws_lambda_powertools.dist-info",
    "jmespath",
    "jmespath.dist-info",
    "typing_extensions.py",
    "typing_extensions.dist-info",
}


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


def _top_level(site: Path) -> set[str]:
    """The layer's top-level entries, dist-info versions left out."""
    return {re.sub(r"-[^-]+\.dist-info$", ".dist-info", path.name) for path in site.iterdir()}


@pytest.mark.parametrize("layer_id", sorted(LAYERS))
def test_layer_holds_only_what_runs_in_lambda(built: Path, layer_id: str) -> None:
    site = built / layer_id / "python"
    assert sorted(path.name for path in (built / layer_id).iterdir()) == ["python"]
    assert _top_level(site) == LAYER_CONTENTS
    package = site / "lambda_db"
    shipped = {path.relative_to(package).as_posix() for path in package.rglob("*")}
    source = {
        path.relative_to(REPO / "lambda_db").as_posix()
        for path in (REPO / "lambda_db").rglob("*")
        if "__pycache__" not in path.parts
    }
    laptop_side = {name for name in source if name == "cli" or name.startswith("cli/")}
    assert shipped == source - laptop_side - {"testing.py"}
    assert "diagnostics.py" in shipped
    assert not list(site.rglob("__pycache__"))
    assert not list(site.rglob("lambda_db_lab"))
    for name in ("boto3", "botocore", "s3transfer"):
        assert not (site / name).exists(), f"{name} is in the layer; the runtime ships it"


@pytest.mark.parametrize("layer_id", sorted(LAYERS))
def test_layer_psycopg2_is_a_cp314_manylinux_wheel_for_its_machine(
    built: Path, layer_id: str
) -> None:
    machine = LAYERS[layer_id]
    site = built / layer_id / "python"
    (extension,) = (site / "psycopg2").glob("_psycopg*.so")
    assert extension.name == f"_psycopg.cpython-{CP[2:]}-{machine}-linux-gnu.so"
    (wheel,) = site.glob("psycopg2_binary-*.dist-info")
    tags = [
        line.split(": ", 1)[1]
        for line in (wheel / "WHEEL").read_text().splitlines()
        if line.startswith("Tag: ")
    ]
    assert tags and all(tag.startswith(f"{CP}-{CP}-manylinux") for tag in tags), tags
    assert all(tag.endswith(f"_{machine}") for tag in tags), tags
    # Lambda's python3.14 runs on Amazon Linux 2023 (glibc 2.34).
    for tag in tags:
        glibc = re.search(r"manylinux_2_(\d+)_", tag)
        assert glibc is None or int(glibc.group(1)) <= 34, tag


def handler_modules(template: dict[str, Any]) -> dict[str, str]:
    """Every function of the template, with the module its handler is in."""
    return {
        name: resource["Properties"]["Handler"].rsplit(".", 1)[0]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


#: Functions that carry a library of their own beyond the layer (their build Makefile).
WITH_LIBRARIES = {"StockFunction"}


def test_every_function_is_built(built: Path, template: dict[str, Any]) -> None:
    functions = handler_modules(template)
    assert set(functions) == FUNCTIONS
    for function, module in functions.items():
        assert (built / function / f"{module}.py").is_file(), function


def test_functions_hold_only_their_own_code(built: Path, template: dict[str, Any]) -> None:
    for function, module in handler_modules(template).items():
        if function not in WITH_LIBRARIES:
            found = sorted(path.name for path in (built / function).iterdir())
            assert found == [f"{module}.py"], function
    # The SQLAlchemy example carries SQLAlchemy (pure Python: one build for both machines).
    stock = built / "StockFunction"
    assert _top_level(stock) == {"stock_api.py", "sqlalchemy", "sqlalchemy.dist-info"}
    (wheel,) = stock.glob("sqlalchemy-*.dist-info")
    assert "Tag: py3-none-any" in (wheel / "WHEEL").read_text()
    assert not list(stock.rglob("*.so")) and not list(stock.rglob("__pycache__"))


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


def test_handlers_import_on_the_runtimes_python_from_the_layer_alone(
    built: Path, template: dict[str, Any]
) -> None:
    python = _runtime_python()
    if python is None:
        pytest.skip(f"no local python{RUNTIME} to import the built artifacts with")
    native = {machine: layer for layer, machine in LAYERS.items()}.get(platform.machine())
    if native is None:
        pytest.skip(f"no layer for this machine ({platform.machine()})")
    layer = built / native / "python"
    for function, module in handler_modules(template).items():
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
