"""The watchdog on real sockets: it cuts what is still armed at its time, and nothing else."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lambda_db._socket import Transport
from lambda_db._watchdog import Watchdog


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, Transport]]:
    """A connected socket pair and a Transport on the first (the driver's) socket."""
    ours, peer = socket.socketpair()
    transport = Transport(ours.fileno())
    yield ours, peer, transport
    transport.close()
    ours.close()
    peer.close()


def test_a_blocked_read_returns_at_the_alarm(
    pair: tuple[socket.socket, socket.socket, Transport],
) -> None:
    ours, _, transport = pair
    dog = Watchdog()
    started = time.monotonic()
    dog.arm(transport, started + 0.2)
    assert ours.recv(1) == b""  # a hung peer: nothing would ever come
    assert 0.15 < time.monotonic() - started < 2.0
    assert dog.disarm(transport) is True


def test_disarmed_in_time_cuts_nothing(
    pair: tuple[socket.socket, socket.socket, Transport],
) -> None:
    ours, peer, transport = pair
    dog = Watchdog()
    dog.arm(transport, time.monotonic() + 0.1)
    assert dog.disarm(transport) is False
    time.sleep(0.3)  # past the alarm's time
    peer.sendall(b"x")
    assert ours.recv(1) == b"x"  # still connected


def test_an_earlier_alarm_wakes_a_thread_sleeping_until_a_later_one(
    pair: tuple[socket.socket, socket.socket, Transport],
) -> None:
    ours, _, transport = pair
    other, other_peer = socket.socketpair()
    dog = Watchdog()
    late = Transport(other.fileno())
    dog.arm(late, time.monotonic() + 3600)
    time.sleep(0.05)  # the thread now sleeps for an hour
    started = time.monotonic()
    dog.arm(transport, started + 0.1)
    assert ours.recv(1) == b""
    assert time.monotonic() - started < 2.0
    assert dog.disarm(transport) is True
    assert dog.disarm(late) is False
    late.close()
    other.close()
    other_peer.close()


def test_later_alarms_do_not_wake_the_thread(
    pair: tuple[socket.socket, socket.socket, Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consecutive invocations arm later and later cutoffs: no notify, no context switch."""
    _, _, transport = pair
    dog = Watchdog()
    dog.arm(transport, time.monotonic() + 3600)
    time.sleep(0.05)  # the thread now sleeps until the first alarm's time
    dog.disarm(transport)  # (it is not woken for that)
    notified: list[bool] = []
    monkeypatch.setattr(dog._cond, "notify", lambda n=1: notified.append(True))
    for i in range(100):
        dog.arm(transport, time.monotonic() + 3601 + i)
        dog.disarm(transport)
    assert notified == []


def test_many_threads_arm_and_disarm_their_own_transports() -> None:
    dog = Watchdog()
    fired: list[bool] = []

    def work() -> None:
        ours, peer = socket.socketpair()
        transport = Transport(ours.fileno())
        for _ in range(200):
            dog.arm(transport, time.monotonic() + 60)
            fired.append(dog.disarm(transport))
        transport.close()
        ours.close()
        peer.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fired == [False] * 800


def test_a_transport_armed_again_after_a_cut_starts_uncut(
    pair: tuple[socket.socket, socket.socket, Transport],
) -> None:
    _, _, transport = pair
    dog = Watchdog()
    dog.arm(transport, time.monotonic())
    deadline = time.monotonic() + 2
    while not transport.was_cut and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dog.disarm(transport) is True
    dog.arm(transport, time.monotonic() + 60)
    assert dog.disarm(transport) is False


def test_a_forked_child_gets_a_fresh_watchdog(
    pair: tuple[socket.socket, socket.socket, Transport],
) -> None:
    from lambda_db._watchdog import WATCHDOG

    _, _, transport = pair
    WATCHDOG.arm(transport, time.monotonic() + 60)  # the thread exists
    WATCHDOG.disarm(transport)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = False
        try:
            a, _peer = socket.socketpair()
            WATCHDOG.arm(transport, time.monotonic() + 3600)  # registered before the fork
            fresh = Transport(a.fileno())  # (the watchdog holds transports weakly)
            WATCHDOG.arm(fresh, time.monotonic() + 0.05)
            ok = a.recv(1) == b""
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    verdict = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    assert verdict == b"1"
