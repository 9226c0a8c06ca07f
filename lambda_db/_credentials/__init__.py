"""Credentials: who we log in as, and where a fresh password comes from.

The three modes (``DB_AUTH_MODE``), one module each; :func:`make_provider` picks one:

* ``password``: ``DB_USER``/``DB_PASSWORD`` from the environment (``password.py``);
* ``secret``: an RDS secret in Secrets Manager (``secret.py``; imports botocore lazily);
* ``iam``: an RDS IAM auth token minted locally (``iam.py``; imports botocore lazily).

``base.py`` holds :class:`Credentials` and the provider protocol, ``_budget.py`` the
arithmetic of a bounded fetch. What the two AWS modes share: ``_aws.py`` (the botocore
session and clients), ``_aws_errors.py`` (how failures are classified and told) and
``_quiet.py`` (botocore's loggers muted while secrets are in flight). Each mode's own
helper: ``_secret_value.py`` (a secret's JSON value checked) and ``_iam_token.py`` (the
SigV4 signing of a token). No module here imports this one or a mode: the imports go one
way, from the modes to ``base.py`` and the private helpers.
"""

from __future__ import annotations

from lambda_db._credentials.base import CredentialProvider, Credentials
from lambda_db._credentials.password import PasswordProvider
from lambda_db.config import Settings

__all__ = ["CredentialProvider", "Credentials", "PasswordProvider", "make_provider"]


def make_provider(settings: Settings) -> CredentialProvider:
    """The provider for ``settings.auth_mode``; AWS libraries load only in their mode.

    >>> make_provider(Settings(host="h", dbname="d", user="u", password="pw")).mode
    'password'
    """
    if settings.auth_mode == "secret":
        from lambda_db._credentials.secret import SecretProvider

        return SecretProvider(settings)
    if settings.auth_mode == "iam":
        from lambda_db._credentials.iam import IamTokenProvider

        return IamTokenProvider(settings)
    return PasswordProvider(settings)
