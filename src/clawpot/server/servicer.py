"""gRPC servicer: translates protobuf to ``VmManager`` calls and ``ServerError``s to status codes.

Nothing here decides anything; the manager does. Keep it that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from clawpot import limits
from clawpot.server import errors
from clawpot.server.manager import CreateParams, VmManager
from clawpot.server.sessions import ExecParams, ExecSession
from clawpot.server.store import VmRecord
from clawpot.v1 import vm_pb2, vm_pb2_grpc
from clawpot.vm.state import VmState
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)

_STATUS: dict[type[errors.ServerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_STATE_TO_PB = {
    VmState.NOT_STARTED: vm_pb2.VM_STATE_STARTING,
    VmState.STARTING: vm_pb2.VM_STATE_STARTING,
    VmState.RUNNING: vm_pb2.VM_STATE_RUNNING,
    VmState.STOPPING: vm_pb2.VM_STATE_STOPPING,
    VmState.STOPPED: vm_pb2.VM_STATE_STOPPED,
    VmState.ERROR: vm_pb2.VM_STATE_ERROR,
}
_BACKEND_TO_PB = {BackendKind.FIRECRACKER: vm_pb2.BACKEND_FIRECRACKER, BackendKind.QEMU: vm_pb2.BACKEND_QEMU}
_BACKEND_FROM_PB = {v: k for k, v in _BACKEND_TO_PB.items()}

T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    if isinstance(exc, errors.ServerError):
        code = next((c for kind, c in _STATUS.items() if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)
        await context.abort(code, _one_line(str(exc)))
    log.exception("internal error")
    await context.abort(grpc.StatusCode.INTERNAL, _one_line(f"{type(exc).__name__}: {exc}"))


def _one_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "error"


def vm_to_pb(rec: VmRecord) -> vm_pb2.Vm:
    created = Timestamp()
    created.FromNanoseconds(int(rec.created_at * 1e9))
    return vm_pb2.Vm(
        id=rec.id,
        state=_STATE_TO_PB[rec.state],
        backend=_BACKEND_TO_PB[rec.backend],
        vcpus=rec.vcpus,
        memory_mib=rec.memory_mib,
        ip_address=rec.ip_address,
        labels=rec.labels,
        created_at=created,
        error=rec.error,
        allow_peer_traffic=rec.allow_peers,
    )


class VmServicer(vm_pb2_grpc.VmServiceServicer):
    def __init__(self, manager: VmManager) -> None:
        self._manager = manager

    async def _call(
        self, context: grpc.aio.ServicerContext[Any, Any], fn: Callable[[], Coroutine[Any, Any, T]]
    ) -> T:
        try:
            return await fn()
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    async def CreateVm(
        self, request: vm_pb2.CreateVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        params = CreateParams(
            vcpus=request.vcpus or 1,
            memory_mib=request.memory_mib or 256,
            backend=_BACKEND_FROM_PB.get(request.backend),
            labels=dict(request.labels),
            ip_address=request.ip_address or None,
            allow_peers=request.allow_peer_traffic,
        )
        rec = await self._call(context, lambda: self._manager.create(params))
        return vm_to_pb(rec)

    async def GetVm(
        self, request: vm_pb2.GetVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        return vm_to_pb(await self._call(context, lambda: self._manager.get(request.id)))

    async def ListVms(
        self, request: vm_pb2.ListVmsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.ListVmsResponse:
        records = await self._call(context, self._manager.list)
        return vm_pb2.ListVmsResponse(vms=[vm_to_pb(r) for r in records])

    async def DeleteVm(
        self, request: vm_pb2.DeleteVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.DeleteVmResponse:
        await self._call(context, lambda: self._manager.delete(request.id))
        return vm_pb2.DeleteVmResponse()

    async def Exec(
        self,
        request_iterator: AsyncIterator[vm_pb2.ExecRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[vm_pb2.ExecResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first Exec request must be `start`")
        start = first.start
        params = ExecParams(
            argv=list(start.argv),
            env=dict(start.env),
            cwd=start.cwd or None,
            timeout=start.timeout_seconds or None,
            tty=start.tty,
            rows=start.rows,
            cols=start.cols,
            stdin=start.stdin,
        )
        session = await self._call(context, lambda: self._manager.exec(start.vm_id, params))
        feeder = asyncio.create_task(self._feed_exec(request_iterator, session))
        try:
            async for event in session.events():
                if event.stdout is not None:
                    yield vm_pb2.ExecResponse(stdout=event.stdout)
                elif event.stderr is not None:
                    yield vm_pb2.ExecResponse(stderr=event.stderr)
            status = await self._call(context, session.result)
            yield vm_pb2.ExecResponse(
                exit=vm_pb2.ExitStatus(
                    exit_code=-1 if status.exit_code is None else status.exit_code,
                    signal=status.signal or 0,
                )
            )
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            await session.close()

    @staticmethod
    async def _feed_exec(requests: AsyncIterator[vm_pb2.ExecRequest], session: ExecSession) -> None:
        async for request in requests:
            kind = request.WhichOneof("kind")
            if kind == "stdin":
                await session.write_stdin(request.stdin)
            elif kind == "close_stdin":
                await session.close_stdin()
            elif kind == "signal":
                await session.send_signal(request.signal)
            elif kind == "resize":
                await session.resize(request.resize.rows, request.resize.cols)

    async def UploadFile(
        self,
        request_iterator: AsyncIterator[vm_pb2.UploadFileRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> vm_pb2.UploadFileResponse:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first UploadFile request must be `header`"
            )
        header = first.header

        async def chunks() -> AsyncIterator[bytes]:
            async for request in request_iterator:
                if request.WhichOneof("kind") != "chunk":
                    raise errors.InvalidArgument("UploadFile: only `chunk` may follow the header")
                yield request.chunk

        size = await self._call(
            context, lambda: self._manager.upload(header.vm_id, header.path, header.mode or 0o644, chunks())
        )
        return vm_pb2.UploadFileResponse(size=size)

    async def DownloadFile(
        self, request: vm_pb2.DownloadFileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[vm_pb2.DownloadFileResponse]:
        download = await self._call(context, lambda: self._manager.download(request.vm_id, request.path))
        max_size = request.max_size or limits.DOWNLOAD_MAX_BYTES
        yield vm_pb2.DownloadFileResponse(info=vm_pb2.FileInfo(size=download.size, mode=download.mode))
        try:
            async for chunk in download.chunks(max_size):
                yield vm_pb2.DownloadFileResponse(chunk=chunk)
        except errors.ServerError as exc:
            await _abort(context, exc)
