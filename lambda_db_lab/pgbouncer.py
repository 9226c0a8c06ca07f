"""A throwaway pgBouncer in transaction mode, in front of a local server (demo part 3).

It writes ``pgbouncer.ini`` and ``userlist.txt`` into a temporary directory, listens on
``127.0.0.1`` on a free port, and runs in the foreground as a child process, stopped
by its pid. pgBouncer refuses to run as root, so as root it runs as the unprivileged
system user that :class:`lambda_db_lab.localpg.LocalPostgres` runs the server as. The
userlist holds plain passwords (pgBouncer then speaks scram-sha-256 to both sides);
the directory is readable only by that user and deleted on stop.

Example::

    with PgBouncer(server_port=pg.port, dbname="app", users={"app": "pw"}, pool_size=4) as pb:
        conn = psycopg2.connect(host=pb.host, port=pb.port, dbname="app", user="app",
                                password="pw")
        pb.show_pools()   # [{'database': 'app', 'user': 'app', 'cl_active': 1, ...}]
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2
import psycopg2.extensions

from lambda_db_lab.localpg import ensure_system_user, free_port

__all__ = ["PgBouncer", "find_pgbouncer"]

logger = logging.getLogger(__name__)

#: Where distributions install it when ``/usr/sbin`` is not on ``PATH``.
_KNOWN_PATHS = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/bin/pgbouncer")
STATS_USER = "pgbouncer_stats"


def find_pgbouncer() -> str | None:
    """The pgbouncer executable, or ``None`` (``make system-deps`` installs it)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((p for p in _KNOWN_PATHS if os.access(p, os.X_OK)), None)


class PgBouncer:
    """Start and stop one pgBouncer. A context manager.

    ``users`` maps role names to passwords (written to the userlist); the statistics
    user ``pgbouncer_stats`` is added with a random password for :meth:`show_pools`.
    """

    def __init__(
        self,
        *,
        server_port: int,
        dbname: str,
        users: dict[str, str],
        pool_size: int = 4,
        server_host: str = "127.0.0.1",
        max_client_conn: int = 1000,
        pool_mode: str = "transaction",
        executable: str | None = None,
    ) -> None:
        found = executable or find_pgbouncer()
        if found is None:
            raise RuntimeError("pgbouncer is not installed (make system-deps installs it)")
        self.executable = found
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dbname = dbname
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self._users = dict(users)
        self._stats_password = secrets.token_urlsafe(18)
        self._server = (server_host, server_port)
        self._max_client_conn = max_client_conn
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def log_path(self) -> Path | None:
        """pgBouncer's log file (while running)."""
        return self._dir / "pgbouncer.log" if self._dir else None

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration, start pgBouncer and wait until it accepts logins."""
        # as root, the unprivileged user LocalPostgres runs the server as
        run_as = ensure_system_user() if os.geteuid() == 0 else None
        self._dir = Path(tempfile.mkdtemp(prefix="lambda-db-pgbouncer-"))
        ini = self._write_config(self._dir)
        if run_as is not None:
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
        self._proc = subprocess.Popen(
            [self.executable, "-q", str(ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir,
            **kwargs,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin().close()
                break
            except psycopg2.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self._read_log()
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start:\n{log}") from None
                time.sleep(0.05)
        logger.info("pgbouncer (%s mode) listening on %s:%d", self.pool_mode, self.host, self.port)

    def stop(self) -> None:
        """Stop pgBouncer (by its pid) and delete its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def connect_kwargs(self, user: str) -> dict[str, Any]:
        """Keyword arguments for :func:`psycopg2.connect` through the pooler."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": user,
            "password": self._users[user],
            "sslmode": "disable",
            "connect_timeout": 5,
        }

    def admin(self) -> psycopg2.extensions.connection:
        """An autocommit connection to the ``pgbouncer`` console as the statistics user."""
        conn: psycopg2.extensions.connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            dbname="pgbouncer",
            user=STATS_USER,
            password=self._stats_password,
            sslmode="disable",
            connect_timeout=2,
        )
        conn.autocommit = True
        return conn

    def show_pools(
        self, conn: psycopg2.extensions.connection | None = None
    ) -> list[dict[str, Any]]:
        """``SHOW POOLS`` as dictionaries, one per (database, user) pool."""
        own = conn is None
        console = self.admin() if conn is None else conn
        try:
            with console.cursor() as cur:
                cur.execute("SHOW POOLS")
                names = [d[0] for d in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            if own:
                console.close()

    def _write_config(self, directory: Path) -> Path:
        def quote(value: str) -> str:
            return '"' + value.replace('"', '""') + '"'

        users = {**self._users, STATS_USER: self._stats_password}
        userlist = directory / "userlist.txt"
        userlist.write_text("".join(f"{quote(u)} {quote(p)}\n" for u, p in users.items()))
        userlist.chmod(0o600)
        host, port = self._server
        ini = directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{self.dbname} = host={host} port={port} dbname={self.dbname}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = {self.host}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {userlist}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"max_client_conn = {self._max_client_conn}\n"
            f"default_pool_size = {self.pool_size}\n"
            "reserve_pool_size = 0\n"
            "server_idle_timeout = 600\n"
            f"stats_users = {STATS_USER}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {directory / 'pgbouncer.log'}\n"
            f"pidfile = {directory / 'pgbouncer.pid'}\n"
        )
        ini.chmod(0o600)
        return ini

    def _read_log(self) -> str:
        path = self.log_path
        with contextlib.suppress(OSError):
            if path is not None:
                return path.read_text()[-3000:]
        return ""
