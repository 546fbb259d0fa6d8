"""gRPC servicer: translates protobuf to ``Service`` calls and ``clawpot.errors`` kinds to status codes.

Nothing here decides anything; the service and the node do. Keep it that way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from clawpot import errors, limits
from clawpot.network.policy import EgressPolicy
from clawpot.node.events import EventKind, VmEvent
from clawpot.node.health import AgentHealth
from clawpot.node.sessions import ExecParams, ExecSession
from clawpot.node.snapshots import SnapshotInfo
from clawpot.node.store import Origin
from clawpot.node.vms import VmView
from clawpot.service.service import CreateParams, Service
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
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
}

_STATE_TO_PB = {
    VmState.NOT_STARTED: vm_pb2.VM_STATE_STARTING,
    VmState.STARTING: vm_pb2.VM_STATE_STARTING,
    VmState.RUNNING: vm_pb2.VM_STATE_RUNNING,
    VmState.PAUSED: vm_pb2.VM_STATE_PAUSED,
    VmState.STOPPING: vm_pb2.VM_STATE_STOPPING,
    VmState.STOPPED: vm_pb2.VM_STATE_STOPPED,
    VmState.ERROR: vm_pb2.VM_STATE_ERROR,
}
_BACKEND_TO_PB = {BackendKind.FIRECRACKER: vm_pb2.BACKEND_FIRECRACKER, BackendKind.QEMU: vm_pb2.BACKEND_QEMU}
_BACKEND_FROM_PB = {v: k for k, v in _BACKEND_TO_PB.items()}
_ORIGIN_TO_PB = {
    Origin.COLD: vm_pb2.VM_ORIGIN_COLD,
    Origin.RESTORE: vm_pb2.VM_ORIGIN_RESTORE,
    Origin.FORK: vm_pb2.VM_ORIGIN_FORK,
    Origin.POOL: vm_pb2.VM_ORIGIN_POOL,
    Origin.WARM: vm_pb2.VM_ORIGIN_POOL,  # still in the pool (``pooled``)
}
_HEALTH_TO_PB = {
    AgentHealth.UNKNOWN: vm_pb2.AGENT_HEALTH_UNKNOWN,
    AgentHealth.HEALTHY: vm_pb2.AGENT_HEALTH_HEALTHY,
    AgentHealth.UNRESPONSIVE: vm_pb2.AGENT_HEALTH_UNRESPONSIVE,
    AgentHealth.DEGRADED: vm_pb2.AGENT_HEALTH_DEGRADED,
}

_EVENT_TO_PB = {
    EventKind.CREATED: vm_pb2.VM_EVENT_KIND_CREATED,
    EventKind.RUNNING: vm_pb2.VM_EVENT_KIND_RUNNING,
    EventKind.PAUSED: vm_pb2.VM_EVENT_KIND_PAUSED,
    EventKind.RESUMED: vm_pb2.VM_EVENT_KIND_RESUMED,
    EventKind.ERROR: vm_pb2.VM_EVENT_KIND_ERROR,
    EventKind.DELETED: vm_pb2.VM_EVENT_KIND_DELETED,
}

T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the call with the status ``exc`` stands for (``errors.translate``); INTERNAL for a bug."""
    mapped = errors.translate(exc)
    if mapped is not None:
        code = next((c for kind, c in _STATUS.items() if isinstance(mapped, kind)), grpc.StatusCode.INTERNAL)
        await context.abort(code, errors.one_line(str(mapped)))
    log.error("internal error", exc_info=exc)
    message = errors.one_line(f"internal error: {type(exc).__name__}: {exc}")
    await context.abort(grpc.StatusCode.INTERNAL, message)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def vm_to_pb(view: VmView) -> vm_pb2.Vm:
    rec, health = view.record, view.health
    return vm_pb2.Vm(
        id=rec.id,
        state=_STATE_TO_PB[rec.state],
        backend=_BACKEND_TO_PB[rec.backend],
        vcpus=rec.vcpus,
        memory_mib=rec.memory_mib,
        ip_address=rec.ip_address,
        labels=rec.labels,
        created_at=_timestamp(rec.created_at),
        # The VMM's or serial console's last words: bounded so every Vm fits a ListVms page.
        error=errors.one_line(rec.error, limits.MAX_VM_ERROR_CHARS) if rec.error else "",
        allow_peer_traffic=rec.allow_peers,
        health=_HEALTH_TO_PB[health.health],
        health_since=_timestamp(health.since),
        health_detail=health.detail[: limits.MAX_HEALTH_DETAIL_CHARS],
        origin=_ORIGIN_TO_PB[rec.origin],
        snapshot=rec.snapshot if rec.origin is Origin.RESTORE else "",
        forked_from=rec.snapshot if rec.origin is Origin.FORK else "",
        pooled=rec.origin is Origin.WARM,
        disk_mib=rec.disk_mib,
        egress=egress_to_pb(view.network.egress),
        published=[
            vm_pb2.PortForward(
                host_address=str(p.host_address),
                host_port=p.host_port,
                guest_port=p.guest_port,
                protocol=p.protocol,
            )
            for p in view.network.ports
        ],
        expires_at=_timestamp(view.lifetime.expires_at) if view.lifetime is not None else None,
    )


def egress_to_pb(egress: EgressPolicy) -> vm_pb2.EgressPolicy:
    return vm_pb2.EgressPolicy(
        allow_out=egress.allow.entries(), deny_out=egress.deny.entries(), no_internet=egress.no_internet
    )


def publish_specs(ports: Iterable[vm_pb2.PortForward]) -> tuple[str, ...]:
    """PortForward messages as ``--publish`` specs, for the one parser (network/policy.py)."""
    default = limits.DEFAULT_PUBLISH_ADDRESS
    return tuple(
        f"{p.host_address or default}:{p.host_port}:{p.guest_port}/{p.protocol or 'tcp'}" for p in ports
    )


def event_to_pb(event: VmEvent) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(
        sequence=event.sequence,
        at=_timestamp(event.at),
        vm_id=event.vm_id,
        kind=_EVENT_TO_PB[event.kind],
        state=_STATE_TO_PB[event.state],
        backend=_BACKEND_TO_PB[event.backend],
        origin=_ORIGIN_TO_PB[event.origin],
        reason=event.reason,
    )


def snapshot_to_pb(info: SnapshotInfo, used_by: list[str]) -> vm_pb2.Snapshot:
    return vm_pb2.Snapshot(
        name=info.name,
        backend=_BACKEND_TO_PB[info.backend],
        vcpus=info.vcpus,
        memory_mib=info.memory_mib,
        created_at=_timestamp(info.created_at),
        size_bytes=info.size_bytes,
        used_by=used_by,
    )


class VmServicer(vm_pb2_grpc.VmServiceServicer):
    def __init__(self, service: Service) -> None:
        self._service = service

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
        restoring = bool(request.from_snapshot)
        params = CreateParams(
            # A restore takes the snapshot's shape: 0 stays 0 ("the snapshot's").
            vcpus=request.vcpus or (0 if restoring else limits.DEFAULT_VCPUS),
            memory_mib=request.memory_mib or (0 if restoring else limits.DEFAULT_MEMORY_MIB),
            disk_mib=request.disk_mib or (0 if restoring else limits.DEFAULT_DISK_MIB),
            backend=_BACKEND_FROM_PB.get(request.backend),
            labels=dict(request.labels),
            ip_address=request.ip_address or None,
            allow_peers=request.allow_peer_traffic,
            from_snapshot=request.from_snapshot if restoring else None,
            allow_out=tuple(request.egress.allow_out),
            deny_out=tuple(request.egress.deny_out),
            no_internet=request.egress.no_internet,
            publish=publish_specs(request.publish),
            timeout=request.timeout_seconds or None,
        )
        view = await self._call(context, lambda: self._service.create(params))
        return vm_to_pb(view)

    async def GetVm(
        self, request: vm_pb2.GetVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        return vm_to_pb(await self._call(context, lambda: self._service.get(request.id)))

    async def ListVms(
        self, request: vm_pb2.ListVmsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.ListVmsResponse:
        views, next_token = await self._call(
            context,
            lambda: self._service.list_page(
                request.page_size, request.page_token, include_pool=request.include_pool
            ),
        )
        return vm_pb2.ListVmsResponse(vms=[vm_to_pb(v) for v in views], next_page_token=next_token)

    async def DeleteVm(
        self, request: vm_pb2.DeleteVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.DeleteVmResponse:
        await self._call(context, lambda: self._service.delete(request.id))
        return vm_pb2.DeleteVmResponse()

    async def PauseVm(
        self, request: vm_pb2.PauseVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        return vm_to_pb(await self._call(context, lambda: self._service.pause(request.id)))

    async def ResumeVm(
        self, request: vm_pb2.ResumeVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        return vm_to_pb(await self._call(context, lambda: self._service.resume(request.id)))

    async def SnapshotVm(
        self, request: vm_pb2.SnapshotVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Snapshot:
        info = await self._call(context, lambda: self._service.snapshot(request.vm_id, request.name))
        return snapshot_to_pb(info, [])

    async def ListSnapshots(
        self, request: vm_pb2.ListSnapshotsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.ListSnapshotsResponse:
        found = await self._call(context, self._service.list_snapshots)
        return vm_pb2.ListSnapshotsResponse(snapshots=[snapshot_to_pb(i, users) for i, users in found])

    async def DeleteSnapshot(
        self, request: vm_pb2.DeleteSnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.DeleteSnapshotResponse:
        await self._call(context, lambda: self._service.delete_snapshot(request.name))
        return vm_pb2.DeleteSnapshotResponse()

    async def ForkVm(
        self, request: vm_pb2.ForkVmRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.ForkVmResponse:
        views = await self._call(context, lambda: self._service.fork(request.id, request.count or 1))
        return vm_pb2.ForkVmResponse(vms=[vm_to_pb(v) for v in views])

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
        session = await self._call(context, lambda: self._service.exec(start.vm_id, params))
        feeder = asyncio.create_task(self._feed_exec(request_iterator, session))
        try:
            async for event in session.events():
                if event.stdout is not None:
                    yield vm_pb2.ExecResponse(stdout=event.stdout)
                elif event.stderr is not None:
                    yield vm_pb2.ExecResponse(stderr=event.stderr)
            status = await session.result()
            yield vm_pb2.ExecResponse(
                exit=vm_pb2.ExitStatus(
                    exit_code=-1 if status.exit_code is None else status.exit_code,
                    signal=status.signal or 0,
                )
            )
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            # After the first yield too: an error here must still become its status (a ServerError
            # escaping the generator would reach the client as UNKNOWN "Unexpected <class ...>").
            await _abort(context, exc)
        finally:
            feeder.cancel()
            # The feeder's own failure (stdin for a process that already ended, a lost agent) is
            # reported through the output stream above, not here.
            await asyncio.gather(feeder, return_exceptions=True)
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
            context, lambda: self._service.upload(header.vm_id, header.path, header.mode or 0o644, chunks())
        )
        return vm_pb2.UploadFileResponse(size=size)

    async def DownloadFile(
        self, request: vm_pb2.DownloadFileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[vm_pb2.DownloadFileResponse]:
        download = await self._call(context, lambda: self._service.download(request.vm_id, request.path))
        max_size = request.max_size or limits.DOWNLOAD_MAX_BYTES
        yield vm_pb2.DownloadFileResponse(info=vm_pb2.FileInfo(size=download.size, mode=download.mode))
        try:
            async for chunk in download.chunks(max_size):
                yield vm_pb2.DownloadFileResponse(chunk=chunk)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    async def SetVmNetwork(
        self, request: vm_pb2.SetVmNetworkRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        egress = request.egress
        view = await self._call(
            context,
            lambda: self._service.set_egress(
                request.id, tuple(egress.allow_out), tuple(egress.deny_out), egress.no_internet
            ),
        )
        return vm_to_pb(view)

    async def SetVmTimeout(
        self, request: vm_pb2.SetVmTimeoutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vm_pb2.Vm:
        view = await self._call(
            context, lambda: self._service.set_timeout(request.id, request.timeout_seconds)
        )
        return vm_to_pb(view)

    async def StreamLogs(
        self, request: vm_pb2.StreamLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[vm_pb2.LogChunk]:
        tail = request.tail_lines if request.HasField("tail_lines") else None
        stream = await self._call(context, lambda: self._service.logs(request.id, tail, request.follow))
        try:
            async for data in stream:
                yield vm_pb2.LogChunk(data=data)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            await stream.aclose()

    async def WatchVms(
        self, request: vm_pb2.WatchVmsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[vm_pb2.VmEvent]:
        since = request.since_sequence if request.HasField("since_sequence") else None
        follow = not request.no_follow
        watcher = await self._call(context, lambda: self._service.watch(since, follow=follow))
        events = watcher.events()
        try:
            async for event in events:
                yield event_to_pb(event)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            await events.aclose()
            watcher.close()
