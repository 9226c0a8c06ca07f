"""A network path that turns into a real black hole: a veth pair into a network namespace.

No iptables and no netem here, but as root a network namespace and a veth pair work:
:class:`VethNamespace` makes both, with a ``10.x`` /30 of its own (the host end gets the
first address, the namespace end the second). :meth:`VethNamespace.down` sets the
namespace's end down: from then on every packet either way vanishes. Nothing answers,
nothing is reset, and the kernel acknowledges nothing, which is what a client sees when a
NAT gateway forgets its flow or a security group changes under it. :meth:`~VethNamespace.up`
heals the path; what TCP kept retransmitting gets through again.

:class:`BlackHolePath` puts a PostgreSQL server behind such a link: a relay
(:class:`lambda_db_lab.relay.Relay`) listens inside the namespace, on its address, and
forwards every connection to the server from the host side. A client that connects to
``(path.host, path.port)`` reaches the server only across the veth. Why a relay and not a
second server started inside the namespace: the server under test stays the suite's own
(its statement log, its per-test databases and ledger tables work unchanged), a test pays
for no ``initdb``, and what breaks is exactly the client's path, not the server's.

Names carry the process id and a counter (``ldb-<pid>-<n>``), the /30 is drawn at random
from ``10.64.0.0/10`` among blocks no local address or route overlaps, and
:meth:`~VethNamespace.close` removes the link and the namespace (use the context managers).
Linux and root only: :func:`unavailable_reason` says why not elsewhere.

Example::

    with BlackHolePath("127.0.0.1", pg.port) as path:
        conn = psycopg2.connect(host=path.host, port=path.port, ...)
        path.down()   # conn's next statement gets no answer, and no error either
        path.up()
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from lambda_db_lab.relay import Relay

__all__ = ["BlackHolePath", "VethNamespace", "unavailable_reason"]

logger = logging.getLogger(__name__)

_POOL = ipaddress.ip_network("10.64.0.0/10")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_reason: list[str | None] = []  # cached answer of unavailable_reason()


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (``None`` when they can). Cached."""
    if not _reason:
        _reason.append(_probe())
    return _reason[0]


def _probe() -> str | None:
    if not Path("/proc/self/ns/net").exists():
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and veth pairs need root (run the fault tests as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    try:
        with VethNamespace():
            pass
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        return f"cannot create a network namespace with a veth pair here: {exc}"
    return None


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for entry in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for info in entry.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "default")
        if dst != "default" and ":" not in dst:
            used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return [n for n in used if isinstance(n, ipaddress.IPv4Network)]


def _free_block() -> ipaddress.IPv4Network:
    used = _used_networks()
    blocks = _POOL.num_addresses // 4
    for _ in range(200):
        start = _POOL.network_address + 4 * random.randrange(blocks)  # noqa: S311
        block = ipaddress.IPv4Network(f"{start}/30")
        if not any(block.overlaps(u) for u in used):
            return block
    raise RuntimeError(f"no free /30 in {_POOL}")


def _setns(fd: int) -> None:
    """Move the calling thread (only it) into the network namespace open on ``fd``."""
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class VethNamespace:
    """A network namespace joined to this one by a veth pair; its end can go down and up.

    ``host_address`` is this side's address, ``address`` the namespace's. A context manager:
    leaving it removes both (also when the block raised).
    """

    def __init__(self) -> None:
        n = next(_counter)
        pid = os.getpid()
        self.name = f"ldb-{pid}-{n}"
        self.host_device = f"ldb{pid}h{n}"
        self.device = f"ldb{pid}n{n}"
        block = _free_block()
        first, second = list(block.hosts())
        self.host_address = str(first)
        self.address = str(second)
        self._prefix = block.prefixlen
        self._closed = False
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> VethNamespace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VethNamespace {self.name} {self.host_address} <-> {self.address}>"

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_device, "type", "veth",
            "peer", "name", self.device, "netns", self.name)  # fmt: skip
        _ip("addr", "add", f"{self.host_address}/{self._prefix}", "dev", self.host_device)
        _ip("link", "set", self.host_device, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/{self._prefix}", "dev", self.device)
        _ip("-n", self.name, "link", "set", "lo", "up")
        # Permanent neighbour entries both ways: with the link down, ARP would fail after
        # about 3 s and the kernel would report "No route to host" to a connecting client.
        # A black hole reports nothing.
        _ip("neigh", "replace", self.address, "lladdr", self._mac(self.name, self.device),
            "dev", self.host_device, "nud", "permanent")  # fmt: skip
        _ip("-n", self.name, "neigh", "replace", self.host_address,
            "lladdr", self._mac(None, self.host_device),
            "dev", self.device, "nud", "permanent")  # fmt: skip
        self.up()

    @staticmethod
    def _mac(namespace: str | None, device: str) -> str:
        where = ("-n", namespace) if namespace else ()
        (link,) = json.loads(_ip(*where, "-j", "link", "show", "dev", device))
        return str(link["address"])

    @property
    def is_up(self) -> bool:
        """True when the host end has its carrier (the namespace end is up)."""
        try:
            return Path(f"/sys/class/net/{self.host_device}/carrier").read_text().strip() == "1"
        except OSError:
            return False

    def down(self) -> None:
        """Set the namespace's end down: packets both ways vanish from now on."""
        _ip("-n", self.name, "link", "set", self.device, "down")

    def up(self, timeout: float = 5.0) -> None:
        """Set the namespace's end up again and wait until the link carries packets."""
        _ip("-n", self.name, "link", "set", self.device, "up")
        deadline = time.monotonic() + timeout
        while not self.is_up:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.host_device} has no carrier {timeout:g} s after up")
            time.sleep(0.01)

    def listen(self, port: int = 0) -> socket.socket:
        """A TCP listening socket inside the namespace, on :attr:`address`.

        Made by a short-lived thread that enters the namespace (``setns`` moves only the
        calling thread); the socket stays in the namespace for its whole life, whatever
        thread then uses it.
        """
        made: list[socket.socket | Exception] = []

        def make() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                made.append(socket.create_server((self.address, port)))
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                made.append(exc)

        thread = threading.Thread(target=make, name=f"enter-{self.name}")
        thread.start()
        thread.join()
        (result,) = made
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        """Remove the veth pair and the namespace (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for args in (("link", "del", self.host_device), ("netns", "del", self.name)):
            try:
                _ip(*args)
            except RuntimeError as exc:
                if "Cannot find device" not in str(exc) and "No such file" not in str(exc):
                    logger.warning("cleaning up %s: %s", self.name, exc)


class BlackHolePath:
    """A server at ``(upstream_host, upstream_port)`` reachable at ``(host, port)`` only via a veth.

    :meth:`down` makes the path a black hole, :meth:`up` heals it. A context manager.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.namespace = VethNamespace()
        try:
            self.relay = Relay(upstream_host, upstream_port, listener=self.namespace.listen())
        except BaseException:
            self.namespace.close()
            raise
        self.host = self.relay.host
        self.port = self.relay.port

    def __enter__(self) -> BlackHolePath:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "up" if self.namespace.is_up else "down"
        return f"<BlackHolePath {self.host}:{self.port} ({state})>"

    def down(self) -> None:
        """Packets to and from the server vanish from now on (no RST, no error)."""
        self.namespace.down()

    def up(self) -> None:
        """The path carries packets again."""
        self.namespace.up()

    def close(self) -> None:
        """Close the relay and its connections, then remove the namespace and the link."""
        with contextlib.suppress(Exception):
            self.relay.close()
        self.namespace.close()
