"""Fixtures for the fault matrix: a ledger table, a private server for destructive cases,
and a network path that can become a black hole.

Restarting or starving the suite's shared server would break other tests, so those cases
get their own :class:`~lambda_db_lab.localpg.LocalPostgres`. A black hole needs no server
of its own: :class:`~lambda_db_lab.netns.BlackHolePath` cuts only the test's path to it.

Every case runs once per DB-API driver (``tests/support/drivers.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lambda_db.testing import LambdaContext
from lambda_db_lab.ledger import Handler, Ledger, Outcome, committed_ids, invoke
from lambda_db_lab.localpg import LocalPostgres
from lambda_db_lab.netns import BlackHolePath, unavailable_reason
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb
from tests.support import drivers
from tests.support.fixtures import ledger_db

__all__ = ["assert_cut_in_time_then_recovered", "black_hole", "invoke_or_heal", "ledger_db",
           "private_pg"]  # fmt: skip

#: Lambda's default function timeout: the fault cases run 3 s functions.
FUNCTION_TIMEOUT = 3.0

#: How long past its deadline a stuck invocation may run before the test heals the path
#: (then the invocation ends, late, and the test reports the overrun).
OVERRUN_GRACE = 2.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    drivers.parametrize(metafunc)


@pytest.fixture(scope="package")
def private_pg() -> Iterator[LocalPostgres]:
    """A server of our own, free to be restarted or filled.

    ``synchronous_commit`` is on: the suite's server turns it off for speed, and then a
    crash (``stop -m immediate``) loses commits already acknowledged, which the ledger
    rightly reports as lost invocations.
    """
    with LocalPostgres(settings={"max_connections": "40", "synchronous_commit": "on"}) as server:
        yield server


@pytest.fixture
def black_hole(ledger_db: AppDb) -> Iterator[BlackHolePath]:
    """The suite's server, reachable only across a veth the test can cut (``down()``/``up()``).

    Needs root (a network namespace); skips saying why otherwise. The namespace, the link
    and the relay are removed afterwards, also when the test fails.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with BlackHolePath(ledger_db.pg.host, ledger_db.pg.port) as path:
        yield path


def invoke_or_heal(
    handler: Handler,
    event: dict[str, Any],
    *,
    heal: Callable[[], None],
    timeout: float = FUNCTION_TIMEOUT,
    give_up: float = 90.0,
) -> tuple[Outcome, bool]:
    """Invoke in a thread; if it is still running :data:`OVERRUN_GRACE` s past its deadline,
    ``heal()`` the path and let it finish.

    Returns the outcome and whether it overran (Lambda would have killed it). The test
    never hangs on a stuck invocation, and a stuck one ends before the next begins.
    """
    result: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: result.append(invoke(handler, event, LambdaContext(timeout=timeout))),
        name="invocation",
        daemon=True,
    )
    thread.start()
    thread.join(timeout + OVERRUN_GRACE)
    overran = thread.is_alive()
    if overran:
        heal()
        thread.join(give_up)
        if thread.is_alive():
            raise TimeoutError(f"the invocation still runs {give_up:g} s after the path healed")
    (outcome,) = result
    return outcome, overran


def assert_cut_in_time_then_recovered(
    app_db: AppDb,
    outcomes: list[Outcome],
    *,
    overran: bool,
    expected: str = "DeadlineExceededError",
    timeout: float = FUNCTION_TIMEOUT,
) -> None:
    """``outcomes`` is [warm-up (optional)..., doomed, after]: the doomed invocation got
    ``expected`` before the function's deadline, the next one (path healed) succeeded, and
    the ledger shows nothing lost, duplicated or half-committed."""
    doomed, after = outcomes[-2], outcomes[-1]
    print(f"figure: {doomed.error} after {doomed.elapsed:.3f} s of a {timeout:g} s function")
    assert not overran, (
        f"the invocation ran past its {timeout:g} s deadline (stopped by healing the path "
        f"{OVERRUN_GRACE:g} s later): {doomed}"
    )
    assert doomed.is_a(expected), doomed
    assert doomed.is_a("DatabaseUnavailableError")  # the "retry later" family: a 503
    assert doomed.elapsed < timeout, f"{doomed.elapsed:.2f} s for a {timeout:g} s function"
    assert not doomed.commit_unknown, doomed  # the cut fell before COMMIT: nothing unknown
    assert after.ok, after
    # The abandoned session ends once its client's FIN gets through the healed path.
    wait_for(lambda: len(app_db.backends()) <= 1, "the abandoned session to end")
    Ledger.check(outcomes, committed_ids(app_db)).assert_exact()
