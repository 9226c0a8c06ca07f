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


def _wait_until_scheduled(dog: Watchdog) -> None:
    """Until the thread has scanned and chosen when to wake (2 s at most)."""
    deadline = time.monotonic() + 2.0
    while dog._wakes_at is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert dog._wakes_at is not None


def test_later_alarms_take_no_lock(
    pair: tuple[socket.socket, socket.socket, Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm path's arm is two stores and a comparison: the lock is for waking."""
    _, _, transport = pair
    dog = Watchdog()
    dog.arm(transport, time.monotonic() + 3600)  # registers the transport, starts the thread
    _wait_until_scheduled(dog)
    dog.disarm(transport)
    woken: list[float] = []
    monkeypatch.setattr(dog, "_wake", lambda transport, at: woken.append(at))
    for i in range(100):
        dog.arm(transport, time.monotonic() + 3601 + i)
        dog.disarm(transport)
    assert woken == []


def test_an_alarm_armed_while_the_thread_scans_is_not_missed() -> None:
    """The handshake: an arm() that takes no lock, made while the thread is between its
    scan and storing when it wakes next, is found by the thread's second look (without
    it, the alarm would fire at the latest cutoff seen: an hour late)."""
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    t1, t2 = Transport(first.fileno()), Transport(second.fileno())
    injected = threading.Event()

    class Racing(Watchdog):
        def _scan(self, now: float, *, fire: bool) -> float | None:
            earliest = super()._scan(now, fire=fire)
            if fire and t1.was_cut and not injected.is_set():
                injected.set()  # the thread holds the lock; arm() takes none, and
                # nothing tells the thread: only its second look can find this alarm
                self.arm(t2, time.monotonic() + 0.05)
            return earliest

    dog = Racing()
    dog.arm(t2, time.monotonic() + 3600)  # registers t2; the latest cutoff is an hour away
    assert dog.disarm(t2) is False
    dog.arm(t1, time.monotonic() + 0.02)  # wakes the thread at +0.02
    second.settimeout(5.0)
    started = time.monotonic()
    assert second.recv(1) == b""  # cut at +0.05, not at +3600
    assert time.monotonic() - started < 5.0
    assert injected.is_set()
    assert dog.disarm(t2) is True
    for s in (t1, t2):
        s.close()
    for sock in (first, first_peer, second, second_peer):
        sock.close()


def test_short_alarms_from_many_threads_all_fire() -> None:
    """Four threads arm short alarms, each due before or after the others', while the
    thread wakes and scans for theirs: none is missed (a missed one would leave its recv
    blocked until the 5 s timeout)."""
    dog = Watchdog()
    rounds = 60
    done: list[int] = []
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(rounds):
                ours, peer = socket.socketpair()
                ours.settimeout(5.0)
                transport = Transport(ours.fileno())
                dog.arm(transport, time.monotonic() + 0.001 * ((seed * 7 + i * 3) % 20))
                assert ours.recv(1) == b""
                assert dog.disarm(transport) is True
                transport.close()
                ours.close()
                peer.close()
            done.append(seed)
        except BaseException as exc:  # reported by the test, not lost with the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(done) == [0, 1, 2, 3]


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
