"""The doctests in the functions' modules, which pytest's ``--doctest-modules`` never
collects (``functions/`` is outside ``testpaths``): each module is loaded from its file,
as the Lambda runtime would, and its examples run here, so that they can fail."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
#: Every function module with an example in it.
WITH_EXAMPLES = sorted(
    path for path in FUNCTIONS.glob("*/*.py") if ">>>" in path.read_text(encoding="utf-8")
)


def test_the_schema_setup_has_examples() -> None:
    assert FUNCTIONS / "schema_setup" / "schema_setup.py" in WITH_EXAMPLES


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=lambda path: path.stem)
def test_examples(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under its handler's module name (the examples' tracebacks name it), for this test only.
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0
    assert failed == 0, f"{failed} of {attempted} examples failed in {path} (output above)"
