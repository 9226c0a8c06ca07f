"""A warning when Powertools would hide lambda-db's log records.

Powertools' ``Logger(service=S)``, when it is created, adds a filter to the root logger's
handlers (in Lambda: the runtime's) that drops every record whose logger name contains
``S`` (``SuppressFilter``: ``S not in record.name``). A function whose service is ``db``,
``lambda`` or ``lambda_db`` therefore loses every ``lambda_db.*`` record, the reconnect
warnings included. Python module names cannot contain ``-``, so a service name with a
hyphen (``orders-api``) never hides a module's logger: that is the fix to use.

``POWERTOOLS_LOG_DEDUPLICATION_DISABLED`` set to a true value (what Powertools' own
``strtobool`` accepts: ``1``, ``y``, ``yes``, ``t``, ``true``, ``on``, any case) also
keeps the filter away, so nothing is hidden and no warning is given; but Powertools then
also writes each of its own records twice (its handler, and the runtime's root handler),
so it is not a fix to recommend.

The warning goes through :mod:`warnings`, not :mod:`logging`: a log record of lambda-db's
would be dropped by the very filter it warns about. The check costs one environment
read and a few substring tests, once per process.

Example::

    >>> hidden_by_service_name("db", ["lambda_db", "lambda_db.database"])
    ['lambda_db', 'lambda_db.database']
    >>> hidden_by_service_name("orders-api", ["lambda_db", "lambda_db.database"])
    []
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping

__all__ = ["deduplication_disabled", "hidden_by_service_name", "reset", "warn_if_hidden"]

SERVICE_NAME_VARIABLE = "POWERTOOLS_SERVICE_NAME"
DEDUPLICATION_DISABLED_VARIABLE = "POWERTOOLS_LOG_DEDUPLICATION_DISABLED"
#: The values Powertools reads as true (``aws_lambda_powertools.shared.functions.strtobool``,
#: compared in a test; copied, so that this check imports nothing of Powertools).
TRUE_VALUES = frozenset({"1", "y", "yes", "t", "true", "on"})

_checked = False


def deduplication_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether Powertools reads ``POWERTOOLS_LOG_DEDUPLICATION_DISABLED`` as true (and
    so adds no filter). A value it cannot read makes its ``Logger()`` raise: not disabled.

    >>> deduplication_disabled({"POWERTOOLS_LOG_DEDUPLICATION_DISABLED": "On"})
    True
    >>> deduplication_disabled({"POWERTOOLS_LOG_DEDUPLICATION_DISABLED": "0"})
    False
    """
    return environ.get(DEDUPLICATION_DISABLED_VARIABLE, "false").lower() in TRUE_VALUES


def hidden_by_service_name(service: str, names: Iterable[str]) -> list[str]:
    """The logger names among ``names`` that Powertools' filter for ``service`` drops."""
    return sorted(name for name in names if service and service in name)


def warn_if_hidden(environ: Mapping[str, str] = os.environ) -> str | None:
    """Warn (once per process) when ``POWERTOOLS_SERVICE_NAME`` hides lambda-db's loggers;
    the warning's text, or ``None``. Call it at the first use of a database."""
    global _checked
    if _checked:
        return None
    _checked = True
    service = environ.get(SERVICE_NAME_VARIABLE)
    if not service or deduplication_disabled(environ):
        return None
    names = [
        "lambda_db",
        *(n for n in logging.Logger.manager.loggerDict if n.startswith("lambda_db.")),
    ]
    hidden = hidden_by_service_name(service, names)
    if not hidden:
        return None
    message = (
        f"{SERVICE_NAME_VARIABLE}={service!r} hides lambda-db's log records: Powertools' "
        f"Logger drops records of every logger whose name contains the service name "
        f"({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}). Use a service name "
        f"with a hyphen (e.g. 'orders-api')."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return message


def reset() -> None:
    """Check again at the next :func:`warn_if_hidden` (tests)."""
    global _checked
    _checked = False
