"""A black hole: the path to the server drops every packet, and nothing says so.

A NAT gateway that forgot the flow, a security group changed under a running function, a
failed-over endpoint whose old address now answers nothing: no RST, no ICMP, no byte. The
client's socket stays open and TCP retransmits into the void. Here the suite's server is
reached across a veth pair into a network namespace (``lambda_db_lab.netns``), and the test
sets the namespace's end down: a real black hole, no packet filter involved.

Each case runs a 3 s function. The invocation in flight must end with a typed error
before its deadline (``DeadlineExceededError`` when lambda-db cut a statement that got no
answer, ``DatabaseUnavailableError`` when no connection could be made), the first
invocation after the path heals must succeed on a fresh connection, and the ledger must
show nothing lost, duplicated or half-committed. A case that overruns is stopped by
healing the path 2 s past the deadline, and fails saying so.

Needs root (network namespaces); skips, saying so, otherwise.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from lambda_db import Database, Settings
from lambda_db.testing import LambdaContext
from lambda_db_lab.ledger import handler_for, invoke, new_event
from lambda_db_lab.netns import BlackHolePath
from lambda_db_lab.wait import wait_for
from tests.conftest import AppDb
from tests.faults.conftest import (
    FUNCTION_TIMEOUT,
    assert_cut_in_time_then_recovered,
    invoke_or_heal,
)

pytestmark = pytest.mark.slow


def across(path: BlackHolePath, app_db: AppDb) -> Settings:
    """``app_db``'s settings, through the veth (plain TCP: a password needs no TLS here)."""
    return app_db.settings.replace(host=path.host, port=path.port, sslmode="disable")


def unacknowledged(conn: Any) -> int:
    """Segments ``conn``'s socket has sent that the peer has not acknowledged (``TCP_INFO``)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, _TCPI_UNACKED)[0])


#: ``struct tcp_info``: eight one-byte fields, then ``rto, ato, snd_mss, rcv_mss, unacked``.
_TCPI_UNACKED = 8 + 4 * 4


def socket_buffers() -> int:
    """The most a TCP socket may buffer for sending (``tcp_wmem``'s maximum), in bytes."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def cut_then_heal(
    app_db: AppDb, path: BlackHolePath, *, during: Callable[[Any], object] | None = None
) -> None:
    """Warm up; the doomed invocation (the path is cut before it, or by ``during`` inside its
    transaction); heal; the next invocation. Then the verdict on all three."""
    db = Database(across(path, app_db))
    warm = invoke(handler_for(db), new_event(0), LambdaContext(timeout=FUNCTION_TIMEOUT))
    assert warm.ok, warm
    if during is None:
        path.down()
    doomed, overran = invoke_or_heal(handler_for(db, during=during), new_event(1), heal=path.up)
    path.up()
    after = invoke(handler_for(db), new_event(2), LambdaContext(timeout=FUNCTION_TIMEOUT))
    db.close()
    assert_cut_in_time_then_recovered(app_db, [warm, doomed, after], overran=overran)


def test_black_hole_before_a_statement(ledger_db: AppDb, black_hole: BlackHolePath) -> None:
    """The link goes down between two invocations; the next one's first statement meets it."""
    cut_then_heal(ledger_db, black_hole)


def test_black_hole_while_a_statement_waits(ledger_db: AppDb, black_hole: BlackHolePath) -> None:
    """``SELECT pg_sleep(5)`` is running on the server when the link goes down."""

    def sleeping() -> bool:
        rows = ledger_db.query(
            "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
            " AND query LIKE 'SELECT pg_sleep%%'",
            (ledger_db.role,),
        )
        return bool(rows)

    def cut_once_sleeping(conn: Any) -> None:
        wait_for(sleeping, "the handler's pg_sleep to start", timeout=FUNCTION_TIMEOUT)
        # Nothing in flight: the statement's last (possibly delayed) ACK has arrived.
        wait_for(lambda: unacknowledged(conn) == 0, "the statement to be acknowledged")
        black_hole.down()

    def during(cur: Any) -> None:
        threading.Thread(target=cut_once_sleeping, args=(cur.connection,), daemon=True).start()
        cur.execute("SELECT pg_sleep(5)")

    cut_then_heal(ledger_db, black_hole, during=during)


def test_black_hole_while_sending(ledger_db: AppDb, black_hole: BlackHolePath) -> None:
    """The link goes down, then the handler sends a statement bigger than the socket's
    buffers: the send itself blocks, with unacknowledged data in flight."""
    big = "x" * (3 * socket_buffers())

    def during(cur: Any) -> None:
        black_hole.down()
        cur.execute("SELECT length(%s::text)", (big,))

    cut_then_heal(ledger_db, black_hole, during=during)


def test_black_hole_while_connecting(ledger_db: AppDb, black_hole: BlackHolePath) -> None:
    """A cold start on a black-holed path: every connect attempt gets no answer at all."""
    db = Database(across(black_hole, ledger_db))
    black_hole.down()
    doomed, overran = invoke_or_heal(handler_for(db), new_event(1), heal=black_hole.up)
    black_hole.up()
    after = invoke(handler_for(db), new_event(2), LambdaContext(timeout=FUNCTION_TIMEOUT))
    db.close()
    assert_cut_in_time_then_recovered(
        ledger_db, [doomed, after], overran=overran, expected="DatabaseUnavailableError"
    )
