"""What an RDS secret's value must be: the JSON object with ``username`` and ``password``
(and usually ``host``, ``port``, ``dbname``) turned into :class:`Credentials`, and the
region a Secrets Manager ARN names.

``secret.py`` fetches the value, within its budget; this module decodes and checks it.
Every refusal is a :class:`~lambda_db.errors.ConfigurationError` naming
``DB_SECRET_ARN`` and the secret's ARN, never its value.

Example::

    >>> parse_secret("prod/db", {"username": "app", "password": "pw", "port": "5432"}).port
    5432
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lambda_db._credentials.base import Credentials
from lambda_db.config import ENV_SECRET_ARN
from lambda_db.errors import ConfigurationError

__all__ = ["arn_region", "decode_secret", "parse_secret"]


def decode_secret(arn: str, response: Mapping[str, Any]) -> Any:
    """The JSON value of a ``GetSecretValue`` answer; neither it nor its text reaches a
    message."""
    text = response.get("SecretString")
    if not isinstance(text, str):
        raise ConfigurationError(
            f"the secret {arn} has no SecretString (a binary secret): "
            f"{ENV_SECRET_ARN} must name an RDS secret",
            variable=ENV_SECRET_ARN,
        )
    try:
        return json.loads(text)
    except ValueError:
        # Not chained: a JSONDecodeError holds the whole text (.doc), the password too.
        raise ConfigurationError(
            f"the secret {arn} is not JSON: {ENV_SECRET_ARN} must name an RDS "
            f'secret ({{"username": ..., "password": ..., "host": ...}})',
            variable=ENV_SECRET_ARN,
        ) from None


def parse_secret(arn: str, value: Any) -> Credentials:
    """Credentials from the decoded secret ``arn``; the value never reaches a message."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"the secret {arn} is JSON but not an object: {ENV_SECRET_ARN} must "
            f"name an RDS secret with username and password",
            variable=ENV_SECRET_ARN,
        )
    missing = [k for k in ("username", "password") if not _nonempty_str(value.get(k))]
    if missing:
        raise ConfigurationError(
            f"the secret {arn} has no {' or '.join(missing)} (string): "
            f"{ENV_SECRET_ARN} must name an RDS secret",
            variable=ENV_SECRET_ARN,
        )
    port = value.get("port")
    try:
        port_number = int(port) if port not in (None, "") else None
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"the secret {arn} has a port that is not an integer",
            variable=ENV_SECRET_ARN,
        ) from None
    host, dbname = value.get("host"), value.get("dbname")
    return Credentials(
        user=value["username"],
        password=value["password"],
        host=host if _nonempty_str(host) else None,
        port=port_number,
        dbname=dbname if _nonempty_str(dbname) else None,
    )


def arn_region(arn: str) -> str | None:
    """The region field of a Secrets Manager ARN (``None`` for a plain secret name).

    >>> arn_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf")
    'eu-west-1'
    >>> arn_region("prod/db") is None
    True
    """
    parts = arn.split(":")
    return parts[3] or None if arn.startswith("arn:") and len(parts) > 3 else None


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)
