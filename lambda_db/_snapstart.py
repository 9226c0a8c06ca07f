"""Lambda SnapStart hooks, registered once when the runtime offers them.

``snapshot_restore_py`` exists only inside the Lambda runtime. Before the snapshot every
:class:`~lambda_db.Database` closes its connection (a socket frozen into a snapshot
would be shared by every restored copy); after restore each one forgets cached tokens
and secrets, so the first invocation connects with fresh credentials.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

__all__ = ["register_hooks", "reset"]

logger = logging.getLogger(__name__)

_registered = False


def register_hooks(before_snapshot: Callable[[], None], after_restore: Callable[[], None]) -> bool:
    """Register the hooks with ``snapshot_restore_py`` once; False when it is absent."""
    global _registered
    if _registered:
        return True
    try:
        module = importlib.import_module("snapshot_restore_py")
    except ImportError:
        return False
    module.register_before_snapshot(before_snapshot)
    module.register_after_restore(after_restore)
    _registered = True
    logger.info("registered SnapStart hooks")
    return True


def reset() -> None:
    """Forget the registration (tests)."""
    global _registered
    _registered = False
