"""A backend terminated by the server: an operator, a failover, RDS Proxy's idle timeout.

``pg_terminate_backend`` is what the server does to a session in all of these; the
client finds out only when it next looks at its socket.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from lambda_db import Database
from lambda_db.testing import LambdaContext
from lambda_db_lab.appdb import terminate_and_wait
from lambda_db_lab.ledger import Ledger, Outcome, committed_ids, handler_for, invoke, new_event
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb


def test_terminated_while_idle_next_invocation_succeeds_without_sleeping(ledger_db: AppDb) -> None:
    sleeps: list[float] = []
    db = Database(ledger_db.settings, sleep=sleeps.append)
    handler = handler_for(db)
    outcomes = [invoke(handler, new_event(0), LambdaContext())]
    assert terminate_and_wait(ledger_db) == 1  # while the environment is "frozen"
    outcomes.append(invoke(handler, new_event(1), LambdaContext()))

    assert [o.error for o in outcomes] == [None, None]
    assert sleeps == []  # replacing a connection the server killed never backs off
    assert (db.stats.connects, db.stats.health_check_failures) == (2, 1)
    Ledger.check(outcomes, committed_ids(ledger_db)).assert_exact()
    db.close()


def _kill_between_statements(app_db: AppDb) -> Callable[[Any], None]:
    def during(cur: Any) -> None:
        terminate_and_wait(app_db)
        cur.execute("SELECT 1")

    return during


def _kill_before_commit(app_db: AppDb) -> Callable[[Any], None]:
    def during(cur: Any) -> None:
        terminate_and_wait(app_db)  # the handler returns; COMMIT meets the dead backend

    return during


def _kill_during_a_statement(app_db: AppDb) -> Callable[[Any], None]:
    def during(cur: Any) -> None:
        pid = cur.connection.info.backend_pid

        def killer() -> None:
            wait_for(
                lambda: app_db.query(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                    " AND query LIKE 'SELECT pg_sleep%%'",
                    (pid,),
                ),
                "the statement to run",
            )
            terminate_and_wait(app_db)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            cur.execute("SELECT pg_sleep(30)")
        finally:
            thread.join()

    return during


@pytest.mark.parametrize(
    "fault",
    [_kill_between_statements, _kill_before_commit, _kill_during_a_statement],
    ids=["between-statements", "before-commit", "during-a-statement"],
)
def test_terminated_mid_transaction_fails_that_invocation_and_commits_nothing(
    ledger_db: AppDb, fault: Callable[[AppDb], Callable[[Any], None]]
) -> None:
    sleeps: list[float] = []
    db = Database(ledger_db.settings, sleep=sleeps.append)
    doomed = invoke(handler_for(db, during=fault(ledger_db)), new_event(0), LambdaContext())
    after = invoke(handler_for(db), new_event(1), LambdaContext())

    assert doomed.is_a("ConnectionLostError"), doomed
    assert "nothing was replayed" in doomed.message
    assert doomed.inside_deadline
    assert after.ok, after
    assert sleeps == []
    ledger = Ledger.check([doomed, after], committed_ids(ledger_db))
    ledger.assert_exact()
    assert (ledger.committed, ledger.unknown_committed) == (1, 0)  # the half-done one left nothing
    assert ledger_db.backends("idle in transaction") == []
    assert db.stats.connections_lost == 1
    db.close()


def test_before_commit_says_the_outcome_is_unknown(ledger_db: AppDb) -> None:
    db = Database(ledger_db.settings)
    doomed: Outcome = invoke(
        handler_for(db, during=_kill_before_commit(ledger_db)), new_event(), LambdaContext()
    )
    assert doomed.is_a("ConnectionLostError")
    assert doomed.commit_unknown, doomed.message  # the caller must not assume a rollback
    db.close()
