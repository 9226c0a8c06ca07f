"""The CLI's small helpers, and every doctest in the CLI modules and diagnostics."""

from __future__ import annotations

import doctest
import importlib

import pytest

from lambda_db.cli._output import format_duration, parse_duration, table

MODULES = [
    "lambda_db.diagnostics",
    "lambda_db.cli._output",
    "lambda_db.cli._connection",
    "lambda_db_lab.ledger",
    "lambda_db.cli.capacity",
    "lambda_db.cli.doctor",
    "lambda_db.cli.demo",
    "lambda_db.cli.main",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        (" 5 m ", 300.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m10", "10m5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (59.9, 60, 3599, 3600, 86400)] == [
        "59s",
        "1m00s",
        "59m59s",
        "1h00m",
        "1d00h",
    ]


def test_table_aligns_numbers_right() -> None:
    text = table(["name", "n"], [["a", 1], ["bbb", 22], ["c", None]])
    assert text.splitlines() == ["name   n", "a      1", "bbb   22", "c      -"]
