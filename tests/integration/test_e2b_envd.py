"""The real ``e2b`` SDK (sync and async) against envd served by a real server for a real QEMU/TCG VM.

One server runs in a network namespace this module creates (e2b_harness: ``--e2b-listen`` on a unix
socket, reached over a loopback TCP relay); one VM is shared by every
test, made by ``Sandbox.create`` (the last one kills it); each test connects to it with
``Sandbox.connect``, as separate programs would.

Checked, as the SDK's documented behaviour says: foreground and background commands, exit codes and
``CommandExitException``, on_stdout/on_stderr, stdin (send_stdin, close_stdin), envs, cwd, the default
user (``user``, home /home/user) and ``user="root"``, ``timeout`` → ``TimeoutException`` with the process
killed, broken UTF-8 replaced, ``commands.list``/``kill``/``connect``, PTY create/input/resize/kill, and a
killed sandbox → ``SandboxNotRunningException`` (no hang).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2b import AsyncSandbox, CommandExitException, Sandbox, TimeoutException
from e2b.exceptions import SandboxNotRunningException
from e2b.sandbox.commands.command_handle import PtySize
from e2b_harness import E2bEndpoint, e2b_server
from server_harness import InstalledAssets, ServerProcess
from support.tree_assets import TreeAssets, tree_assets

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Envd:
    server: ServerProcess
    endpoint: E2bEndpoint
    sandbox_id: str

    def sandbox(self) -> Sandbox:
        return Sandbox.connect(self.sandbox_id, **self.endpoint.opts())

    async def async_sandbox(self) -> AsyncSandbox:
        return await AsyncSandbox.connect(self.sandbox_id, **self.endpoint.opts())


@pytest.fixture(scope="module")
def assets(installed_assets: InstalledAssets, tmp_path_factory: pytest.TempPathFactory) -> TreeAssets:
    """The installed kernel and this tree's root image (its agent has proc_*, it has the `user` account)."""
    return tree_assets(tmp_path_factory.mktemp("envd-assets"), installed_assets.kernel)


@pytest.fixture(scope="module")
def envd(tmp_path_factory: pytest.TempPathFactory, assets: TreeAssets) -> Iterator[Envd]:
    with e2b_server(tmp_path_factory.mktemp("envd"), assets) as (server, endpoint):
        sbx = Sandbox.create(envs={"FROM_CREATE": "yes", "MINE": "create"}, **endpoint.opts())
        yield Envd(server, endpoint, sbx.sandbox_id)


def test_foreground_default_user_env_cwd_and_exit_codes(envd: Envd) -> None:
    sbx = envd.sandbox()
    result = sbx.commands.run("whoami; pwd; echo $HOME $MINE $FROM_CREATE", envs={"MINE": "mine"})
    assert result.stdout == "user\n/home/user\n/home/user mine yes\n"  # the command's envs win
    assert result.exit_code == 0
    assert sbx.commands.run("whoami; pwd", user="root", cwd="/tmp").stdout == "root\n/tmp\n"
    with pytest.raises(CommandExitException) as info:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert (info.value.exit_code, info.value.stdout, info.value.stderr) == (3, "out\n", "err\n")


def test_callbacks_stdin_background_list_and_kill(envd: Envd) -> None:
    sbx = envd.sandbox()
    seen: list[str] = []
    errs: list[str] = []
    sbx.commands.run("echo a; echo b >&2", on_stdout=seen.append, on_stderr=errs.append)
    assert ("".join(seen), "".join(errs)) == ("a\n", "b\n")

    handle = sbx.commands.run("read x; echo got $x", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "hi\n")
    assert handle.wait().stdout == "got hi\n"

    cat = sbx.commands.run("cat", background=True, stdin=True)
    cat.send_stdin("piped")
    sbx.commands.close_stdin(cat.pid)
    assert cat.wait().stdout == "piped"

    sleeper = sbx.commands.run("sleep 120", background=True)
    assert sleeper.pid in {p.pid for p in sbx.commands.list()}
    sleeper.disconnect()
    again = sbx.commands.connect(sleeper.pid)
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as info:
        again.wait()
    assert info.value.exit_code == -1
    assert sbx.commands.kill(sleeper.pid) is False
    assert sleeper.pid not in {p.pid for p in sbx.commands.list()}


def test_timeout_kills_and_broken_utf8(envd: Envd) -> None:
    sbx = envd.sandbox()
    with pytest.raises(TimeoutException):
        sbx.commands.run("echo $$ > /tmp/t.pid; sleep 120", timeout=3)
    pid = sbx.commands.run("cat /tmp/t.pid").stdout.strip()
    deadline = time.monotonic() + 20
    while sbx.commands.run(f"kill -0 {pid} 2>/dev/null && echo alive || echo gone").stdout == "alive\n":
        assert time.monotonic() < deadline, "the timed-out process was not killed"
        time.sleep(0.5)
    result = sbx.commands.run(r"printf 'a\xffb\n'")
    assert result.stdout == "a\ufffdb\n"


def test_pty(envd: Envd) -> None:
    sbx = envd.sandbox()
    chunks: list[bytes] = []
    pty = sbx.pty.create(PtySize(rows=24, cols=80), timeout=60)
    sbx.pty.send_stdin(pty.pid, b"stty size\n")
    resized = False
    for _, _, data in pty:
        chunks.append(data)
        if not resized and b"24 80" in b"".join(chunks):
            resized = True
            sbx.pty.resize(pty.pid, PtySize(rows=40, cols=100))
            sbx.pty.send_stdin(pty.pid, b"stty size; whoami; exit 4\n")
    with pytest.raises(CommandExitException) as info:
        pty.wait()
    assert info.value.exit_code == 4
    text = b"".join(chunks).decode(errors="replace")
    assert "40 100" in text and "user" in text

    other = sbx.pty.create(PtySize(rows=24, cols=80), timeout=60)
    assert sbx.pty.kill(other.pid) is True


async def test_async_sdk(envd: Envd) -> None:
    sbx = await envd.async_sandbox()
    out: list[str] = []
    result = await sbx.commands.run("echo async; whoami", on_stdout=out.append)
    assert result.stdout == "async\nuser\n" and "".join(out) == result.stdout
    handle = await sbx.commands.run("sleep 0.5; exit 6", background=True)
    with pytest.raises(CommandExitException):
        await handle.wait()
    with pytest.raises(TimeoutException):
        await sbx.commands.run("sleep 60", timeout=2)


def test_killed_sandbox_is_an_error_not_a_hang(envd: Envd) -> None:
    sbx = envd.sandbox()
    running = sbx.commands.run("sleep 300", background=True)
    assert sbx.kill() is True
    started = time.monotonic()
    with pytest.raises(SandboxNotRunningException):
        sbx.commands.run("true")
    with pytest.raises(SandboxNotRunningException):  # the stream the kill dropped: an error, not a hang
        running.wait()
    assert time.monotonic() - started < 30
