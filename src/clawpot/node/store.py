"""The server's persistent VM registry, in SQLite.

One row per VM the server knows about. Rows are written before side effects (state Starting) and
deleted after teardown, so a crash at any point leaves a row that reconcile-at-start can act on.
The network package keeps its address allocations in the same database file. The schema is versioned
(``PRAGMA user_version``) and brought up to date when the store opens: see ``migrations``.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from clawpot import limits
from clawpot.node.lifetimes import Expiry, Lifetime
from clawpot.node.migrations import MigrationError, migrate
from clawpot.vm.state import VmState
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


class Origin(enum.StrEnum):
    """How a VM was made (the Vm message and the logs say it)."""

    COLD = "cold"  # booted from the kernel and root image
    RESTORE = "restore"  # restored from a named snapshot (``VmRecord.snapshot`` names it)
    FORK = "fork"  # a copy of a running VM (``VmRecord.snapshot`` holds the source VM's id)
    POOL = "pool"  # handed out from the warm pool (``VmRecord.snapshot`` holds the pool's shape)
    # In the warm pool, not (yet) a user VM: hidden from listings, never exec-able, and removed by
    # reconcile after a restart (a new pool is made from scratch). Becomes POOL when handed out.
    WARM = "warm"


@dataclass(frozen=True)
class VmRecord:
    id: str
    state: VmState
    backend: BackendKind
    vcpus: int
    memory_mib: int
    vm_dir: Path
    created_at: float = field(default_factory=time.time)
    ip_address: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    error: str = ""
    pid: int | None = None
    allow_peers: bool = False
    # Identify the VMM process across server restarts (PID + start time) and how to reach its agent.
    vmm_start_ticks: int | None = None
    agent_endpoint: str = ""
    origin: Origin = Origin.COLD
    # Where a copy came from: the snapshot's name (restore), the source VM's id (fork), the pool's
    # shape (pool, warm). One column for the three, so no schema change was needed for fork and pool.
    snapshot: str = ""
    disk_mib: int = limits.DEFAULT_DISK_MIB  # its writable layer's size (a restore: the snapshot's)

    def with_(self, **changes: object) -> VmRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


class StoreError(Exception):
    """Root of store errors."""


class DuplicateVm(StoreError):
    pass


class SchemaError(StoreError):
    """``state.db`` cannot be opened: newer than this server, corrupt, not a Clawpot database, or not
    usable right now (locked, read-only). The file is left as it was; the message is one line."""


class Store:
    """Thread-safe wrapper over one SQLite connection (the server is one process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: we issue BEGIN ourselves so each write is one explicit transaction.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=5000")
            # Migrate before switching to WAL: a file that is refused is left exactly as it was.
            self.migrated_from, self.schema_version = migrate(self._db, path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit reaches the OS at once (a server killed, even with kill -9, loses
            # nothing) but is fsynced only at checkpoints, so a power loss or kernel crash may drop the
            # last commits, never corrupt the file. What those rows describe (VMM processes, TAPs) dies
            # with the host anyway, and reconcile handles a row or directory either way. FULL cost ~3 ms
            # of fsync per write, twice per pause + resume round trip (issue 12's target: 5 ms in all).
            self._db.execute("PRAGMA synchronous=NORMAL")
        except MigrationError as exc:
            self._db.close()
            raise SchemaError(str(exc)) from None
        except sqlite3.OperationalError as exc:  # locked, read-only, disk full, ...: the file may be fine
            self._db.close()
            raise SchemaError(f"cannot use {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "database disk image is malformed": one line, with the way out.
            self._db.close()
            raise SchemaError(
                f"{path} is not a readable Clawpot state database ({exc}); move it away to start empty "
                "(VMs it lists would then not be adopted)"
            ) from None
        if self.migrated_from != self.schema_version:
            log.info(
                "%s: schema migrated from version %d to %d", path, self.migrated_from, self.schema_version
            )
        self._lock = threading.Lock()

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def insert(self, rec: VmRecord, lifetime: Lifetime | None = None) -> None:
        """A new VM's row and its lifetime, in one transaction: a VM is never stored without the
        deadline it was created with."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO vms (id, state, backend, vcpus, memory_mib, ip_address, labels,"
                    " created_at, error, vm_dir, pid, allow_peers, vmm_start_ticks, agent_endpoint,"
                    " origin, snapshot, disk_mib) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _row(rec),
                )
                if lifetime is not None:
                    _put_lifetime(db, rec.id, lifetime)
        except sqlite3.IntegrityError as exc:
            raise DuplicateVm(f"VM {rec.id} already exists") from exc

    def update(self, rec: VmRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE vms SET state=?, backend=?, vcpus=?, memory_mib=?, ip_address=?, labels=?,"
                " created_at=?, error=?, vm_dir=?, pid=?, allow_peers=?, vmm_start_ticks=?, agent_endpoint=?,"
                " origin=?, snapshot=?, disk_mib=? WHERE id=?",
                (*_row(rec)[1:], rec.id),
            )

    def delete(self, vm_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM vms WHERE id=?", (vm_id,))
            db.execute("DELETE FROM vm_lifetimes WHERE id=?", (vm_id,))

    def set_lifetime(self, vm_id: str, lifetime: Lifetime | None) -> None:
        with self._tx() as db:
            if lifetime is None:
                db.execute("DELETE FROM vm_lifetimes WHERE id=?", (vm_id,))
            else:
                _put_lifetime(db, vm_id, lifetime)

    def lifetimes(self) -> dict[str, Lifetime]:
        with self._lock:
            rows = self._db.execute("SELECT id, expires_at, on_expiry FROM vm_lifetimes").fetchall()
        return {row["id"]: Lifetime(row["expires_at"], Expiry(row["on_expiry"])) for row in rows}

    def get(self, vm_id: str) -> VmRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM vms WHERE id=?", (vm_id,)).fetchone()
        return _record(row) if row else None

    def list(self) -> list[VmRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM vms ORDER BY created_at").fetchall()
        return [_record(r) for r in rows]


def _row(rec: VmRecord) -> tuple[object, ...]:
    return (
        rec.id,
        rec.state.value,
        rec.backend.value,
        rec.vcpus,
        rec.memory_mib,
        rec.ip_address,
        json.dumps(rec.labels, sort_keys=True),
        rec.created_at,
        rec.error,
        str(rec.vm_dir),
        rec.pid,
        int(rec.allow_peers),
        rec.vmm_start_ticks,
        rec.agent_endpoint,
        rec.origin.value,
        rec.snapshot,
        rec.disk_mib,
    )


def _record(row: sqlite3.Row) -> VmRecord:
    return VmRecord(
        id=row["id"],
        state=VmState(row["state"]),
        backend=BackendKind(row["backend"]),
        vcpus=row["vcpus"],
        memory_mib=row["memory_mib"],
        ip_address=row["ip_address"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
        error=row["error"],
        vm_dir=Path(row["vm_dir"]),
        pid=row["pid"],
        allow_peers=bool(row["allow_peers"]),
        vmm_start_ticks=row["vmm_start_ticks"],
        agent_endpoint=row["agent_endpoint"],
        origin=Origin(row["origin"]),
        snapshot=row["snapshot"],
        disk_mib=row["disk_mib"],
    )


def _put_lifetime(db: sqlite3.Connection, vm_id: str, lifetime: Lifetime) -> None:
    db.execute(
        "INSERT INTO vm_lifetimes (id, expires_at, on_expiry) VALUES (?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET expires_at=excluded.expires_at, on_expiry=excluded.on_expiry",
        (vm_id, lifetime.expires_at, lifetime.on_expiry.value),
    )
