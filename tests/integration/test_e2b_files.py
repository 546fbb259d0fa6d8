"""The real ``e2b`` SDK's ``files`` API (sync and async) against a real server and a real QEMU/TCG VM.

The server, its network namespace, the relay and the VM come from test_e2b_envd's fixtures (one VM for
this module, made by ``Sandbox.create``); each test connects with ``Sandbox.connect``. Checked as the
SDK documents it and as E2B's own SDK tests do: the default user ``user`` (relative paths from
/home/user, files owned by ``user``), read/write text and a 1 MiB binary, several files at once, gzip,
list with depth, exists, get_info, make_dir, rename, remove, watch_dir (events, recursive), and the
SDK's exceptions for a missing file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import pytest
from e2b import FilesystemEvent, FilesystemEventType, FileType
from e2b.exceptions import FileNotFoundException, SandboxException
from e2b.sandbox.filesystem.filesystem import WriteEntry
from test_e2b_envd import Envd, assets, envd

pytestmark = pytest.mark.integration

__all__ = ["assets", "envd"]  # the fixtures this module shares with test_e2b_envd's definitions


def test_read_write_text_binary_and_missing(envd: Envd) -> None:
    sbx = envd.sandbox()
    info = sbx.files.write("notes/hello.txt", "hello from the SDK")
    assert (info.path, info.name, info.type) == ("/home/user/notes/hello.txt", "hello.txt", FileType.FILE)
    assert sbx.files.read("notes/hello.txt") == "hello from the SDK"
    assert sbx.files.read("/home/user/notes/hello.txt") == "hello from the SDK"
    assert (
        sbx.commands.run("stat -c '%U %G %a' notes/hello.txt notes").stdout
        == "user user 644\nuser user 755\n"
    )

    blob = os.urandom(1 << 20)
    sbx.files.write("blob.bin", blob)
    assert bytes(sbx.files.read("blob.bin", format="bytes")) == blob
    assert sbx.commands.run("sha256sum blob.bin").stdout.split()[0] == hashlib.sha256(blob).hexdigest()

    with pytest.raises(FileNotFoundException):
        sbx.files.read("does-not-exist.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info("does-not-exist.txt")
    assert sbx.files.exists("notes") and not sbx.files.exists("does-not-exist.txt")


def test_write_files_and_gzip(envd: Envd) -> None:
    sbx = envd.sandbox()
    entries = [WriteEntry(path=f"multi/file{i}.txt", data=f"content {i}") for i in range(3)]
    infos = sbx.files.write_files(entries)
    assert [i.path for i in infos] == [f"/home/user/multi/file{i}.txt" for i in range(3)]
    assert [sbx.files.read(e["path"]) for e in entries] == ["content 0", "content 1", "content 2"]

    tagged = sbx.files.write("tagged.txt", "x", metadata={"author": "clawpot"})
    assert tagged.metadata == {"author": "clawpot"}
    assert sbx.files.get_info("tagged.txt").metadata == {"author": "clawpot"}  # an xattr on the VM's disk

    assert sbx.files.write("gz.txt", "zipped text", gzip=True).path == "/home/user/gz.txt"
    assert sbx.files.read("gz.txt", gzip=True) == "zipped text"
    assert sbx.files.read("gz.txt") == "zipped text"


def test_list_info_make_dir_rename_remove(envd: Envd) -> None:
    sbx = envd.sandbox()
    parent = f"test_directory_{uuid.uuid4().hex[:8]}"
    assert sbx.files.make_dir(f"{parent}/subdir1/subdir1_1") is True
    assert sbx.files.make_dir(f"{parent}/subdir1/subdir1_1") is False
    sbx.files.make_dir(f"{parent}/subdir2")
    sbx.files.write(f"{parent}/file1.txt", "Hello, world!")

    assert [(e.name, e.type, e.path) for e in sbx.files.list(parent)] == [
        ("file1.txt", FileType.FILE, f"/home/user/{parent}/file1.txt"),
        ("subdir1", FileType.DIR, f"/home/user/{parent}/subdir1"),
        ("subdir2", FileType.DIR, f"/home/user/{parent}/subdir2"),
    ]
    assert [e.name for e in sbx.files.list(parent, depth=2)] == [
        "file1.txt",
        "subdir1",
        "subdir1_1",
        "subdir2",
    ]

    info = sbx.files.get_info(f"{parent}/file1.txt")
    assert (info.size, info.mode, info.permissions, info.owner, info.group) == (
        13,
        0o644,
        "-rw-r--r--",
        "user",
        "user",
    )
    assert info.modified_time.tzinfo is not None
    d = sbx.files.get_info(f"{parent}/subdir1")
    assert (d.type, d.mode, d.permissions, d.owner) == (FileType.DIR, 0o755, "drwxr-xr-x", "user")

    sbx.commands.run(f"ln -s file1.txt {parent}/link")
    link = sbx.files.get_info(f"{parent}/link")
    assert link.type == FileType.FILE and link.symlink_target == f"/home/user/{parent}/file1.txt"

    moved = sbx.files.rename(f"{parent}/file1.txt", f"{parent}/subdir2/moved.txt")
    assert moved.path == f"/home/user/{parent}/subdir2/moved.txt"
    with pytest.raises(FileNotFoundException):
        sbx.files.rename(f"{parent}/file1.txt", f"{parent}/x")
    sbx.files.remove(parent)
    assert not sbx.files.exists(parent)


def test_watch_dir(envd: Envd) -> None:
    sbx = envd.sandbox()
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched")
    sbx.files.write("watched/new.txt", "first")
    events = handle.get_new_events()
    assert len(events) == 3  # as E2B's own test_watch_iterated: create, chmod (owner), write
    assert (events[0].type, events[0].name) == (FilesystemEventType.CREATE, "new.txt")
    sbx.files.write("watched/new.txt", "second")
    assert (FilesystemEventType.WRITE, "new.txt") in [(e.type, e.name) for e in handle.get_new_events()]
    sbx.files.remove("watched/new.txt")
    assert [(e.type, e.name) for e in handle.get_new_events()] == [(FilesystemEventType.REMOVE, "new.txt")]
    handle.stop()

    sbx.files.make_dir("rec/nested")
    rec = sbx.files.watch_dir("rec", recursive=True)
    sbx.files.make_dir("rec/later")
    sbx.files.write("rec/later/deep.txt", "x")
    seen = [(e.type, e.name) for e in rec.get_new_events()]
    assert (FilesystemEventType.CREATE, "later") in seen
    assert (FilesystemEventType.WRITE, "later/deep.txt") in seen
    rec.stop()

    with pytest.raises(FileNotFoundException):
        sbx.files.watch_dir("no-such-dir")
    with pytest.raises(SandboxException):
        sbx.files.watch_dir("gz.txt" if sbx.files.exists("gz.txt") else "/etc/hostname")


def test_async_files_and_watch(envd: Envd) -> None:
    async def main() -> None:
        sbx = await envd.async_sandbox()
        await sbx.files.write("async/data.txt", "async content")
        assert await sbx.files.read("async/data.txt") == "async content"
        assert [e.name for e in await sbx.files.list("async")] == ["data.txt"]
        assert await sbx.files.make_dir("async") is False
        with pytest.raises(FileNotFoundException):
            await sbx.files.read("async/missing.txt")

        events: list[FilesystemEvent] = []
        written = asyncio.Event()

        def on_event(event: FilesystemEvent) -> None:
            events.append(event)
            if event.type == FilesystemEventType.WRITE:
                written.set()

        handle = await sbx.files.watch_dir("async", on_event, timeout=30)
        await sbx.files.write("async/watched.txt", "x")
        await asyncio.wait_for(written.wait(), 30)
        await handle.stop()
        assert (FilesystemEventType.CREATE, "watched.txt") in [(e.type, e.name) for e in events]
        await sbx.files.remove("async")
        assert not await sbx.files.exists("async")

    asyncio.run(main())
