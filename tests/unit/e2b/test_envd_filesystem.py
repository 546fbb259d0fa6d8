"""The envd ``filesystem.Filesystem`` service and HTTP ``/files`` driven by the real ``e2b`` SDK (sync
and async) over real HTTP to a real agent process on this host, in a temporary directory.

The node is stood in for as in test_envd_process (whose ``envd`` fixture this module reuses: a host
agent, the envd app on a loopback socket, default user root); tests/integration/test_e2b_files.py runs
the same SDK calls against a real server and real VMs (the guest's ``user``, relative paths).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b import FilesystemEventType, FileType
from e2b.envd.filesystem import filesystem_pb
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    RateLimitException,
    SandboxException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry
from test_envd_process import TOKEN, Envd

from clawpot import limits
from clawpot.e2b.envd.files import choose_encoding


def test_write_read_text_bytes_and_stream(envd: Envd, tmp_path: Path) -> None:
    sbx = envd.sandbox()
    target = str(tmp_path / "dir" / "hello.txt")
    info = sbx.files.write(target, "héllo")
    assert (info.path, info.name, info.type) == (target, "hello.txt", FileType.FILE)
    assert sbx.files.read(target) == "héllo"

    blob = os.urandom(1 << 20)
    sbx.files.write(str(tmp_path / "blob"), blob)
    assert bytes(sbx.files.read(str(tmp_path / "blob"), format="bytes")) == blob
    assert (tmp_path / "blob").read_bytes() == blob
    with sbx.files.read(str(tmp_path / "blob"), format="stream") as stream:
        assert b"".join(stream) == blob
    assert bytes(sbx.files.read(str(tmp_path / "blob"), format="bytes", gzip=True)) == blob


def test_write_files_multipart_octet_stream_and_gzip(envd: Envd, tmp_path: Path) -> None:
    sbx = envd.sandbox()
    entries = [WriteEntry(path=str(tmp_path / f"m{i}.txt"), data=f"file {i}") for i in range(3)]
    infos = sbx.files.write_files(entries)  # multipart, one part per file, named by its path
    assert [i.path for i in infos] == [e["path"] for e in entries]
    assert [(tmp_path / f"m{i}.txt").read_text() for i in range(3)] == ["file 0", "file 1", "file 2"]

    gz = sbx.files.write_files(
        [WriteEntry(path=str(tmp_path / f"g{i}.txt"), data=f"zipped {i}") for i in range(2)], gzip=True
    )
    assert [i.name for i in gz] == ["g0.txt", "g1.txt"]
    assert (tmp_path / "g1.txt").read_text() == "zipped 1"

    sbx.files.write(str(tmp_path / "octet.bin"), b"\x00\x01", use_octet_stream=True)
    assert (tmp_path / "octet.bin").read_bytes() == b"\x00\x01"

    with open(tmp_path / "octet.bin", "rb") as f:  # a file object is streamed (octet-stream)
        sbx.files.write(str(tmp_path / "copy.bin"), f)
    assert (tmp_path / "copy.bin").read_bytes() == b"\x00\x01"


def test_missing_files_and_wrong_kinds(envd: Envd, tmp_path: Path) -> None:
    sbx = envd.sandbox()
    with pytest.raises(FileNotFoundException):
        sbx.files.read(str(tmp_path / "absent.txt"))
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info(str(tmp_path / "absent.txt"))
    with pytest.raises(FileNotFoundException):
        sbx.files.list(str(tmp_path / "absent"))
    with pytest.raises(InvalidArgumentException):
        sbx.files.read(str(tmp_path))  # a directory: 400
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SandboxException):
        sbx.files.write(str(tmp_path / "plain" / "below.txt"), "x")  # a parent is a file
    with pytest.raises(AuthenticationException):  # envd: 401 for a user the guest does not have
        sbx.files.read(str(tmp_path / "plain"), user="no-such-user-xyz")


def test_list_exists_info_make_dir_rename_remove(envd: Envd, tmp_path: Path) -> None:
    sbx = envd.sandbox()
    root = tmp_path / "tree"
    assert sbx.files.make_dir(str(root / "sub1" / "sub1_1")) is True
    assert sbx.files.make_dir(str(root / "sub1" / "sub1_1")) is False
    sbx.files.make_dir(str(root / "sub2"))
    sbx.files.write(str(root / "file1.txt"), "Hello, world!")

    one = sbx.files.list(str(root))
    assert [(e.name, e.type) for e in one] == [
        ("file1.txt", FileType.FILE),
        ("sub1", FileType.DIR),
        ("sub2", FileType.DIR),
    ]
    assert [e.name for e in sbx.files.list(str(root), depth=2)] == ["file1.txt", "sub1", "sub1_1", "sub2"]
    with pytest.raises(InvalidArgumentException):
        sbx.files.list(str(root), depth=0)

    info = sbx.files.get_info(str(root / "file1.txt"))
    assert (info.size, info.mode, info.permissions, info.owner, info.group) == (
        13,
        0o644,
        "-rw-r--r--",
        "root",
        "root",
    )
    assert info.modified_time.tzinfo is not None and info.symlink_target is None
    d = sbx.files.get_info(str(root / "sub1"))
    assert (d.type, d.mode, d.permissions) == (FileType.DIR, 0o755, "drwxr-xr-x")

    (root / "link").symlink_to("file1.txt")
    link = sbx.files.get_info(str(root / "link"))
    assert link.type == FileType.FILE and link.symlink_target == str(root / "file1.txt")

    assert sbx.files.exists(str(root / "file1.txt")) and not sbx.files.exists(str(root / "nope"))
    moved = sbx.files.rename(str(root / "file1.txt"), str(root / "sub2" / "renamed.txt"))
    assert moved.path == str(root / "sub2" / "renamed.txt") and moved.name == "renamed.txt"
    with pytest.raises(FileNotFoundException):
        sbx.files.rename(str(root / "file1.txt"), str(root / "x"))
    sbx.files.remove(str(root / "sub2"))
    assert not sbx.files.exists(str(root / "sub2"))
    sbx.files.remove(str(root / "sub2"))  # removing what is not there is no error, as in envd


def test_watch_dir_sync_handle(envd: Envd, tmp_path: Path) -> None:
    sbx = envd.sandbox()
    watched = tmp_path / "watched"
    sbx.files.make_dir(str(watched))
    handle = sbx.files.watch_dir(str(watched))
    sbx.files.write(str(watched / "f.txt"), "content")
    events = handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "f.txt"),
        (FilesystemEventType.CHMOD, "f.txt"),
        (FilesystemEventType.WRITE, "f.txt"),
    ]
    sbx.files.write(str(watched / "f.txt"), "changed")
    assert (FilesystemEventType.WRITE, "f.txt") in [(e.type, e.name) for e in handle.get_new_events()]
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()

    nested = tmp_path / "rec" / "nested"
    sbx.files.make_dir(str(nested))
    rec = sbx.files.watch_dir(str(tmp_path / "rec"), recursive=True, include_entry=True)
    sbx.files.write(str(nested / "deep.txt"), "x")
    events = rec.get_new_events()
    assert (events[0].type, events[0].name) == (FilesystemEventType.CREATE, "nested/deep.txt")
    assert events[0].entry is not None and events[0].entry.path == str(nested / "deep.txt")
    rec.stop()

    with pytest.raises(FileNotFoundException):
        sbx.files.watch_dir(str(tmp_path / "absent"))
    with pytest.raises(SandboxException):
        sbx.files.watch_dir(str(watched / "f.txt"))


def test_watchers_belong_to_their_sandbox(envd: Envd, tmp_path: Path) -> None:
    handle = envd.sandbox().files.watch_dir(str(tmp_path))
    other = envd.sandbox("sbx-secure", token=TOKEN)
    request = filesystem_pb.GetWatcherEventsRequest(watcher_id=handle._watcher_id)
    with pytest.raises(ConnectError) as refused:
        # Another sandbox's watcher id: refused as if it did not exist.
        other.files._rpc.get_watcher_events(request, headers={"X-Access-Token": TOKEN})
    assert refused.value.code == Code.NOT_FOUND
    handle.stop()


def test_async_sdk_files_and_watch(envd: Envd, tmp_path: Path) -> None:
    async def main() -> None:
        sbx = envd.async_sandbox()
        target = str(tmp_path / "async.txt")
        await sbx.files.write(target, "async data")
        assert await sbx.files.read(target) == "async data"
        assert await sbx.files.exists(target)
        assert [e.name for e in await sbx.files.list(str(tmp_path))] == ["async.txt"]
        with pytest.raises(FileNotFoundException):
            await sbx.files.read(str(tmp_path / "absent"))

        seen: list[tuple[FilesystemEventType, str]] = []
        got = asyncio.Event()

        def on_event(event: object) -> None:
            seen.append((event.type, event.name))  # type: ignore[attr-defined]
            if event.type == FilesystemEventType.WRITE:  # type: ignore[attr-defined]
                got.set()

        # A short watch timeout: the server ends the stream then, even if the client left silently.
        handle = await sbx.files.watch_dir(str(tmp_path), on_event, timeout=4)
        await sbx.files.write(str(tmp_path / "watched.txt"), "x")
        await asyncio.wait_for(got.wait(), 10)
        await handle.stop()
        assert (FilesystemEventType.CREATE, "watched.txt") in seen

    asyncio.run(main())


def test_empty_files_and_async_streams(envd: Envd, tmp_path: Path) -> None:
    sbx = envd.sandbox()
    sbx.files.write(str(tmp_path / "empty-multipart"), b"")
    sbx.files.write(str(tmp_path / "empty-octet"), b"", use_octet_stream=True)
    assert (tmp_path / "empty-multipart").read_bytes() == b""
    assert (tmp_path / "empty-octet").read_bytes() == b""
    assert sbx.files.read(str(tmp_path / "empty-multipart")) == ""

    async def main() -> None:
        asbx = envd.async_sandbox()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(4):
                yield bytes([i]) * 100_000

        await asbx.files.write(str(tmp_path / "streamed.bin"), chunks())
        stream = await asbx.files.read(str(tmp_path / "streamed.bin"), format="stream")
        got = b"".join([chunk async for chunk in stream])
        assert got == b"".join(bytes([i]) * 100_000 for i in range(4))
        with pytest.raises(FileNotFoundException):
            await asbx.files.watch_dir(str(tmp_path / "absent"), lambda event: None)

    asyncio.run(main())


def test_watchers_are_bounded_and_abandoned_streams_freed(envd: Envd, tmp_path: Path) -> None:
    async def open_and_leave() -> None:
        asbx = envd.async_sandbox()
        for _ in range(3):
            handle = await asbx.files.watch_dir(str(tmp_path), lambda event: None, timeout=60)
            await handle.stop()

    asyncio.run(open_and_leave())
    time.sleep(2 * limits.E2B_WATCH_STREAM_LIVENESS + 0.5)  # the server notices at its next keepalive
    sbx = envd.sandbox()
    handles = [sbx.files.watch_dir(str(tmp_path)) for _ in range(limits.E2B_WATCHERS_PER_SANDBOX)]
    with pytest.raises(RateLimitException):  # RESOURCE_EXHAUSTED, as the SDK words it
        sbx.files.watch_dir(str(tmp_path))
    for handle in handles:
        handle.stop()
    sbx.files.watch_dir(str(tmp_path)).stop()


def test_metadata_as_envd_keeps_it(envd: Envd, tmp_path: Path) -> None:
    """E2B's own SDK tests (test_metadata.py): set on upload (multipart and octet-stream, every file of a
    write_files), surfaced by get_info, list and rename, replaced (and cleared) by the next upload."""
    sbx = envd.sandbox()
    meta = {"author": "mish", "purpose": "upload"}
    assert sbx.files.write(str(tmp_path / "m.txt"), "x", metadata=meta).metadata == meta
    assert sbx.files.get_info(str(tmp_path / "m.txt")).metadata == meta
    octet = sbx.files.write(str(tmp_path / "o.txt"), "x", metadata=meta, use_octet_stream=True)
    assert octet.metadata == meta
    assert os.getxattr(tmp_path / "o.txt", "user.e2b.author") == b"mish"

    infos = sbx.files.write_files(
        [WriteEntry(path=str(tmp_path / f"w{i}.txt"), data="d") for i in range(2)], metadata={"source": "t"}
    )
    assert [i.metadata for i in infos] == [{"source": "t"}] * 2
    assert {e.name: e.metadata for e in sbx.files.list(str(tmp_path))}["w1.txt"] == {"source": "t"}
    assert sbx.files.rename(str(tmp_path / "w1.txt"), str(tmp_path / "r.txt")).metadata == {"source": "t"}

    cleared = sbx.files.write(str(tmp_path / "m.txt"), "second")
    assert cleared.metadata is None and sbx.files.get_info(str(tmp_path / "m.txt")).metadata is None
    assert sbx.files.write(str(tmp_path / "plain.txt"), "p").metadata is None
    with pytest.raises(InvalidArgumentException):
        sbx.files.write(str(tmp_path / "bad.txt"), "x", metadata={"k": "caf\u00e9"})


def test_signed_urls_on_a_secure_sandbox(envd: Envd, tmp_path: Path) -> None:
    secure = envd.sandbox("sbx-secure", token=TOKEN)
    secure.files.write(str(tmp_path / "signed.txt"), "signed")
    url = secure.download_url(str(tmp_path / "signed.txt"), use_signature_expiration=60)
    headers = {"E2b-Sandbox-Id": "sbx-secure"}
    # The SDK's URL points at the sandbox's own host; this server takes the same path and query.
    path_and_query = url[url.index("/files") :]
    ok = httpx.get(envd.url + path_and_query, headers=headers)
    assert (ok.status_code, ok.text) == (200, "signed")
    bad = httpx.get(envd.url + path_and_query.replace("signature=", "signature=x"), headers=headers)
    assert bad.status_code == 401
    none = httpx.get(envd.url + "/files", params={"path": str(tmp_path / "signed.txt")}, headers=headers)
    assert none.status_code == 401


def test_gzip_download_negotiation_and_raw_errors(envd: Envd, tmp_path: Path) -> None:
    (tmp_path / "g.txt").write_text("gz" * 1000)
    headers = {"E2b-Sandbox-Id": "sbx-1", "Accept-Encoding": "gzip"}
    r = httpx.get(envd.url + "/files", params={"path": str(tmp_path / "g.txt")}, headers=headers)
    assert r.headers["content-encoding"] == "gzip" and r.text == "gz" * 1000
    missing = httpx.get(envd.url + "/files", params={"path": str(tmp_path / "nope")}, headers=headers)
    assert missing.status_code == 404
    assert missing.json() == {"code": 404, "message": f"path '{tmp_path / 'nope'}' does not exist"}
    up = httpx.post(
        envd.url + "/files",
        params={"path": str(tmp_path / "raw.txt")},
        headers={
            "E2b-Sandbox-Id": "sbx-1",
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "gzip",
        },
        content=gzip.compress(b"raw body"),
    )
    assert up.status_code == 200 and up.json() == [
        {"path": str(tmp_path / "raw.txt"), "name": "raw.txt", "type": "file"}
    ]
    assert (tmp_path / "raw.txt").read_bytes() == b"raw body"
    no_path = httpx.post(
        envd.url + "/files",
        headers={"E2b-Sandbox-Id": "sbx-1", "Content-Type": "application/octet-stream"},
        content=b"x",
    )
    assert no_path.status_code == 400
    bad_gzip = httpx.post(
        envd.url + "/files",
        params={"path": str(tmp_path / "bad.txt")},
        headers={
            "E2b-Sandbox-Id": "sbx-1",
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "gzip",
        },
        content=b"not gzip at all",
    )
    assert bad_gzip.status_code == 400
    cut = httpx.post(
        envd.url + "/files",
        headers={"E2b-Sandbox-Id": "sbx-1", "Content-Type": "multipart/form-data; boundary=B"},
        content=(
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="'
            + str(tmp_path / "cut.txt").encode()
            + b'"\r\n\r\npartial data, no closing boundary'
        ),
    )
    assert cut.status_code == 400 and "ends inside the part" in cut.json()["message"]
    sized = httpx.get(
        envd.url + "/files",
        params={"path": str(tmp_path / "raw.txt")},
        headers={"E2b-Sandbox-Id": "sbx-1", "Accept-Encoding": "identity"},
    )
    assert sized.headers["content-length"] == "8" and sized.content == b"raw body"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "identity"),
        ("gzip, deflate", "gzip"),
        ("deflate", "identity"),
        ("identity;q=0, gzip;q=0", None),
        ("*;q=0", None),
        ("*;q=0, gzip", "gzip"),
        ("gzip;q=0.5, identity", "identity"),
        ("br, *", "identity"),
    ],
)
def test_accept_encoding_as_envd(accept: str | None, chosen: str | None) -> None:
    assert choose_encoding(accept) == chosen
