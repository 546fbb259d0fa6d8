"""The envd ``process.Process`` service driven by the real ``e2b`` SDK (sync and async) over real HTTP
(hypercorn on a loopback socket) to a real agent process running real commands on this host.

What is not real here: the node. A VM's agent link is stood in for by ``_HostNode``, which hands out a
client of an agent started on the host (tests/support/agent_harness.py), because this module tests the
translation between the SDK and the agent, fast; tests/integration/test_e2b_envd.py runs the same SDK
calls against a real server and real VMs.

The SDK runs commands as `bash -l` and this host's root profile runs `pyenv init`, whose lock a login
shell killed in the middle of it leaves behind (every later `bash -l` then waits for it): so no test
here kills a command before it has shown it is past its profile (output, or a timeout of seconds).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, CommandExitException, Sandbox, TimeoutException
from e2b.connection_config import ConnectionConfig
from e2b.exceptions import AuthenticationException, InvalidArgumentException
from packaging.version import Version
from support.agent_harness import AgentProcess, pid_alive, start_agent, stop_agent, wait_until

from clawpot import errors, limits
from clawpot.agent_client import AgentClient, wait_ready
from clawpot.e2b import listener
from clawpot.e2b.envd import create_envd_app
from clawpot.e2b.sandboxes import SandboxAttrs
from clawpot.vm.state import VmState

SANDBOX = "sbx-1"
TOKEN = "secret-token"


@dataclass
class _Link:
    agent: AgentClient

    def budget(self, deadline: float | None) -> float:
        return 10.0

    async def connected(self, budget: float, deadline: float | None = None) -> AgentClient:
        return self.agent

    def lost(self, agent: AgentClient, exc: BaseException) -> None:
        pass


@dataclass
class _Vm:
    agent: _Link


@dataclass
class _HostNode:
    link: _Link
    vms: set[str] = field(default_factory=lambda: {SANDBOX})

    def running(self, vm_id: str) -> _Vm:
        if vm_id not in self.vms:
            raise errors.NotFound(f"VM {vm_id} not found")
        return _Vm(self.link)


@dataclass
class _Record:
    state: VmState = VmState.RUNNING


@dataclass
class _View:
    record: _Record = field(default_factory=_Record)


@dataclass
class _Sandbox:
    id: str
    attrs: SandboxAttrs
    view: _View = field(default_factory=_View)


@dataclass
class _Ctx:
    node: _HostNode
    attrs: dict[str, SandboxAttrs]

    def sandbox(self, sandbox_id: str) -> _Sandbox:
        if sandbox_id not in self.node.vms:
            raise errors.NotFound(f"sandbox {sandbox_id} not found")
        return _Sandbox(sandbox_id, self.attrs[sandbox_id])


@dataclass
class Envd:
    url: str
    ctx: _Ctx
    agent: AgentProcess
    loop: asyncio.AbstractEventLoop

    def sandbox(self, sandbox_id: str = SANDBOX, token: str | None = None) -> Sandbox:
        return Sandbox(**_opts(self.url, sandbox_id, token))  # type: ignore[misc]

    def async_sandbox(self, sandbox_id: str = SANDBOX, token: str | None = None) -> AsyncSandbox:
        return AsyncSandbox(**_opts(self.url, sandbox_id, token))  # type: ignore[misc]


def _opts(url: str, sandbox_id: str, token: str | None) -> dict[str, Any]:
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983"}
    if token is not None:
        headers["X-Access-Token"] = token
    config = ConnectionConfig(
        sandbox_url=url, api_key="unused", extra_sandbox_headers=headers, request_timeout=20
    )
    return {
        "sandbox_id": sandbox_id,
        "sandbox_domain": None,
        "envd_version": Version("0.6.4"),
        "envd_access_token": token,
        "traffic_access_token": None,
        "connection_config": config,
    }


@pytest.fixture(scope="module")
def envd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envd]:
    agent = start_agent(tmp_path_factory.mktemp("agent"))
    loop = asyncio.new_event_loop()
    sock = listener.bind(listener.plan("127.0.0.1:0", None))
    url = "http://" + listener.bound_address(sock)
    ready: Future[_Ctx] = Future()
    stop = asyncio.Event()

    async def main() -> None:
        client = await wait_ready(agent.endpoint, 10)
        ctx = _Ctx(_HostNode(_Link(client)), {})
        ctx.node.vms.add("sbx-secure")
        ctx.attrs["sbx-secure"] = SandboxAttrs(envd_access_token=TOKEN, env_vars={"FROM_SANDBOX": "yes"})
        ctx.attrs[SANDBOX] = SandboxAttrs(
            env_vars={"FROM_SANDBOX": "one", "SHADOWED": "sandbox"}, envd_access_token=None
        )
        app = create_envd_app(ctx, default_user="root")  # type: ignore[arg-type]
        server = asyncio.create_task(listener.serve(app, sock, None, stop))
        ready.set_result(ctx)
        await server
        await client.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ctx = ready.result(timeout=30)
    yield Envd(url, ctx, agent, loop)
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    log = agent.log_text()
    stop_agent(agent)
    assert "Traceback" not in log, log


# --- commands ------------------------------------------------------------------------------------------


def _past_profile(handle: Any) -> None:
    """Wait for the first output of a background command (its login shell is past its profile)."""
    for out, _, pty in handle:
        if out or pty:
            return


def test_run_foreground_exit_codes_and_output(envd: Envd) -> None:
    sbx = envd.sandbox()
    result = sbx.commands.run("echo hello; echo oops >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hello\n", "oops\n", 0, None)
    with pytest.raises(CommandExitException) as info:
        sbx.commands.run("echo partial; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "partial\n"
    assert info.value.error == "exit status 3"


def test_callbacks_env_cwd_and_user(envd: Envd) -> None:
    sbx = envd.sandbox()
    out: list[str] = []
    err: list[str] = []
    result = sbx.commands.run(
        "echo $FROM_SANDBOX $SHADOWED $MINE; pwd; whoami; echo e >&2",
        envs={"SHADOWED": "request", "MINE": "mine"},
        cwd="/tmp",
        user="root",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert result.stdout == "one request mine\n/tmp\nroot\n"
    assert "".join(out) == result.stdout and "".join(err) == "e\n"
    with pytest.raises(InvalidArgumentException, match="does not exist"):
        sbx.commands.run("true", cwd="/no/such/dir")
    with pytest.raises(AuthenticationException, match="invalid username"):  # as envd answers
        sbx.commands.run("true", user="no-such-user-xyz")


def test_background_wait_stdin_list_and_kill(envd: Envd) -> None:
    sbx = envd.sandbox()
    handle = sbx.commands.run("read line; echo got $line", background=True, stdin=True)
    assert handle.pid in {p.pid for p in sbx.commands.list()}
    sbx.commands.send_stdin(handle.pid, "abc\n")
    result = handle.wait()
    assert result.stdout == "got abc\n"

    sleeper = sbx.commands.run("echo up; sleep 60", background=True)
    _past_profile(sleeper)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert listed[sleeper.pid].cmd == "/bin/bash"
    assert listed[sleeper.pid].args == ["-l", "-c", "echo up; sleep 60"]
    assert listed[sleeper.pid].cwd is None  # none was asked for, as envd lists it
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as info:
        sleeper.wait()
    assert info.value.exit_code == -1
    assert info.value.error == "signal: killed"
    assert sbx.commands.kill(sleeper.pid) is False
    assert sleeper.pid not in {p.pid for p in sbx.commands.list()}


def test_close_stdin_and_connect_by_pid(envd: Envd) -> None:
    sbx = envd.sandbox()
    handle = sbx.commands.run("cat; echo done", background=True, stdin=True)
    handle.send_stdin("piped ")
    sbx.commands.stream_input(handle.pid, ["streamed ", b"in ", "order "])
    handle.disconnect()
    again = sbx.commands.connect(handle.pid)
    sbx.commands.close_stdin(handle.pid)
    result = again.wait()
    assert result.stdout.endswith("done\n")
    assert result.stdout == "piped streamed in order done\n"


def test_timeout_kills_the_process(envd: Envd) -> None:
    sbx = envd.sandbox()
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("echo $$ > /tmp/envd-timeout.pid; sleep 60", timeout=4)
    listed = {p.pid for p in sbx.commands.list()}  # at once: the kill came just before the deadline
    assert time.monotonic() - started < 10
    pid = int(Path("/tmp/envd-timeout.pid").read_text())
    assert pid not in listed
    assert wait_until(lambda: not pid_alive(pid), 10), "the timed-out process was not killed"


def test_broken_utf8_is_replaced(envd: Envd) -> None:
    sbx = envd.sandbox()
    result = sbx.commands.run(r"printf 'ok \xff\xfe end\n'; printf '\xe2\x82' ")
    assert result.stdout == "ok \ufffd\ufffd end\n\ufffd"


def test_pty_create_input_resize_kill(envd: Envd) -> None:
    from e2b.sandbox.commands.command_handle import PtySize

    sbx = envd.sandbox()
    chunks: list[bytes] = []
    pty = sbx.pty.create(PtySize(rows=24, cols=80), user="root", timeout=30)
    sbx.pty.send_stdin(pty.pid, b"stty size\n")
    resized = False
    for _, _, data in pty:
        chunks.append(data)
        if not resized and b"24 80" in b"".join(chunks):
            resized = True
            sbx.pty.resize(pty.pid, PtySize(rows=40, cols=100))
            sbx.pty.send_stdin(pty.pid, b"stty size; exit 7\n")
    with pytest.raises(CommandExitException) as info:
        pty.wait()
    assert info.value.exit_code == 7
    text = b"".join(chunks).decode(errors="replace")
    assert "24 80" in text and "40 100" in text

    other = sbx.pty.create(PtySize(rows=24, cols=80), user="root", timeout=30)
    _past_profile(other)  # its prompt
    assert sbx.pty.kill(other.pid) is True
    with pytest.raises(CommandExitException):
        other.wait()


async def test_async_sdk(envd: Envd) -> None:
    sbx = envd.async_sandbox()
    result = await sbx.commands.run("echo async")
    assert result.stdout == "async\n"
    out: list[str] = []
    handle = await sbx.commands.run("sleep 0.2; echo later", background=True, on_stdout=out.append)
    result = await handle.wait()
    assert result.stdout == "later\n" and out == ["later\n"]
    with pytest.raises(CommandExitException):
        await sbx.commands.run("exit 2")
    with pytest.raises(TimeoutException):
        await sbx.commands.run("sleep 30", timeout=4)


# --- the sandbox-level endpoints ------------------------------------------------------------------------


def test_health_envs_access_token_and_missing_sandbox(envd: Envd) -> None:
    headers = {"E2b-Sandbox-Id": "sbx-secure"}
    with httpx.Client(base_url=envd.url) as http:
        assert http.get("/health", headers=headers).status_code == 204
        assert http.get("/envs", headers=headers).status_code == 401
        assert http.get("/envs", headers={**headers, "X-Access-Token": "wrong"}).status_code == 401
        got = http.get("/envs", headers={**headers, "X-Access-Token": TOKEN})
        assert got.status_code == 200 and got.json() == {"FROM_SANDBOX": "yes"}
        gone = http.get("/health", headers={"E2b-Sandbox-Id": "sbx-gone"})
        assert gone.status_code == 502 and "was not found" in gone.json()["message"]

    secure = envd.sandbox("sbx-secure", token=TOKEN)
    assert secure.commands.run("echo $FROM_SANDBOX").stdout == "yes\n"
    with pytest.raises(AuthenticationException):
        envd.sandbox("sbx-secure", token="wrong").commands.run("true")


def test_missing_sandbox_is_an_error_not_a_hang(envd: Envd) -> None:
    from e2b.exceptions import SandboxNotRunningException

    started = time.monotonic()
    with pytest.raises(SandboxNotRunningException):
        envd.sandbox("sbx-gone").commands.run("true")
    with pytest.raises(SandboxNotRunningException):
        envd.sandbox("sbx-gone").commands.list()
    assert time.monotonic() - started < 15


def test_user_header_is_parsed() -> None:
    from clawpot.e2b.envd import users

    assert users.username({}) == "user"
    assert users.username({"authorization": "Basic " + base64.b64encode(b"root:").decode()}) == "root"
    with pytest.raises(ValueError):
        users.username({"authorization": "Basic " + base64.b64encode(b"../x:").decode()})
    with pytest.raises(ValueError):
        users.username({"authorization": "Bearer abc"})


def test_output_while_disconnected_reaches_the_next_connect(envd: Envd) -> None:
    sbx = envd.sandbox()
    handle = sbx.commands.run("sleep 1; echo later; echo err >&2", background=True)
    handle.disconnect()
    time.sleep(2)  # "later" is written while nobody listens
    result = sbx.commands.connect(handle.pid).wait()
    assert (result.stdout, result.stderr) == ("later\n", "err\n")


def test_bad_requests_get_connect_errors(envd: Envd) -> None:
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError
    from e2b.envd.process import process_connect, process_pb
    from protobuf import Oneof

    client = process_connect.ProcessClientSync(envd.url)
    headers = {"E2b-Sandbox-Id": SANDBOX}
    with pytest.raises(ConnectError) as info:
        client.send_signal(process_pb.SendSignalRequest(signal=process_pb.Signal.SIGKILL), headers=headers)
    assert info.value.code == Code.INVALID_ARGUMENT
    selector = process_pb.ProcessSelector(selector=Oneof("pid", 2**31 - 2))
    with pytest.raises(ConnectError) as info:
        client.send_signal(
            process_pb.SendSignalRequest(process=selector, signal=process_pb.Signal.UNSPECIFIED),
            headers=headers,
        )
    assert info.value.code == Code.UNIMPLEMENTED
    with pytest.raises(ConnectError) as info:
        client.send_input(
            process_pb.SendInputRequest(
                process=selector, input=process_pb.ProcessInput(input=Oneof("stdin", b"x"))
            ),
            headers=headers,
        )
    assert info.value.code == Code.NOT_FOUND
    bad_user = {**headers, "Authorization": "Basic " + base64.b64encode(b"../etc:").decode()}
    with pytest.raises(ConnectError) as info:
        list(
            client.start(
                process_pb.StartRequest(process=process_pb.ProcessConfig(cmd="true")), headers=bad_user
            )
        )
    assert info.value.code == Code.UNAUTHENTICATED
    sbx = envd.sandbox()
    plain = sbx.commands.run("echo up; sleep 30", background=True)
    _past_profile(plain)
    with pytest.raises(ConnectError) as info:
        client.update(
            process_pb.UpdateRequest(
                process=process_pb.ProcessSelector(selector=Oneof("pid", plain.pid)),
                pty=process_pb.PTY(size=process_pb.PTY.Size(rows=10, cols=10)),
            ),
            headers=headers,
        )
    assert info.value.code == Code.INVALID_ARGUMENT
    assert plain.kill()


def test_large_output_streams_through(envd: Envd) -> None:
    # 8 MiB: many times every window on the way (agent stream 1 MiB, listener backlog 1 MiB).
    result = envd.sandbox().commands.run("head -c 8388608 /dev/zero | tr '\\0' a; echo; echo tail >&2")
    assert len(result.stdout) == 8388608 + 1 and set(result.stdout.strip()) == {"a"}
    assert result.stderr == "tail\n"


def test_a_command_too_large_for_the_agent_is_an_invalid_argument(envd: Envd) -> None:
    sbx = envd.sandbox()
    with pytest.raises(InvalidArgumentException, match="at most"):
        sbx.commands.run("echo " + "x" * 40_000)
    assert sbx.commands.run("echo still fine").stdout == "still fine\n"


def test_keepalives_while_the_process_is_silent(envd: Envd) -> None:
    from e2b.envd.process import process_connect, process_pb

    client = process_connect.ProcessClientSync(envd.url)
    headers = {"E2b-Sandbox-Id": SANDBOX, "Keepalive-Ping-Interval": "1"}
    config = process_pb.ProcessConfig(cmd="/bin/sh", args=["-c", "sleep 2.5; echo done"])
    kinds = [
        response.event.event.field
        for response in client.start(process_pb.StartRequest(process=config), headers=headers)
        if response.event is not None and response.event.event is not None
    ]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("keepalive") >= 2 and "data" in kinds


def test_more_streams_than_the_agent_takes_is_an_error_not_a_hang(envd: Envd) -> None:
    # Raw Connect clients running /bin/sh: the SDK's `bash -l` would read this host's root profile, whose
    # `pyenv init` serialises concurrent login shells (not what is tested here; the guest has no pyenv).
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError
    from e2b.envd.process import process_connect, process_pb

    client = process_connect.ProcessClientSync(envd.url)
    headers = {"E2b-Sandbox-Id": SANDBOX}
    config = process_pb.ProcessConfig(cmd="/bin/sh", args=["-c", "sleep 60"])
    streams = []
    try:
        for _ in range(limits.E2B_MAX_PROCESS_STREAMS):
            stream = client.start(process_pb.StartRequest(process=config), headers=headers)
            first = next(stream)
            assert first.event is not None and first.event.event is not None
            streams.append((stream, first.event.event.value.pid))
        with pytest.raises(ConnectError) as info:
            next(client.start(process_pb.StartRequest(process=config), headers=headers))
        assert info.value.code == Code.RESOURCE_EXHAUSTED
        sbx = envd.sandbox()
        assert len(sbx.commands.list()) >= len(streams)  # unary calls still have sessions
        for _, pid in streams:
            assert sbx.commands.kill(pid)
    finally:
        for stream, _ in streams:
            stream.close()
    assert envd.sandbox().commands.run("echo ok").stdout == "ok\n"
