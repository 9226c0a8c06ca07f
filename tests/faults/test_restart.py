"""The server restarted under eight environments invoking in a loop.

The outage is longer than the function's timeout, so some invocations must fail: each
failure must be a typed "try again later" error (``DatabaseUnavailableError`` or a
subclass) raised before the invocation's deadline; once the server is back, nothing
fails any more; and the ledger shows nothing lost and nothing duplicated.
"""

from __future__ import annotations

import time

import pytest

from lambda_db_lab.appdb import ledger_app_db
from lambda_db_lab.environments import Environments, Plan
from lambda_db_lab.ledger import Ledger, committed_ids
from lambda_db_lab.localpg import LocalPostgres
from tests.support.drivers import with_driver

ENVIRONMENTS = 8
TIMEOUT_MS = 2000  # the function's timeout
OUTAGE = 2.5  # seconds the server is down: longer than the timeout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_under_eight_environments(
    private_pg: LocalPostgres, mode: str, db_driver: str
) -> None:
    """``fast``: sessions are terminated cleanly; ``immediate``: as in a crash, with
    crash recovery at the next start."""
    app_db = with_driver(ledger_app_db(private_pg), db_driver)
    plan = Plan(
        env={**app_db, "DB_DEADLINE_MARGIN": "0.5"},
        timeout_ms=TIMEOUT_MS,
        pause=0.01,
    )
    with Environments(plan, ENVIRONMENTS) as envs:
        everyone = range(ENVIRONMENTS)
        envs.wait_until(
            lambda e: all(e.successes(i) >= 3 for i in everyone), 60, "warm environments"
        )
        down = time.monotonic()
        private_pg.stop(mode=mode)  # every session is terminated
        time.sleep(OUTAGE)
        private_pg.start()  # returns once the server accepts connections
        back = time.monotonic()
        envs.wait_until(
            lambda e: all(e.successes(i, since=back) >= 3 for i in everyone),
            60,
            "every environment to succeed after the restart",
        )
        envs.finish()

    failures = envs.failures()
    assert failures, "the outage was longer than the timeout: something had to fail"
    assert {o.error for o in failures} <= {
        "ConnectionLostError",  # in flight when the server stopped
        "DatabaseUnavailableError",  # started while it was down, deadline reached
        "ConnectionLimitError",
    }, {o.error: o.message for o in failures}
    assert all(o.is_a("DatabaseUnavailableError") for o in failures)
    late = [o for o in envs.outcomes if not o.inside_deadline]
    assert not late, late[:3]
    assert all(o.started < back for o in failures), "a failure after the server was back"
    assert all(o.ended >= down for o in failures), "a failure before the outage"
    ledger = Ledger.check(envs.outcomes, committed_ids(app_db))
    ledger.assert_exact()
