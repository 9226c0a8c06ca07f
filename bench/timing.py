"""How things are timed: batches on ``perf_counter_ns``, interleaved rounds, medians.

A call that takes a few microseconds cannot be timed one by one (the clock read costs
about as much), so each sample is a batch of calls divided by its size. Cases compared
with each other run in interleaved rounds (A B C, A B C, ...), so that a noisy
neighbour on a shared machine slows all of them rather than one.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = ["batch_samples", "import_cost", "interleaved", "percentile"]


def batch_samples(fn: Callable[[], object], *, calls: int, batch: int) -> list[float]:
    """Per-call microseconds, one sample per batch of ``batch`` calls."""
    samples = []
    for _ in range(max(1, calls // batch)):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000.0)
    return samples


def interleaved(
    cases: Mapping[str, tuple[Callable[[], object], int, int]], *, rounds: int
) -> dict[str, list[float]]:
    """Samples per case; ``cases`` maps a name to ``(fn, calls per round, batch)``.

    One warm-up batch per case first, not counted.
    """
    for fn, _calls, batch in cases.values():
        batch_samples(fn, calls=batch, batch=batch)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, calls, batch) in cases.items():
            samples[name] += batch_samples(fn, calls=calls, batch=batch)
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_WALL = (
    "import sys, time\n"
    "t = time.perf_counter()\n"
    "import {module}\n"
    "ms = (time.perf_counter() - t) * 1000\n"
    "aws = sorted(m for m in ('boto3', 'botocore') if m in sys.modules)\n"
    "print(ms, ','.join(aws) or '-')\n"
)


def import_cost(modules: Sequence[str], *, repeats: int) -> dict[str, dict[str, object]]:
    """Median cost of ``import <module>`` in fresh interpreters, interleaved by module.

    ``importtime_ms``: the module's cumulative figure from ``-X importtime``;
    ``wall_ms``: ``perf_counter`` around the import, in a separate interpreter (importtime
    adds its own overhead); ``aws_modules``: boto3/botocore found in ``sys.modules``.
    """
    cumulative: dict[str, list[float]] = {m: [] for m in modules}
    wall: dict[str, list[float]] = {m: [] for m in modules}
    aws: dict[str, set[str]] = {m: set() for m in modules}
    for module in modules:  # warm the file cache, not counted
        _python("-c", f"import {module}")
    for _ in range(repeats):
        for module in modules:
            err = _python("-X", "importtime", "-c", f"import {module}").stderr
            for line in err.splitlines():
                parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
                if len(parts) == 3 and parts[2] == module:
                    cumulative[module].append(int(parts[1]) / 1000.0)
            out = _python("-c", _WALL.format(module=module)).stdout.split()
            wall[module].append(float(out[0]))
            aws[module].update(x for x in out[1].split(",") if x != "-")
    return {
        m: {
            "importtime_ms": statistics.median(cumulative[m]),
            "wall_ms": statistics.median(wall[m]),
            "aws_modules": sorted(aws[m]),
            "repeats": repeats,
        }
        for m in modules
    }


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, cwd="/"
    )
