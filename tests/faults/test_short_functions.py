"""Short functions: Lambda's minimum timeout is 1 s, and the deadline margin must leave room.

``DB_DEADLINE_MARGIN`` (1 s by default) is kept free before the function's deadline. A
function whose whole timeout is 1 s has no time left after it, and today lambda-db then
refuses to connect at all: every invocation of such a function fails, in 0.2 ms, with a
``DatabaseUnavailableError`` that says to raise the timeout or lower the margin.
"""

from __future__ import annotations

from lambda_db import Database
from tests.conftest import AppDb, FakeLambdaContext
from tests.support.ledger import Ledger, committed_ids, handler_for, invoke, new_event


def test_a_one_second_function_can_use_the_database_with_default_settings(
    ledger_db: AppDb,
) -> None:
    db = Database(ledger_db.settings)
    outcomes = [invoke(handler_for(db), new_event(i), FakeLambdaContext(1000)) for i in range(2)]
    db.close()
    assert [o.error for o in outcomes] == [None, None], outcomes[0].message
    Ledger.check(outcomes, committed_ids(ledger_db)).assert_exact()


def test_a_one_second_function_works_with_a_smaller_margin(ledger_db: AppDb) -> None:
    """The documented way out today: ``DB_DEADLINE_MARGIN`` below the timeout."""
    db = Database(ledger_db.settings.replace(deadline_margin=0.2))
    outcomes = [invoke(handler_for(db), new_event(i), FakeLambdaContext(1000)) for i in range(2)]
    db.close()
    assert [o.error for o in outcomes] == [None, None], outcomes[0].message
    assert all(o.inside_deadline for o in outcomes)
    Ledger.check(outcomes, committed_ids(ledger_db)).assert_exact()
