"""What the process's life does to every :class:`~lambda_db.Database`: fork, snapshot, restore.

* **fork** (``multiprocessing`` with the fork start method, a pre-fork server): a child
  shares its parent's sockets, so a statement from the child, or the ``Terminate`` its
  driver sends when the connection object is closed or garbage-collected, would corrupt
  the parent's session. The child forgets the connection without a word to the server: it
  keeps the object alive (never deallocated, never closed) and closes only its own
  duplicate of the socket descriptor. Its next use connects afresh.
* **SnapStart** (``snapshot_restore_py`` hooks, registered by :mod:`lambda_db._snapstart`
  when the runtime offers them): no connection is frozen into the snapshot; restored copies
  forget cached tokens and secrets and reseed their backoff jitter (identical jitter in every
  copy would retry in lockstep).
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol

from lambda_db import _snapstart

__all__ = ["register"]


class Managed(Protocol):
    """What this module needs of a :class:`~lambda_db.Database`."""

    def close(self) -> None: ...

    def invalidate_credentials(self) -> None: ...

    def reseed(self) -> None: ...

    def forget_inherited(self) -> Any: ...


_INSTANCES: weakref.WeakSet[Any] = weakref.WeakSet()
#: Connection objects a forked child inherited: kept alive so that they are never closed.
_INHERITED: list[Any] = []


def register(db: Managed) -> None:
    """Include ``db`` in the process's life events (and register the SnapStart hooks once)."""
    _INSTANCES.add(db)
    _snapstart.register_hooks(before_snapshot, after_restore)


def before_snapshot() -> None:
    """SnapStart: no connection may be frozen into the snapshot."""
    for db in list(_INSTANCES):
        db.close()


def after_restore() -> None:
    """SnapStart: restored copies must share no token, cached secret or random state."""
    for db in list(_INSTANCES):
        db.close()
        db.invalidate_credentials()
        db.reseed()


def after_fork_in_child() -> None:
    """In a forked child: forget every inherited connection (see the module docstring)."""
    for db in list(_INSTANCES):
        inherited = db.forget_inherited()
        if inherited is not None:
            _INHERITED.append(inherited)


os.register_at_fork(after_in_child=after_fork_in_child)
