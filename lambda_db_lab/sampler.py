"""Count a role's server connections as the server sees them, many times a second.

The claim "server connections never above N" is checked where it matters: in
``pg_stat_activity`` on the server, sampled from a thread with its own superuser
connection (which is not counted: it logs in as another role).

Example::

    with ConnectionSampler(pg, role="app") as sampler:
        run_the_load()
    assert sampler.peak <= 50
"""

from __future__ import annotations

import threading

import psycopg2

from lambda_db_lab.localpg import LocalPostgres

__all__ = ["ConnectionSampler"]


class ConnectionSampler:
    """Sample ``count(*)`` of ``role``'s sessions every ``interval`` seconds."""

    def __init__(self, pg: LocalPostgres, role: str, *, interval: float = 0.01) -> None:
        self._pg = pg
        self._role = role
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0
        self.samples = 0
        #: Samples that failed (the server was down): they count nothing.
        self.misses = 0

    def __enter__(self) -> ConnectionSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (takes one last sample first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = None
        while True:
            try:
                if conn is None or conn.closed:
                    conn = self._pg.admin()
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self._role,)
                    )
                    row = cur.fetchone()
                self.samples += 1
                self.peak = max(self.peak, int(row[0]) if row else 0)
            except psycopg2.Error:
                self.misses += 1
                if conn is not None:
                    conn.close()
                conn = None
            if self._stop.wait(self._interval):
                break
        if conn is not None:
            conn.close()
