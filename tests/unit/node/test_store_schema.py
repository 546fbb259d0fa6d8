"""The versioned ``state.db`` schema on real SQLite files: a file written before versioning is adopted,
a newer or corrupt one is refused with one clear line and left untouched, and migrations are atomic."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from clawpot import limits
from clawpot.network.ipam import IpAllocator
from clawpot.node import migrations
from clawpot.node.migrations import Migration, migrate
from clawpot.node.records import endpoint_from_text
from clawpot.node.store import Origin, SchemaError, Store, VmRecord
from clawpot.vm.state import VmState
from clawpot.vmm.spec import BackendKind

# The DDL as clawpot-server wrote it before the schema was versioned (main at 5d5c429:
# server/store.py SCHEMA, now src/clawpot/node/store.py, and src/clawpot/network/db.py SCHEMA), copied
# verbatim. Do not edit:
# it is the fixture for "a state.db written by the previous release", whatever the code does today.
UNVERSIONED_STORE_DDL = """
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
);
"""
UNVERSIONED_NETWORK_DDL = """
CREATE TABLE IF NOT EXISTS ip_allocations (
    vm_id        TEXT PRIMARY KEY,
    address      TEXT NOT NULL UNIQUE,
    allow_peers  INTEGER NOT NULL DEFAULT 0,
    allocated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS network_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

ENDPOINT = '{"kind": "serial", "path": "/var/lib/clawpot/vms/0a1b2c3d/agent.sock"}'


def write_unversioned_db(path: Path) -> None:
    """A state.db as the previous server leaves it with one VM running: WAL mode, user_version 0."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(UNVERSIONED_STORE_DDL)
    db.executescript(UNVERSIONED_NETWORK_DDL)
    row = (
        "0a1b2c3d", "Running", "qemu", 2, 512, "192.168.100.2", '{"team": "red"}', 1764000000.5, "",
        "/var/lib/clawpot/vms/0a1b2c3d", 4242, 1, 987654, ENDPOINT,
    )  # fmt: skip
    db.execute(
        "INSERT INTO vms (id, state, backend, vcpus, memory_mib, ip_address, labels, created_at, error,"
        " vm_dir, pid, allow_peers, vmm_start_ticks, agent_endpoint)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )
    db.execute(
        "INSERT INTO ip_allocations (vm_id, address, allow_peers, allocated_at) VALUES (?, ?, ?, ?)",
        ("0a1b2c3d", "192.168.100.2", 1, 1764000000.5),
    )
    db.execute("INSERT INTO network_state (key, value) VALUES ('bridge', 'clawpot-br0')")
    db.close()


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_db_from_before_versioning_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_unversioned_db(path)
    assert user_version(path) == 0
    store = Store(path)
    try:
        assert (store.migrated_from, store.schema_version) == (0, migrations.SCHEMA_VERSION)
        [record] = store.list()
        assert record == VmRecord(
            id="0a1b2c3d",
            state=VmState.RUNNING,
            backend=BackendKind.QEMU,
            vcpus=2,
            memory_mib=512,
            vm_dir=Path("/var/lib/clawpot/vms/0a1b2c3d"),
            created_at=1764000000.5,
            ip_address="192.168.100.2",
            labels={"team": "red"},
            pid=4242,
            allow_peers=True,
            vmm_start_ticks=987654,
            agent_endpoint=ENDPOINT,
        )
        # What adoption needs from the row: the VMM's identity and the way to its agent.
        assert endpoint_from_text(record.agent_endpoint) is not None
        # The store keeps working on the migrated file.
        store.update(record.with_(error="x"))
        assert store.get("0a1b2c3d") == record.with_(error="x")
        # The network package's rows in the same file are untouched and still read by it.
        allocator = IpAllocator(store.path)
        assert [(a.vm_id, str(a.address)) for a in allocator.allocations()] == [("0a1b2c3d", "192.168.100.2")]
    finally:
        store.close()
    assert user_version(path) == migrations.SCHEMA_VERSION
    # Opening again is a no-op: nothing left to migrate.
    again = Store(path)
    try:
        assert (again.migrated_from, again.schema_version) == (migrations.SCHEMA_VERSION,) * 2
        assert [r.id for r in again.list()] == ["0a1b2c3d"]
    finally:
        again.close()


def test_a_new_file_starts_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    store = Store(path)
    try:
        assert (store.migrated_from, store.schema_version) == (0, migrations.SCHEMA_VERSION)
        store.insert(VmRecord("vm1", VmState.STARTING, BackendKind.FIRECRACKER, 1, 256, tmp_path / "vm1"))
        assert [r.id for r in store.list()] == ["vm1"]
    finally:
        store.close()
    assert user_version(path) == migrations.SCHEMA_VERSION


def test_a_newer_db_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_unversioned_db(path)
    newer = migrations.SCHEMA_VERSION + 1
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    before = path.read_bytes()
    with pytest.raises(SchemaError) as info:
        Store(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"schema version {newer}, newer than this clawpot-server knows ({migrations.SCHEMA_VERSION})" in (
        message
    )
    assert str(path) in message
    assert path.read_bytes() == before
    assert user_version(path) == newer


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all, just text" * 100, b"SQLite format 3\x00" + b"\xff" * 4080],
    ids=["text", "damaged-header"],
)
def test_a_corrupt_file_is_refused_with_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(content)
    with pytest.raises(SchemaError) as info:
        Store(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable Clawpot state database (") and "\n" not in message
    assert "move it away to start empty" in message
    assert path.read_bytes() == content


def test_a_database_it_cannot_write_is_refused_without_blaming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_unversioned_db(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for longer than we wait
    try:
        with pytest.raises(SchemaError) as info:
            Store(path)  # waits out its busy timeout (5 s), then gives up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(info.value) == f"cannot use {path}: database is locked"
    store = Store(path)  # nothing was wrong with the file
    try:
        assert [r.id for r in store.list()] == ["0a1b2c3d"]
    finally:
        store.close()


def test_a_foreign_table_under_the_current_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE vms (id TEXT PRIMARY KEY, state TEXT)")
    with pytest.raises(SchemaError, match=r"vms table lacks agent_endpoint, allow_peers, backend"):
        Store(path)
    assert user_version(path) == 0  # the refused migration was rolled back


def test_steps_run_in_order_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path, isolation_level=None)
    steps = (
        Migration(1, "t", ("CREATE TABLE t (a INTEGER)",)),
        Migration(2, "t.b", ("ALTER TABLE t ADD COLUMN b TEXT NOT NULL DEFAULT 'x'",)),
    )
    assert migrate(db, path, steps[:1], frozenset()) == (0, 1)
    db.execute("INSERT INTO t (a) VALUES (1)")
    assert migrate(db, path, steps, frozenset()) == (1, 2)
    assert db.execute("SELECT a, b FROM t").fetchall() == [(1, "x")]

    broken = (*steps, Migration(3, "ok", ("CREATE TABLE u (c)",)), Migration(4, "bad", ("NOT SQL",)))
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, path, broken, frozenset())
    # Step 3 succeeded before step 4 failed, and was rolled back with it: still at version 2.
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchone() is None
    assert not db.in_transaction
    db.close()


def test_migrations_are_numbered_without_gaps(tmp_path: Path) -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, migrations.SCHEMA_VERSION + 1))
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    with pytest.raises(ValueError, match="without gaps"):
        migrate(db, tmp_path / "x.db", (Migration(2, "gap", ()),), frozenset())
    db.close()


def test_the_baseline_step_is_the_unversioned_schema(tmp_path: Path) -> None:
    """Version 1 must describe exactly what unversioned servers wrote: same columns, types, defaults."""

    def columns(ddl_runner: object) -> list[tuple[object, ...]]:
        path = tmp_path / f"{id(ddl_runner)}.db"
        db = sqlite3.connect(path, isolation_level=None)
        ddl_runner(db)  # type: ignore[operator]
        rows = db.execute("PRAGMA table_info(vms)").fetchall()
        db.close()
        return list(rows)

    def baseline(db: sqlite3.Connection) -> None:
        migrate(db, tmp_path / "b.db", migrations.MIGRATIONS[:1], frozenset())

    assert columns(lambda db: db.executescript(UNVERSIONED_STORE_DDL)) == columns(baseline)
    # Later steps only add columns (step 2: origin and snapshot, issue 12's restores; step 3: disk_mib).
    assert {c[1] for c in columns(baseline)} == migrations.VMS_COLUMNS - {"origin", "snapshot", "disk_mib"}


def test_step_2_records_existing_vms_as_cold_boots(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_unversioned_db(path)
    with closing(Store(path)) as store:
        (record,) = store.list()
        assert (record.origin, record.snapshot) == (Origin.COLD, "")
        store.update(record.with_(origin=Origin.RESTORE, snapshot="base"))
        assert store.get(record.id) == record.with_(origin=Origin.RESTORE, snapshot="base")


def test_step_3_records_existing_vms_with_the_1_gib_layer_they_were_made_with(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_unversioned_db(path)
    with closing(Store(path)) as store:
        (record,) = store.list()
        assert record.disk_mib == 1024 == limits.DEFAULT_DISK_MIB
        store.update(record.with_(disk_mib=256))
        assert store.get(record.id) == record.with_(disk_mib=256)
