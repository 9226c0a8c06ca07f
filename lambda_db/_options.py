"""An invocation's transaction options, checked once (when decorating, where possible).

``autocommit``, ``isolation_level``, ``readonly`` and ``deferrable`` apply to one
invocation's transaction; lambda-db sends the characteristics with ``BEGIN``, never as
``SET`` (which pins RDS Proxy), so what cannot be honoured that way is refused here.
"""

from __future__ import annotations

from lambda_db.errors import ConfigurationError

__all__ = ["ISOLATION_LEVELS", "Options", "check_options", "options_of"]

#: PostgreSQL's isolation levels (``isolation_level=``, any case).
ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")

#: ``(autocommit, isolation_level, readonly, deferrable)``, checked.
Options = tuple[bool, str | None, bool | None, bool | None]


def options_of(
    autocommit: bool, isolation_level: str | None, readonly: bool | None, deferrable: bool | None
) -> Options | None:
    """The checked options, or ``None`` for the defaults (a transaction with the server's
    characteristics), which the warm path recognises with one comparison.

    >>> options_of(False, None, None, None) is None
    True
    >>> options_of(False, "serializable", True, None)
    (False, 'serializable', True, None)
    """
    check_options(autocommit, isolation_level, readonly, deferrable)
    if not autocommit and (isolation_level, readonly, deferrable) == (None, None, None):
        return None
    return (autocommit, isolation_level, readonly, deferrable)


def check_options(
    autocommit: bool, isolation_level: str | None, readonly: bool | None, deferrable: bool | None
) -> None:
    """Refuse what cannot be honoured: an unknown isolation level, or options that would
    need ``SET`` (which pins RDS Proxy).

    >>> check_options(True, None, None, None)
    >>> check_options(True, "SERIALIZABLE", None, None)
    Traceback (most recent call last):
    lambda_db.errors.ConfigurationError: autocommit=True runs no transaction, ...
    >>> check_options(False, "SERIALISABLE", None, None)
    Traceback (most recent call last):
    lambda_db.errors.ConfigurationError: isolation_level must be one of ...
    """
    if isolation_level is not None and (
        not isinstance(isolation_level, str) or isolation_level.upper() not in ISOLATION_LEVELS
    ):
        raise ConfigurationError(
            f"isolation_level must be one of {', '.join(ISOLATION_LEVELS)}, got "
            f"{isolation_level!r}",
            variable="isolation_level",
        )
    if autocommit and (isolation_level, readonly, deferrable) != (None, None, None):
        raise ConfigurationError(
            "autocommit=True runs no transaction, so isolation_level, readonly and "
            "deferrable cannot apply (the driver would need SET default_transaction_*, "
            "which pins RDS Proxy)",
            variable="autocommit",
        )
