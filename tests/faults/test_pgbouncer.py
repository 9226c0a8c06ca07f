"""Through pgBouncer in transaction mode: correct results, and no session state leaks.

In transaction mode one server session serves many clients, one transaction at a time,
so anything session-level one client sets is seen by the next. By default lambda-db sets
nothing at all; its opt-in ``DB_LOCAL_STATEMENT_TIMEOUT`` is transaction-local: with a pool
of one server connection, a second client on the very same server session must see the
server's defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from lambda_db import Database
from lambda_db.testing import LambdaContext
from lambda_db_lab.appdb import terminate_and_wait
from lambda_db_lab.environments import Environments, Plan
from lambda_db_lab.ledger import Ledger, committed_ids, handler_for, invoke, new_event
from lambda_db_lab.pgbouncer import PgBouncer, find_pgbouncer
from lambda_db_lab.sampler import ConnectionSampler
from tests.conftest import AppDb
from tests.support.pinlog import PinLog

pytestmark = pytest.mark.skipif(
    find_pgbouncer() is None,
    reason="pgbouncer is not installed (`make system-deps` installs it; CI does)",
)

SETTINGS = ("statement_timeout", "idle_in_transaction_session_timeout", "application_name")


def show(cur: Any) -> dict[str, Any]:
    """The settings that could leak, and which server session answered."""
    cur.execute(
        "SELECT pg_backend_pid(), " + ", ".join(f"current_setting('{s}')" for s in SETTINGS)
    )
    row = cur.fetchone()
    return {"pid": row[0], **dict(zip(SETTINGS, row[1:], strict=True))}


def bouncer(app_db: AppDb, pool_size: int) -> PgBouncer:
    return PgBouncer(
        server_port=app_db.pg.port,
        dbname=app_db.name,
        users={app_db.role: app_db.password},
        pool_size=pool_size,
    )


@pytest.fixture
def pool_of_one(ledger_db: AppDb) -> Iterator[PgBouncer]:
    with bouncer(ledger_db, pool_size=1) as pb:
        yield pb


@pytest.mark.pins("the opt-in DB_LOCAL_STATEMENT_TIMEOUT sends SET LOCAL by design")
def test_the_opt_in_statement_timeout_does_not_leak_to_the_next_client(
    ledger_db: AppDb, pool_of_one: PgBouncer
) -> None:
    pb = pool_of_one
    settings = ledger_db.settings.replace(
        host=pb.host, port=pb.port, local_statement_timeout=True, application_name="ours"
    )
    db = Database(settings)
    seen: dict[str, Any] = {}
    outcome = invoke(handler_for(db, during=lambda cur: seen.update(show(cur))),
                     new_event(), LambdaContext(timeout=5))  # fmt: skip
    assert outcome.ok, outcome

    other = psycopg2.connect(**pb.connect_kwargs(ledger_db.role), application_name="theirs")
    other.autocommit = True
    with other.cursor() as cur:
        theirs = show(cur)
    other.close()

    # Inside our invocation the opt-in timeout was in force...
    assert seen["statement_timeout"].endswith("ms")
    assert 0 < int(seen["statement_timeout"][:-2]) <= 4000
    assert seen["idle_in_transaction_session_timeout"] == "0"
    assert seen["application_name"] == "ours"
    # ...and the next client, on the very same server session, sees the defaults.
    assert theirs == {
        "pid": seen["pid"],
        "statement_timeout": "0",
        "idle_in_transaction_session_timeout": "0",
        "application_name": "theirs",
    }
    Ledger.check([outcome], committed_ids(ledger_db)).assert_exact()
    db.close()


@pytest.mark.drivers("psycopg2", reason="a control of the method: no lambda-db in it")
@pytest.mark.pins("the control: a session SET through the pooler, to show it leaks")
def test_control_a_session_level_set_does_leak(ledger_db: AppDb, pool_of_one: PgBouncer) -> None:
    """The method can see a leak: a plain session ``SET`` reaches the next client."""
    first, second = (
        psycopg2.connect(**pool_of_one.connect_kwargs(ledger_db.role)) for _ in range(2)
    )
    first.autocommit = second.autocommit = True
    with first.cursor() as cur:
        cur.execute("SET statement_timeout = '1234ms'")
    with second.cursor() as cur:
        assert show(cur)["statement_timeout"] == "1234ms"
    first.close()
    second.close()


@pytest.mark.slow
@pytest.mark.pins(
    "pgbouncer itself sends SET application_name='...' on its server session when it hands "
    "it to a client (lambda-db sends none)"
)
def test_environments_share_two_server_sessions_and_survive_their_termination(
    ledger_db: AppDb, db_driver: str, pinlog: PinLog
) -> None:
    with bouncer(ledger_db, pool_size=2) as pb:
        env = {**ledger_db, "DB_HOST": pb.host, "DB_PORT": str(pb.port)}
        plan = Plan(env=env, invocations=20, freeze_after=10)
        with (
            pinlog.capture() as block,
            ConnectionSampler(ledger_db.pg, ledger_db.role) as sampler,
            Environments(plan, 6) as envs,
        ):
            envs.wait_frozen()
            killed = terminate_and_wait(ledger_db)  # the pooler's server sessions
            envs.thaw()
            envs.finish()

    assert 1 <= killed <= 2
    assert envs.failures() == []
    assert len(envs.outcomes) == 6 * 20
    assert sampler.peak <= 2  # six environments, two server sessions
    # The environments (processes) ran the test's driver: psycopg 3 binds on the server.
    inserts = [s for s in block.statements(ledger_db.role) if s.startswith("INSERT")]
    assert len(inserts) == 6 * 20
    assert all(("$1" in s) == (db_driver == "psycopg") for s in inserts)
    Ledger.check(envs.outcomes, committed_ids(ledger_db)).assert_exact()
