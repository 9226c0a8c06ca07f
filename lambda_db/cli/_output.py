"""Plain-text tables, durations and JSON for the commands' output.

Example::

    >>> print(table(["user", "count"], [["app", 9], ["postgres", 1]]))
    user      count
    app           9
    postgres      1
    >>> parse_duration("1h30m"), format_duration(5400.0)
    (5400.0, '1h30m')
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = [
    "DurationError",
    "format_duration",
    "parse_duration",
    "percent",
    "print_json",
    "summary",
    "table",
]

logger = logging.getLogger(__name__)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


class DurationError(argparse.ArgumentTypeError, ValueError):
    """Not a duration: a ``ValueError`` whose message argparse prints as it is."""


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``10m``, ``1h30m``, ``2d`` or ``500ms``.

    >>> parse_duration("10m"), parse_duration("90"), parse_duration("1.5s")
    (600.0, 90.0, 1.5)
    """
    raw = text.strip().lower().replace(" ", "")
    try:
        return float(raw)
    except ValueError:
        pass
    parts = _PART.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise DurationError(f"not a duration: {text!r} (examples: 90, 30s, 10m, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """A short human form: ``42s``, ``10m05s``, ``2h03m``, ``3d04h``.

    >>> format_duration(0.4), format_duration(605), format_duration(7380), format_duration(277200)
    ('0s', '10m05s', '2h03m', '3d05h')
    """
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def percent(fraction: float) -> str:
    """``0.8`` -> ``'80%'``.

    >>> percent(0.8), percent(0.125)
    ('80%', '12%')
    """
    return f"{int(fraction * 100 + 1e-9)}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "") -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        all(_is_number(row[i]) for row in rows if row[i] is not None and row[i] != "")
        and any(row[i] is not None and row[i] != "" for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        out = [
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return (indent + "  ".join(out)).rstrip()

    return "\n".join([line(list(headers))] + [line(row) for row in cells])


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Indented JSON on stdout (or ``stream``), keys in insertion order."""
    print(json.dumps(data, indent=2, default=str), file=stream or sys.stdout)


def summary(doc: str | None) -> str | None:
    r"""A module docstring's first paragraph as plain text, for ``--help``.

    >>> summary("``lambda-db x``: does ``y``.\n\nMore.")
    'Does y.'
    """
    if not doc:
        return None
    first = " ".join(doc.strip().split("\n\n")[0].split())
    first = re.sub(r"^``lambda-db [a-z-]+``: ", "", first).replace("``", "")
    return first[:1].upper() + first[1:]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
