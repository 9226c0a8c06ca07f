"""The functional tests run once per DB-API driver (``tests/support/drivers.py``)."""

from __future__ import annotations

import pytest

from tests.support import drivers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    drivers.parametrize(metafunc)
