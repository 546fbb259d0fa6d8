"""The host side of the agent channel: connect to a VM's agent, run processes, move files.

Modules:

- ``endpoints``   how to reach an agent: Firecracker hybrid vsock, QEMU serial socket, AF_VSOCK, unix socket.
- ``transport``   open the byte stream for an endpoint (and Firecracker's ``CONNECT``/``OK`` exchange).
- ``connection``  one connection: handshake, reader task, multiplexed streams with credit-based flow control;
                  everything a guest can make it hold is bounded (``violation`` says why it dropped a guest).
- ``chunks``      the agent's bytes as the socket delivers them (takes over from the StreamReader).
- ``process``     a remote process: output events, stdin, signals, resize, exit status.
- ``files``       streamed, atomic (or in-place) upload and download.
- ``fs``          stat, list, mkdir, move, remove and watch (E2B's filesystem service), answers checked.
- ``procs``       managed processes (``proc_*``): start, attach by pid or tag, list, input, signal, resize.
- ``identity``    ``GuestIdentity`` (hostname, address, gateway, DNS, MAC) and the ``configure`` call.
- ``client``      ``AgentClient`` (exec, run, proc_*, put_file, write_file, get_file, open_file, stat,
                  list_dir, make_dir, move, remove, watch, configure, ping, shutdown), ``wait_ready``.
- ``errors``      ``GuestError`` and its subclasses.
- ``untrusted``   guest-supplied text made safe for logs (``printable``) and rate-limited per VM.

Typical use::

    async with await wait_ready(vm.agent_endpoint, deadline=60) as agent:
        result = await agent.run(["uname", "-a"])
"""

from clawpot.agent_client.client import AgentClient, PtySize, connect, wait_ready
from clawpot.agent_client.connection import AgentInfo
from clawpot.agent_client.endpoints import (
    AgentEndpoint,
    HybridVsockEndpoint,
    SerialSocketEndpoint,
    UnixSocketEndpoint,
    VsockEndpoint,
    describe,
)
from clawpot.agent_client.errors import (
    AgentDisconnected,
    AgentUnreachable,
    FileTooLarge,
    GuestError,
    ProtocolError,
    RemoteError,
)
from clawpot.agent_client.files import Download, RemoteFile
from clawpot.agent_client.identity import ConfiguredIdentity, GuestIdentity
from clawpot.agent_client.process import ExecEvent, ExecProcess, ExecResult, Exited, ExitStatus, Output

__all__ = [
    "AgentClient",
    "AgentDisconnected",
    "AgentEndpoint",
    "AgentInfo",
    "AgentUnreachable",
    "ConfiguredIdentity",
    "Download",
    "ExecEvent",
    "ExecProcess",
    "ExecResult",
    "ExitStatus",
    "Exited",
    "FileTooLarge",
    "GuestError",
    "GuestIdentity",
    "HybridVsockEndpoint",
    "Output",
    "ProtocolError",
    "PtySize",
    "RemoteError",
    "RemoteFile",
    "SerialSocketEndpoint",
    "UnixSocketEndpoint",
    "VsockEndpoint",
    "connect",
    "describe",
    "wait_ready",
]
