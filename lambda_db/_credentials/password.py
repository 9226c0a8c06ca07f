"""``DB_AUTH_MODE=password``: the user and password from the settings, as given."""

from __future__ import annotations

from lambda_db._credentials.base import Credentials
from lambda_db.config import ENV_PASSWORD, Settings

__all__ = ["PasswordProvider"]


class PasswordProvider:
    """``DB_AUTH_MODE=password``: the user and password given in the settings.

    Nothing is refreshed after a refused login (there is nothing new to try).

    >>> p = PasswordProvider(Settings(host="h", dbname="d", user="u", password="pw"))
    >>> p.get().user, p.refreshable
    ('u', False)
    """

    mode = "password"
    refreshable = False
    sensitive = False

    def __init__(self, settings: Settings) -> None:
        self._credentials = Credentials(user=settings.user, password=settings.password)

    def get(self, *, refresh: bool = False, budget: float | None = None) -> Credentials:
        return self._credentials

    def describe(self) -> str:
        return f"the password in {ENV_PASSWORD} for user {self._credentials.user!r}"

    def invalidate(self) -> None:
        return None
