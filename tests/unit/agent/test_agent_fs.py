"""The agent's filesystem operations (stat, list, mkdir, move, remove, watch, in-place put for a user)
against a real agent process on this host, in a temporary directory.

Ownership is checked with the host's ``nobody`` account (the tests run as root, as the agent does).
"""

from __future__ import annotations

import asyncio
import pwd
import stat
from pathlib import Path

import pytest

from clawpot.agent.protocol import FrameType
from clawpot.agent.watch import MAX_PENDING
from clawpot.agent_client import AgentClient, RemoteError
from clawpot.agent_client.fs import Watch, WatchEvent

NOBODY = pwd.getpwnam("nobody")


def names(events: list[WatchEvent]) -> list[tuple[str, str]]:
    return [(e.type, e.name) for e in events]


async def test_stat_file_dir_and_links(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"hello")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to("f.txt")
    (tmp_path / "dangling").symlink_to("nowhere")

    f = await client.stat(str(tmp_path / "f.txt"))
    assert (f.name, f.path, f.size) == ("f.txt", str(tmp_path / "f.txt"), 5)
    assert stat.S_ISREG(f.mode) and f.owner == "root" and f.group == "root" and f.target is None
    assert f.mtime_ns == (tmp_path / "f.txt").stat().st_mtime_ns

    d = await client.stat(str(tmp_path / "d") + "/")
    assert d.name == "d" and stat.S_ISDIR(d.mode)

    link = await client.stat(str(tmp_path / "link"))
    assert link.is_symlink and link.target == str(tmp_path / "f.txt")
    assert link.effective_mode is not None and stat.S_ISREG(link.effective_mode)

    dangling = await client.stat(str(tmp_path / "dangling"))
    assert dangling.is_symlink and dangling.target == str(tmp_path / "dangling")
    assert dangling.effective_mode is None

    with pytest.raises(RemoteError) as missing:
        await client.stat(str(tmp_path / "absent"))
    assert (missing.value.code, missing.value.errno) == ("io_error", "ENOENT")


async def test_relative_paths_need_a_user(client: AgentClient) -> None:
    with pytest.raises(RemoteError) as caught:
        await client.stat("relative/path")
    assert caught.value.code == "bad_request"
    with pytest.raises(RemoteError) as unknown:
        await client.stat("/", user="no-such-user-xyz")
    assert unknown.value.code == "unknown_user"


async def test_list_depth_order_and_paths(client: AgentClient, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for sub in ("subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2/subdir2_1", "subdir2/subdir2_2"):
        (root / sub).mkdir(parents=True)
    (root / "file1.txt").write_text("Hello, world!")
    (root / "subdir1" / "subdir1_1" / "deep.txt").write_text("x")

    one = await client.list_dir(str(root))
    assert [e.name for e in one.entries] == ["file1.txt", "subdir1", "subdir2"]
    assert [e.path for e in one.entries] == [str(root / n) for n in ("file1.txt", "subdir1", "subdir2")]
    assert not one.truncated

    two = await client.list_dir(str(root), depth=2)
    assert [e.path.removeprefix(str(root) + "/") for e in two.entries] == [
        "file1.txt",
        "subdir1",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2",
        "subdir2/subdir2_1",
        "subdir2/subdir2_2",
    ]
    three = await client.list_dir(str(root), depth=3)
    assert len(three.entries) == 8  # deep.txt too

    # Through a symlink to the directory: entries keep the path as asked.
    (tmp_path / "alias").symlink_to(root)
    via = await client.list_dir(str(tmp_path / "alias"))
    assert via.entries[0].path == str(tmp_path / "alias" / "file1.txt")

    limited = await client.list_dir(str(root), depth=3, limit=4)
    assert len(limited.entries) == 4 and limited.truncated

    with pytest.raises(RemoteError) as missing:
        await client.list_dir(str(tmp_path / "absent"))
    assert missing.value.errno == "ENOENT"
    with pytest.raises(RemoteError) as not_dir:
        await client.list_dir(str(root / "file1.txt"))
    assert not_dir.value.errno == "ENOTDIR"


async def test_list_many_entries_streams_past_one_frame(client: AgentClient, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3000):  # ~300 KB of JSON lines: several DATA frames and window top-ups
        (big / f"file-{i:05d}-{'x' * 40}").touch()
    listing = await client.list_dir(str(big))
    assert len(listing.entries) == 3000 and not listing.truncated
    assert listing.entries[0].name.startswith("file-00000")
    assert listing.entries[-1].name.startswith("file-02999")


async def test_mkdir_owned_by_the_user(client: AgentClient, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    made = await client.make_dir(str(target), user="nobody")
    assert made.path == str(target) and made.owner == "nobody"
    for d in (tmp_path / "a", tmp_path / "a" / "b", target):
        st = d.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o755)
    assert (await asyncio.to_thread(tmp_path.stat)).st_uid == 0  # an existing parent keeps its owner

    with pytest.raises(RemoteError) as exists:
        await client.make_dir(str(target))
    assert exists.value.errno == "EEXIST"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RemoteError) as not_dir:
        await client.make_dir(str(tmp_path / "file"))
    assert not_dir.value.code == "bad_request"


async def test_move_and_remove(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("data")
    moved = await client.move(str(tmp_path / "src.txt"), str(tmp_path / "new" / "dst.txt"))
    assert moved.name == "dst.txt" and moved.size == 4
    assert (tmp_path / "new" / "dst.txt").read_text() == "data" and not (tmp_path / "src.txt").exists()
    with pytest.raises(RemoteError) as missing:
        await client.move(str(tmp_path / "src.txt"), str(tmp_path / "x"))
    assert missing.value.errno == "ENOENT"

    (tmp_path / "new" / "sub").mkdir()
    (tmp_path / "new" / "sub" / "f").write_text("x")
    (tmp_path / "outside").write_text("keep")
    (tmp_path / "new" / "link").symlink_to(tmp_path / "outside")
    assert await client.remove(str(tmp_path / "new")) is True
    assert not (tmp_path / "new").exists() and (tmp_path / "outside").read_text() == "keep"
    assert await client.remove(str(tmp_path / "new")) is False


async def test_inplace_put_for_a_user(client: AgentClient, tmp_path: Path) -> None:
    target = tmp_path / "made" / "by" / "put.txt"
    written = await client.write_file(b"content", str(target), user="nobody", inplace=True)
    assert (written.path, written.size) == (str(target), 7)
    st = target.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o644)
    assert (tmp_path / "made").stat().st_uid == NOBODY.pw_uid
    inode = st.st_ino
    await client.write_file(b"new", str(target), user="nobody", inplace=True)
    assert target.read_bytes() == b"new" and target.stat().st_ino == inode  # same file, truncated


async def test_watch_reports_an_inplace_write(client: AgentClient, tmp_path: Path) -> None:
    watched = tmp_path / "w"
    watched.mkdir()
    watch = await client.watch(str(watched))
    try:
        await client.write_file(b"one", str(watched / "f.txt"), user="nobody", inplace=True)
        # envd's sequence for a new file: created, chowned (chmod), written.
        assert names(await watch.sync()) == [("create", "f.txt"), ("chmod", "f.txt"), ("write", "f.txt")]
        await client.write_file(b"two", str(watched / "f.txt"), user="nobody", inplace=True)
        assert ("write", "f.txt") in names(await watch.sync())
        await client.move(str(watched / "f.txt"), str(watched / "g.txt"))
        await client.remove(str(watched / "g.txt"))
        assert names(await watch.sync()) == [("rename", "f.txt"), ("create", "g.txt"), ("remove", "g.txt")]
        assert await watch.sync() == []
    finally:
        watch.close()


async def test_watch_recursive_and_entries(client: AgentClient, tmp_path: Path) -> None:
    watched = tmp_path / "r"
    (watched / "nested").mkdir(parents=True)
    watch = await client.watch(str(watched), recursive=True, include_entry=True)
    try:
        assert watch.watches == 2
        await client.write_file(b"x", str(watched / "nested" / "f"), inplace=True)
        events = await watch.sync()
        assert events[0].type == "create" and events[0].name == "nested/f"
        assert events[0].entry is not None and events[0].entry.path == str(watched / "nested" / "f")
        # A directory made after the watch started is watched too.
        await client.make_dir(str(watched / "later"))
        await watch.sync()
        await client.write_file(b"y", str(watched / "later" / "g"), inplace=True)
        assert ("write", "later/g") in names(await watch.sync())
        await client.remove(str(watched / "later"))
        assert ("remove", "later") in names(await watch.sync())
    finally:
        watch.close()


async def test_non_recursive_watch_ignores_subdirectories(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    watch = await client.watch(str(tmp_path))
    try:
        await client.write_file(b"x", str(tmp_path / "sub" / "f"), inplace=True)
        (tmp_path / "top").write_text("y")
        assert names(await watch.sync()) == [("create", "top"), ("write", "top")]
    finally:
        watch.close()


async def test_watch_errors_and_streaming(client: AgentClient, tmp_path: Path) -> None:
    with pytest.raises(RemoteError) as missing:
        await client.watch(str(tmp_path / "absent"))
    assert missing.value.errno == "ENOENT"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RemoteError) as not_dir:
        await client.watch(str(tmp_path / "file"))
    assert not_dir.value.errno == "ENOTDIR"

    watch = await client.watch(str(tmp_path))
    try:
        (tmp_path / "streamed").mkdir()
        event = await asyncio.wait_for(anext(watch), 10)
        assert (event.type, event.name) == ("create", "streamed")
    finally:
        watch.close()
    # The session is gone in the agent: its inotify descriptor was closed.
    await asyncio.sleep(0.1)
    assert await client.ping() > 0


async def test_get_resolves_for_a_user(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(RemoteError) as is_dir:
        await client.open_file(str(tmp_path))
    assert is_dir.value.errno == "EISDIR"
    with pytest.raises(RemoteError) as missing:
        await client.open_file(str(tmp_path / "absent"), user="nobody")
    assert missing.value.errno == "ENOENT"


async def test_put_metadata_is_the_files_whole_set(client: AgentClient, tmp_path: Path) -> None:
    target = str(tmp_path / "meta.txt")
    first = await client.write_file(b"a", target, inplace=True, metadata={"a": "1", "b": "2"})
    assert first.metadata == {"a": "1", "b": "2"}
    second = await client.write_file(b"b", target, inplace=True, metadata={"b": "3"})
    assert second.metadata == {"b": "3"} and (await client.stat(target)).metadata == {"b": "3"}
    assert (await client.write_file(b"c", target, inplace=True, metadata={})).metadata is None
    await client.write_file(b"d", target, metadata=None)  # not an E2B upload: metadata untouched
    for bad in ({"k": "\u00e9"}, {"": "v"}, {"k" * 300: "v"}, {"k": "v" * 5000}):
        with pytest.raises(RemoteError) as refused:
            await client.write_file(b"x", target, inplace=True, metadata=bad)
        assert refused.value.code == "bad_request"


async def test_watch_queue_is_bounded_and_reports_drops(client: AgentClient, tmp_path: Path) -> None:
    """A host that grants almost no credit: the agent keeps at most MAX_PENDING events, counts the rest,
    and says how many it dropped once the host reads again."""
    conn = client._conn
    stream = conn.open_stream({"op": "watch", "path": str(tmp_path)}, window=4096)
    try:
        await stream.recv_until(FrameType.INFO)

        def churn() -> None:
            for i in range(MAX_PENDING + 500):  # one event each (created)
                (tmp_path / f"f{i}").touch()

        await asyncio.to_thread(churn)
        sync = Watch(stream, 1)
        events = []
        dropped = 0
        async with asyncio.timeout(60):
            while True:
                batch = await sync.sync(timeout=5.0)
                events += batch
                dropped = sync.dropped
                if not batch and dropped:
                    break
        assert len(events) <= MAX_PENDING + 4096 // 30  # the queue, plus what the 4 KiB window held
        assert dropped > 0 and len(events) + dropped == MAX_PENDING + 500
    finally:
        stream.close()
