"""The schema of ``state.db``, as numbered forward migrations.

The file's schema version is SQLite's ``PRAGMA user_version``. ``MIGRATIONS`` lists the steps that
take a database from one version to the next; ``migrate`` applies the pending ones, all in one
transaction, setting ``user_version`` as it goes: a database is always at exactly one version, never
half-way. There are no down-migrations: an older server refuses a newer file instead of guessing.

Adding a column (or table) means appending a ``Migration`` with the next number; a step, once
released, never changes, because databases in the field already ran it.

Version 1 is the schema servers wrote before the file was versioned. Those files say
``user_version = 0``, so step 1 uses ``CREATE TABLE IF NOT EXISTS``: on them it changes nothing but the
version, on a new file it creates the table. The network package keeps its own tables in the same
file (``network/db.py``, also created if missing); they are not versioned here yet.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Migration:
    version: int  # the schema version once this step has run
    name: str
    statements: tuple[str, ...]  # run in order with ``execute`` (not ``executescript``: that commits)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "baseline: the vms table",
        (
            """
            CREATE TABLE IF NOT EXISTS vms (
                id          TEXT PRIMARY KEY,
                state       TEXT NOT NULL,
                backend     TEXT NOT NULL,
                vcpus       INTEGER NOT NULL,
                memory_mib  INTEGER NOT NULL,
                ip_address  TEXT NOT NULL DEFAULT '',
                labels      TEXT NOT NULL DEFAULT '{}',
                created_at  REAL NOT NULL,
                error       TEXT NOT NULL DEFAULT '',
                vm_dir      TEXT NOT NULL,
                pid         INTEGER,
                allow_peers INTEGER NOT NULL DEFAULT 0,
                vmm_start_ticks INTEGER,
                agent_endpoint  TEXT NOT NULL DEFAULT ''
            )
            """,
        ),
    ),
    Migration(
        2,
        "how each VM was made: origin (cold | restore) and the snapshot it was restored from",
        (
            "ALTER TABLE vms ADD COLUMN origin TEXT NOT NULL DEFAULT 'cold'",
            "ALTER TABLE vms ADD COLUMN snapshot TEXT NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        3,
        "per-VM writable layer size (create --disk): disk_mib, 1024 for VMs made before it could be chosen",
        ("ALTER TABLE vms ADD COLUMN disk_mib INTEGER NOT NULL DEFAULT 1024",),
    ),
    Migration(
        4,
        "VM lifetimes: vm_lifetimes (deadline in epoch seconds, and what happens then: delete | pause)",
        (
            """
            CREATE TABLE vm_lifetimes (
                id          TEXT PRIMARY KEY,
                expires_at  REAL NOT NULL,
                on_expiry   TEXT NOT NULL DEFAULT 'delete'
            )
            """,
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

# The columns the store reads and writes at SCHEMA_VERSION; checked after migrating, so a file whose
# tables do not match its version number (written by something else) is refused, not misread.
VMS_COLUMNS = frozenset(
    (
        "id", "state", "backend", "vcpus", "memory_mib", "ip_address", "labels", "created_at", "error",
        "vm_dir", "pid", "allow_peers", "vmm_start_ticks", "agent_endpoint", "origin", "snapshot",
        "disk_mib",
    )
)  # fmt: skip


class MigrationError(Exception):
    """The file cannot be brought to this server's schema (the store reports it as a ``SchemaError``)."""


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    conn: sqlite3.Connection,
    path: Path,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    vms_columns: frozenset[str] = VMS_COLUMNS,
) -> tuple[int, int]:
    """Bring the database to the last version of ``migrations``; returns (version before, after).

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no transaction open. The
    ``vms`` table must then have ``vms_columns`` (tests pass their own steps and an empty set).
    """
    _check_order(migrations)
    target = migrations[-1].version
    # BEGIN IMMEDIATE takes the write lock before reading the version: two processes opening the same
    # file cannot both apply a step.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)
        if found > target:
            raise MigrationError(
                f"{path} has schema version {found}, newer than this clawpot-server knows ({target}): "
                "it was written by a newer release; run that release, or move the file away to start "
                "empty (its VMs would then not be adopted)"
            )
        for step in migrations:
            if step.version <= found:
                continue
            for statement in step.statements:
                conn.execute(statement)
            # PRAGMA takes no bound parameters; the value is an int from our own table.
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
        _check_columns(conn, path, target, vms_columns)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found, target


def _check_order(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if not versions or versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... without gaps, got {versions}")


def _check_columns(conn: sqlite3.Connection, path: Path, version: int, columns: frozenset[str]) -> None:
    found = {row[1] for row in conn.execute("PRAGMA table_info(vms)")}
    missing = sorted(columns - found)
    if missing:
        raise MigrationError(
            f"{path} says schema version {version} but its vms table lacks {', '.join(missing)}: "
            "it was not written by clawpot-server"
        )
