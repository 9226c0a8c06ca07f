"""Many environments at once, lambda-db beside the seed article's naive pattern.

The short versions of the benchmark's load and burst runs (``python -m bench`` runs the
long ones: 50 environments x 200 invocations). Every invocation writes a row: committed
rows equal successful invocations in every run, for both patterns.
"""

from __future__ import annotations

import pytest

from lambda_db_lab.appdb import terminate_and_wait
from lambda_db_lab.environments import Environments, Pattern, Plan
from lambda_db_lab.ledger import Ledger, committed_ids
from lambda_db_lab.sampler import ConnectionSampler
from tests.conftest import AppDb

ENVIRONMENTS = 8
INVOCATIONS = 30
FROZEN_AT = 15


@pytest.mark.slow
@pytest.mark.parametrize(("pattern", "failures"), [("lambda-db", 0), ("naive", ENVIRONMENTS)])
def test_load_with_every_session_killed_while_frozen(
    ledger_db: AppDb, pattern: Pattern, failures: int
) -> None:
    plan = Plan(env=dict(ledger_db), pattern=pattern, invocations=INVOCATIONS,
                freeze_after=FROZEN_AT)  # fmt: skip
    with (
        ConnectionSampler(ledger_db.pg, ledger_db.role) as sampler,
        Environments(plan, ENVIRONMENTS) as envs,
    ):
        envs.wait_frozen()  # every environment idle between invocations, as Lambda freezes it
        assert terminate_and_wait(ledger_db) == ENVIRONMENTS
        envs.thaw()
        envs.finish()

    assert len(envs.outcomes) == ENVIRONMENTS * INVOCATIONS
    failed = envs.failures()
    assert len(failed) == failures, [o.message for o in failed][:3]
    assert all(o.seq == FROZEN_AT for o in failed)  # the naive pattern: the first after the kill
    assert sampler.peak <= ENVIRONMENTS
    assert all(stats["connects"] == 2 for stats in envs.stats.values())
    Ledger.check(envs.outcomes, committed_ids(ledger_db)).assert_exact()


BURST = 9
ROLE_LIMIT = 3


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["lambda-db", "naive"])
def test_burst_of_environments_beyond_the_role_limit(ledger_db: AppDb, pattern: Pattern) -> None:
    """Nine new environments, three slots: each holds its slot for its short life, then goes."""
    ledger_db.query(f'ALTER ROLE "{ledger_db.role}" CONNECTION LIMIT {ROLE_LIMIT}')
    plan = Plan(env=dict(ledger_db), pattern=pattern, invocations=3, work=0.1, timeout_ms=15_000)
    with (
        ConnectionSampler(ledger_db.pg, ledger_db.role) as sampler,
        Environments(plan, BURST) as envs,
    ):
        envs.finish()

    failed = envs.failures()
    if pattern == "lambda-db":
        assert failed == []
        assert sum(s["retries"] for s in envs.stats.values()) > 0  # the limit was really hit
    else:
        assert failed, "the naive pattern met a full role and should have failed"
        assert all("too many connections for role" in o.message for o in failed)
    assert sampler.peak <= ROLE_LIMIT
    Ledger.check(envs.outcomes, committed_ids(ledger_db)).assert_exact()
