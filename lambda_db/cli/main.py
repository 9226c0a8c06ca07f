"""``lambda-db``: the command-line entry point (``main``), one subcommand per module.

Each command module registers its parser (``add_parser``) and handles its arguments
(``run(args) -> exit status``). Heavy or optional imports (the embedded server,
pgbouncer, SAM CLI, the runtime client) happen inside the command that needs them, so
``lambda-db capacity`` starts fast and works without the extras' packages.

Exit status: what the command returns (0 success; 1 a check failed: a limit above the
threshold, a workload that does not fit); 2 a usage error (argparse's or the command's)
or a server that cannot be reached; 130 interrupted. ``main`` returns it, never raises
``SystemExit``.

Example::

    $ lambda-db --help
    $ python -m lambda_db.cli doctor --json
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lambda_db.cli import capacity, demo, dev, doctor, invoke, terminate
from lambda_db.cli._connection import CommandError

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``lambda-db`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lambda-db",
        description="Operations tooling for lambda-db: reproduce, diagnose and size "
        "PostgreSQL connection limits for AWS Lambda.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-v info, -vv debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(subparsers)
    dev.add_parser(subparsers)
    doctor.add_parser(subparsers)
    terminate.add_parser(subparsers)
    capacity.add_parser(subparsers)
    invoke.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status.

    >>> main(["capacity", "--max-connections", "100", "--json"])  # doctest: +ELLIPSIS
    {
      "max_connections": 100,
    ...
    0
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0), or a usage error it printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        status: int = args.handler(args)
    except CommandError as exc:
        print(f"lambda-db {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lambda-db {args.command}: interrupted", file=sys.stderr)
        return 130
    return status
