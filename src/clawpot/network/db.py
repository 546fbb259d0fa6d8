"""SQLite access shared by the allocator and the manager: one write transaction at a time.

Given a path, every call opens its own short-lived connection, so threads and processes can share
the file freely. Given a ``sqlite3.Connection`` (the server's store), calls run on it, serialised
by a lock; if the caller already has a transaction open, the work joins it through a SAVEPOINT, so
the server can insert its VM row and allocate the address in one commit (it should then have
started that transaction with ``BEGIN IMMEDIATE``, or two writers can deadlock on the upgrade).
A shared connection must not be used by other threads while a call runs (the lock here only
serialises this package's own calls): when in doubt, pass the path.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

# Seconds a writer waits for another's transaction (sqlite busy timeout).
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS ip_allocations (
    vm_id        TEXT PRIMARY KEY,
    address      TEXT NOT NULL UNIQUE,
    allow_peers  INTEGER NOT NULL DEFAULT 0,
    allocated_at REAL NOT NULL
);
-- A VM's egress policy (network/policy.py, as JSON). No row: the default policy.
CREATE TABLE IF NOT EXISTS egress_policies (
    vm_id  TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
-- Published ports: the primary key makes two VMs publishing the same host port impossible.
CREATE TABLE IF NOT EXISTS port_forwards (
    host_address TEXT NOT NULL,
    protocol     TEXT NOT NULL,
    host_port    INTEGER NOT NULL,
    vm_id        TEXT NOT NULL,
    guest_port   INTEGER NOT NULL,
    PRIMARY KEY (host_address, protocol, host_port)
);
CREATE TABLE IF NOT EXISTS network_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class Database:
    """A path or a shared connection, with ``write()`` (BEGIN IMMEDIATE) and ``read()`` contexts."""

    def __init__(self, target: Path | str | sqlite3.Connection) -> None:
        self._shared = target if isinstance(target, sqlite3.Connection) else None
        self._path = None if isinstance(target, sqlite3.Connection) else Path(target)
        self._lock = threading.RLock()
        self._schema_ready = False

    @property
    def path(self) -> Path | None:
        return self._path

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        assert self._path is not None
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        with closing(conn):
            yield conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from its first statement."""
        with self._connection() as conn:
            self._ensure_schema(conn)
            if conn.in_transaction:
                conn.execute("SAVEPOINT clawpot_network")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK TO clawpot_network")
                    conn.execute("RELEASE clawpot_network")
                    raise
                conn.execute("RELEASE clawpot_network")
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            self._ensure_schema(conn)
            yield conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if self._schema_ready:
            return
        if conn.in_transaction:
            # executescript() would commit the caller's transaction first; plain statements do not.
            # Not marked ready: the caller may still roll the tables back with its transaction.
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            return
        conn.executescript(SCHEMA)
        self._schema_ready = True

    def get_state(self, key: str) -> str | None:
        with self.read() as conn:
            row = conn.execute("SELECT value FROM network_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
