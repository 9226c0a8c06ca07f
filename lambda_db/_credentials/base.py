"""What every credential provider shares: :class:`Credentials` and the provider protocol.

A :class:`CredentialProvider` answers :meth:`~CredentialProvider.get` with
:class:`Credentials`. The connect loop asks for them before every attempt (a provider
caches as it sees fit) and, after an authentication failure, asks once more with
``refresh=True`` when the provider is :attr:`~CredentialProvider.refreshable`: that is
how a rotated secret or an expired token recovers without a second failure.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CredentialProvider", "Credentials"]


class Credentials:
    """A login. ``host``/``port``/``dbname`` are filled only by a provider that knows them
    (an RDS secret does); the environment's values win over them. The password never
    shows in ``repr()``.

    >>> Credentials("app", "s3cret")
    Credentials(user='app', host=None, port=None, dbname=None)
    """

    __slots__ = ("dbname", "host", "password", "port", "user")

    def __init__(
        self,
        user: str,
        password: str | None = None,
        host: str | None = None,
        port: int | None = None,
        dbname: str | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.dbname = dbname

    def __repr__(self) -> str:
        return (
            f"Credentials(user={self.user!r}, host={self.host!r}, port={self.port!r}, "
            f"dbname={self.dbname!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        mine = (self.user, self.password, self.host, self.port, self.dbname)
        return mine == (other.user, other.password, other.host, other.port, other.dbname)

    __hash__ = None  # type: ignore[assignment]


class CredentialProvider(Protocol):
    """Where credentials come from. Implementations never log or show the password.

    Example::

        provider = make_provider(settings)
        credentials = provider.get(budget=deadline - time.monotonic())
    """

    #: The ``DB_AUTH_MODE`` this provider serves.
    mode: str

    @property
    def refreshable(self) -> bool:
        """True when ``get(refresh=True)`` may return something new (a refetch, a new token)."""
        ...

    @property
    def sensitive(self) -> bool:
        """True when the password must never cross a non-encrypted link to a remote host."""
        ...

    def get(self, *, refresh: bool = False, budget: float | None = None) -> Credentials:
        """Credentials for the next attempt; ``refresh=True`` bypasses every cache.

        ``budget`` is how many seconds the caller can wait (the invocation's time left for
        connecting): a provider that makes network calls finishes or fails within it.
        ``None``: no invocation deadline (the provider's own bounds apply).
        """
        ...

    def describe(self) -> str:
        """A safe description for error messages (names, ARNs; never a value)."""
        ...

    def invalidate(self) -> None:
        """Forget cached material and remembered failures (SnapStart restore, tests)."""
        ...
