"""Short functions: Lambda's minimum timeout is 1 s, and the deadline margin must leave room.

``DB_DEADLINE_MARGIN`` (1 s by default) is kept free before the function's deadline. Taken
whole, it would leave a 1 s function no time at all (every invocation failed in 0.2 ms
with "no time left to connect" until 19c5966); the margin is now at most a quarter of
the time left.
"""

from __future__ import annotations

from lambda_db import Database
from lambda_db.testing import LambdaContext
from lambda_db_lab.ledger import Ledger, committed_ids, handler_for, invoke, new_event
from tests.conftest import AppDb


def test_a_one_second_function_can_use_the_database_with_default_settings(
    ledger_db: AppDb,
) -> None:
    db = Database(ledger_db.settings)
    outcomes = [invoke(handler_for(db), new_event(i), LambdaContext(timeout=1)) for i in range(2)]
    db.close()
    assert [o.error for o in outcomes] == [None, None], outcomes[0].message
    assert all(o.inside_deadline for o in outcomes)
    Ledger.check(outcomes, committed_ids(ledger_db)).assert_exact()


def test_a_one_second_function_works_with_a_smaller_margin(ledger_db: AppDb) -> None:
    """An explicit small ``DB_DEADLINE_MARGIN`` works too."""
    db = Database(ledger_db.settings.replace(deadline_margin=0.2))
    outcomes = [invoke(handler_for(db), new_event(i), LambdaContext(timeout=1)) for i in range(2)]
    db.close()
    assert [o.error for o in outcomes] == [None, None], outcomes[0].message
    assert all(o.inside_deadline for o in outcomes)
    Ledger.check(outcomes, committed_ids(ledger_db)).assert_exact()
