"""Connection report: measures connection usage against every limit, as CloudWatch metrics.

Runs on a schedule. :func:`lambda_db.diagnostics.collect` reads ``pg_stat_activity``,
``pg_roles`` and ``pg_database`` over the function's own connection and returns each
limit that applies: the server's ``max_connections`` (less the reserved slots), each
role's ``CONNECTION LIMIT`` and each database's. Published through Powertools Metrics
(CloudWatch embedded metric format: log lines, no API call, no NAT needed).

It logs in as a role of its own (``ReportDbUser`` in template.yaml, created by the schema
setup), a member of ``pg_monitor``: only with ``pg_read_all_stats`` does
``pg_stat_activity`` show the state of another role's sessions, so as the application
role the report would count the master user's idle-in-transaction sessions as 0. The role
has no privilege on any table.

Metrics:

* ``ConnectionUtilization`` (Percent) and ``ConnectionHeadroom`` (Count) per limit, with
  dimensions ``scope`` (server, role, database) and ``limit`` (its name);
* ``MaxConnectionUtilization`` (Percent): the fullest limit, alarmed at 80 % by the
  template (the seed article's threshold, on the real limits rather than an estimate);
* ``IdleInTransactionSessions`` (Count): sessions holding a transaction open while idle,
  the connection leak this project's handlers must never leave.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

import lambda_db
from lambda_db import with_connection
from lambda_db.diagnostics import collect

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@with_connection
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Publish one report; return what was published (for logs and local runs)."""
    report = collect(lambda_db.get_connection())
    limits: list[dict[str, Any]] = []
    highest = 0.0
    for usage in report.limits:
        percent = round(100.0 * usage.utilization, 2)
        highest = max(highest, percent)
        for name, unit, value in (
            ("ConnectionUtilization", MetricUnit.Percent, percent),
            ("ConnectionHeadroom", MetricUnit.Count, usage.headroom),
        ):
            with single_metric(
                name=name, unit=unit, value=value, namespace=metrics.namespace
            ) as metric:
                metric.add_dimension(name="service", value=str(metrics.service))
                metric.add_dimension(name="scope", value=usage.scope)
                metric.add_dimension(name="limit", value=usage.name)
        limits.append(
            {
                "scope": usage.scope,
                "name": usage.name,
                "limit": usage.limit,
                "used": usage.used,
                "utilization_percent": percent,
            }
        )
    # Both hold a slot (and locks) until the client ends the transaction.
    idle_in_transaction = report.count(state="idle in transaction") + report.count(
        state="idle in transaction (aborted)"
    )
    metrics.add_metric(name="MaxConnectionUtilization", unit=MetricUnit.Percent, value=highest)
    metrics.add_metric(
        name="IdleInTransactionSessions", unit=MetricUnit.Count, value=idle_in_transaction
    )
    logger.info(
        "connection report",
        extra={
            "limits": limits,
            "client_sessions": report.client_sessions,
            "idle_in_transaction": idle_in_transaction,
        },
    )
    return {
        "limits": limits,
        "max_utilization_percent": highest,
        "idle_in_transaction": idle_in_transaction,
    }
