"""The REST routes of E2B's control plane over Clawpot's ``Service``.

Each handler parses the request (``bodies``), calls the service, and shapes the answer as the SDK
parses it (``shapes``); failures become E2B's error shape (``clawpot.e2b.errors``). E2B's semantics
kept here, and only here:
- a sandbox's timeout is its VM's lifetime, counted from the request (at create: from when the VM
  runs, so a slow boot does not eat it): ``timeout`` overwrites it, ``connect`` and ``refreshes`` only
  ever extend it, ``autoPause`` makes it pause instead of kill;
- ``connect`` resumes a paused sandbox (201) or returns a running one (200);
- ``pause`` of a paused sandbox is 409 (the SDK then returns False); kill of a missing one 404 (False);
- ``fork`` copies a running sandbox (Clawpot's ForkVm): each copy keeps its source's metadata, envVars
  and autoPause, gets its own access token (when the source is secure) and the fork's timeout;
- snapshots (``rest.snapshots``): ``POST /sandboxes/{id}/snapshots`` takes a named snapshot,
  ``GET /snapshots`` lists them, ``DELETE /templates/{snapshot id}`` deletes one, and ``POST
  /sandboxes`` with a snapshot id as ``templateID`` restores it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clawpot import errors, limits
from clawpot.e2b import errors as e2b_errors
from clawpot.e2b.context import E2bContext, Sandbox
from clawpot.e2b.rest import bodies, listing, logs, shapes, snapshots
from clawpot.e2b.rest.usage import UsageReader
from clawpot.e2b.sandboxes import SandboxAttrs, new_access_token, save_attrs
from clawpot.node.lifetimes import Expiry
from clawpot.node.vms import VmView
from clawpot.service.service import CreateParams
from clawpot.vm.state import VmState

Handler = Callable[[Request], Awaitable[Response]]


def _e2b_errors(handler: Handler) -> Handler:
    """Every failure of ``handler`` answered in E2B's shape (the one place it is done)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return e2b_errors.from_exception(exc)

    return wrapped


def _seconds(timeout: int) -> int:
    """E2B's timeout (0 and up) as a Clawpot lifetime (1 s to 30 days): 0 means "end now"."""
    if timeout > limits.MAX_VM_TIMEOUT:
        raise errors.InvalidArgument(
            f"timeout {timeout} s is longer than {limits.MAX_VM_TIMEOUT} s (30 days)"
        )
    return max(limits.MIN_VM_TIMEOUT, timeout)


class Routes:
    def __init__(self, ctx: E2bContext) -> None:
        self.ctx = ctx
        self.usage = UsageReader()

    # -- helpers ------------------------------------------------------------------------------------------

    def _sandbox(self, request: Request) -> tuple[Sandbox, str]:
        """The path's sandbox and its E2B state; NotFound for no VM or one that is not a sandbox now."""
        sandbox = self.ctx.sandbox(request.path_params["sandbox_id"])
        state = shapes.e2b_state(sandbox.view.record.state)
        if state is None:
            raise errors.NotFound(f"sandbox {sandbox.id} not found (its VM is {sandbox.view.record.state})")
        return sandbox, state

    def _expiry(self, attrs: SandboxAttrs) -> Expiry:
        return Expiry.PAUSE if attrs.auto_pause else Expiry.DELETE

    async def _extend(self, sandbox: Sandbox, seconds: int) -> None:
        """Move the deadline to ``seconds`` from now if that is later (never shorten; none stays none)."""
        lifetime = sandbox.view.lifetime
        if lifetime is not None and time.time() + seconds > lifetime.expires_at:
            await self.ctx.service.set_timeout(sandbox.id, seconds)

    # -- sandboxes ------------------------------------------------------------------------------------

    async def create(self, request: Request, *, v2: bool) -> Response:
        body = await bodies.read_body(request, bodies.NewSandbox)
        snapshot = self._template_snapshot(body.templateID)
        body.refuse_unsupported()
        source = None if snapshot is None else self._snapshot_source(snapshot)
        env_vars = {**(source.env_vars if source is not None else {}), **(body.envVars or {})}
        default = limits.E2B_V2_DEFAULT_TIMEOUT if v2 else limits.E2B_V1_DEFAULT_TIMEOUT
        seconds = _seconds(body.timeout if body.timeout is not None else default)
        secure = True if v2 else body.secure is not False  # v2 has no choice: every sandbox is secure
        attrs = SandboxAttrs(
            template_id=body.templateID,
            metadata=dict(body.metadata or {}),
            env_vars=env_vars,
            auto_pause=body.autoPause,
        )
        if not secure:
            attrs = dataclasses.replace(attrs, envd_access_token=None)
        egress = body.egress()
        params = CreateParams(
            timeout=seconds,
            on_expiry=self._expiry(attrs),
            allow_out=egress.allow_out,
            deny_out=egress.deny_out,
            no_internet=egress.no_internet,
        )
        if snapshot is not None:
            # The snapshot says the size and backend: 0 / None take them.
            params = dataclasses.replace(params, vcpus=0, memory_mib=0, from_snapshot=snapshot)
        view = await self.ctx.service.create(params)
        await self._record(view, attrs)
        return JSONResponse(shapes.sandbox_body(Sandbox(view.record.id, view, attrs)), status_code=201)

    async def _record(self, view: VmView, attrs: SandboxAttrs) -> None:
        """Store a new sandbox's attributes; when that fails its VM is deleted (nothing left behind)."""
        try:
            save_attrs(view.record.vm_dir, attrs)
        except OSError as exc:
            await self.ctx.service.delete(view.record.id)
            raise errors.Unavailable(f"cannot record the sandbox's attributes: {exc.strerror}") from None

    def _template_snapshot(self, template_id: str) -> str | None:
        """None for the default image, the snapshot's name for a snapshot id; anything else: 404."""
        if template_id == limits.E2B_DEFAULT_TEMPLATE:
            return None
        name = snapshots.name_of(template_id)
        if name is None or not self.ctx.node.snapshots.exists(name):
            raise errors.NotFound(
                f"template {errors.quote(template_id)} not found: this server serves "
                f"{limits.E2B_DEFAULT_TEMPLATE!r} (the default image) and its snapshots"
            )
        return name

    def _snapshot_source(self, name: str) -> snapshots.Source | None:
        return snapshots.load_source(self.ctx.node.snapshots.path(name))

    async def get(self, request: Request) -> Response:
        sandbox, state = self._sandbox(request)
        return JSONResponse(shapes.detail_body(sandbox, state))

    async def list_sandboxes(self, request: Request, *, v2: bool) -> Response:
        query = listing.parse_query(request.query_params, v2=v2)
        found: list[tuple[Sandbox, str]] = []
        for view in await self._all_views():
            state = shapes.e2b_state(view.record.state)
            if state is None:
                continue
            try:
                found.append((self.ctx.sandbox(view.record.id), state))
            except errors.NotFound:
                continue  # deleted meanwhile
        page, token = listing.select(found, query)
        headers = {"X-Next-Token": token} if token else {}
        return JSONResponse([shapes.listed_body(s, state) for s, state in page], headers=headers)

    async def _all_views(self) -> list[VmView]:
        """Every VM the service lists to users, through its own paging (what it hides stays hidden)."""
        views: list[VmView] = []
        token = ""
        while True:
            page, token = await self.ctx.service.list_page(limits.MAX_PAGE_SIZE, token)
            views += page
            if not token:
                return views

    async def kill(self, request: Request) -> Response:
        sandbox = self.ctx.sandbox(request.path_params["sandbox_id"])  # any state: an Error VM too
        await self.ctx.service.delete(sandbox.id)
        return Response(status_code=204)

    async def set_timeout(self, request: Request) -> Response:
        sandbox, _ = self._sandbox(request)
        body = await bodies.read_body(request, bodies.TimeoutRequest)
        await self.ctx.service.set_timeout(sandbox.id, _seconds(body.timeout))
        return Response(status_code=204)

    async def refresh(self, request: Request) -> Response:
        sandbox, _ = self._sandbox(request)
        body = await bodies.read_body(request, bodies.RefreshRequest, required=False)
        await self._extend(sandbox, _seconds(body.duration))
        return Response(status_code=204)

    async def pause(self, request: Request) -> Response:
        sandbox, state = self._sandbox(request)
        await bodies.read_body(request, bodies.PauseRequest, required=False)
        if state == "paused":
            raise errors.AlreadyExists(f"sandbox {sandbox.id} is already paused")  # 409
        await self.ctx.service.pause(sandbox.id)
        return Response(status_code=204)

    async def connect(self, request: Request, *, v2: bool) -> Response:
        sandbox, state = self._sandbox(request)
        body = await bodies.read_body(request, bodies.ConnectRequest, required=not v2)
        if not v2 and body.timeout is None:
            raise errors.InvalidArgument("invalid request body: timeout: Field required")
        seconds = _seconds(body.timeout if body.timeout is not None else limits.E2B_V2_DEFAULT_TIMEOUT)
        if state == "paused":
            if body.memory is False:
                raise errors.InvalidArgument(
                    "on_resume='reboot' is not supported: a sandbox resumes from memory"
                )
            await self._resume(sandbox, seconds)
            return JSONResponse(shapes.sandbox_body(self.ctx.sandbox(sandbox.id)), status_code=201)
        await self._extend(sandbox, seconds)
        return JSONResponse(shapes.sandbox_body(self.ctx.sandbox(sandbox.id)), status_code=200)

    async def resume(self, request: Request) -> Response:
        sandbox, state = self._sandbox(request)
        body = await bodies.read_body(request, bodies.ResumeRequest, required=False)
        if state != "paused":
            raise errors.AlreadyExists(f"sandbox {sandbox.id} is already running")  # 409
        if body.autoPause is not None and body.autoPause != sandbox.attrs.auto_pause:
            save_attrs(
                sandbox.view.record.vm_dir,
                dataclasses.replace(sandbox.attrs, auto_pause=body.autoPause),
            )
            sandbox = self.ctx.sandbox(sandbox.id)
        await self._resume(sandbox, _seconds(body.timeout))
        return JSONResponse(shapes.sandbox_body(self.ctx.sandbox(sandbox.id)), status_code=201)

    async def _resume(self, sandbox: Sandbox, seconds: int) -> None:
        await self.ctx.service.resume(sandbox.id)
        await self.ctx.service.set_timeout(sandbox.id, seconds, self._expiry(sandbox.attrs))

    # -- fork and snapshots ---------------------------------------------------------------------------

    async def fork(self, request: Request) -> Response:
        sandbox, _ = self._sandbox(request)
        body = await bodies.read_body(request, bodies.ForkRequest, required=False)
        seconds = _seconds(body.timeout)
        views = await self.ctx.service.fork(sandbox.id, body.count)  # all or nothing
        results = []
        try:
            for copy in views:
                token = new_access_token() if sandbox.attrs.secure else None
                attrs = dataclasses.replace(sandbox.attrs, envd_access_token=token)
                try:
                    save_attrs(copy.record.vm_dir, attrs)
                except OSError as exc:
                    raise errors.Unavailable(f"cannot record the copy's attributes: {exc.strerror}") from None
                timed = await self.ctx.service.set_timeout(copy.record.id, seconds, self._expiry(attrs))
                results.append({"sandbox": shapes.sandbox_body(Sandbox(copy.record.id, timed, attrs))})
        except BaseException:
            # All or nothing, as the fork itself: no copy the caller was not told about is left.
            for copy in views:
                with contextlib.suppress(errors.ServerError):
                    await self.ctx.service.delete(copy.record.id)
            raise
        return JSONResponse(results, status_code=201)

    async def create_snapshot(self, request: Request) -> Response:
        sandbox, _ = self._sandbox(request)
        body = await bodies.read_body(request, bodies.SnapshotRequest, required=False)
        if body.memory is False:
            raise errors.InvalidArgument(
                "filesystem-only snapshots are not supported by this server: a snapshot keeps memory"
            )
        name = snapshots.new_name(body.name)
        await self.ctx.service.snapshot(sandbox.id, name)  # 409 when the name is taken
        source = snapshots.Source(sandbox.id, dict(sandbox.attrs.env_vars))
        try:
            snapshots.save_source(self.ctx.node.snapshots.path(name), source)
        except OSError as exc:
            await self.ctx.service.delete_snapshot(name)
            raise errors.Unavailable(f"cannot record the snapshot's source: {exc.strerror}") from None
        return JSONResponse(snapshots.info_body(name), status_code=201)

    async def list_snapshots(self, request: Request) -> Response:
        query = snapshots.parse_query(request.query_params)
        listed = await self.ctx.service.list_snapshots()
        found = [(info, self._snapshot_source(info.name)) for info, _ in listed]
        page, token = snapshots.select(found, query)
        headers = {"X-Next-Token": token} if token else {}
        return JSONResponse([snapshots.info_body(info.name) for info in page], headers=headers)

    async def delete_snapshot(self, request: Request) -> Response:
        template_id = request.path_params["template_id"]
        name = snapshots.name_of(template_id)
        if name is None:
            raise errors.NotFound(f"snapshot {errors.quote(template_id)} not found")
        await self.ctx.service.delete_snapshot(name)  # 404 when missing, 409 while a sandbox uses it
        return Response(status_code=204)

    # -- logs and metrics -----------------------------------------------------------------------------

    async def logs_v1(self, request: Request) -> Response:
        sandbox = self.ctx.sandbox(request.path_params["sandbox_id"])  # an Error VM's console too
        start = _int_param(request, "start", None, 0, None)
        limit = _int_param(request, "limit", limits.E2B_DEFAULT_LOG_LINES, 0, limits.E2B_MAX_LOG_LINES)
        assert limit is not None
        record = sandbox.view.record
        found = await logs.console_lines(self.ctx.service, record.id, record.created_at)
        lines = logs.select(found, start, limit)
        return JSONResponse(
            {
                "logs": [{"timestamp": shapes.iso(ln.timestamp), "line": ln.line} for ln in lines],
                "logEntries": [_entry(ln) for ln in lines],
            }
        )

    async def logs_v2(self, request: Request) -> Response:
        sandbox = self.ctx.sandbox(request.path_params["sandbox_id"])  # an Error VM's console too
        cursor = _int_param(request, "cursor", None, 0, None)
        limit = _int_param(request, "limit", limits.E2B_DEFAULT_LOG_LINES, 0, limits.E2B_DEFAULT_LOG_LINES)
        assert limit is not None
        direction = request.query_params.get("direction", "forward")
        if direction not in ("forward", "backward"):
            raise errors.InvalidArgument(f"invalid direction {errors.quote(direction)}: forward or backward")
        search = request.query_params.get("search")
        record = sandbox.view.record
        lines = await logs.console_lines(self.ctx.service, record.id, record.created_at)
        if search:
            lines = [ln for ln in lines if search in ln.line]
        # Console lines are all "info": a minimum level above it excludes them.
        if request.query_params.get("level") in ("warn", "error"):
            lines = []
        chosen = logs.select(lines, cursor, limit, backward=direction == "backward")
        return JSONResponse({"logs": [_entry(ln) for ln in chosen]})

    async def metrics(self, request: Request) -> Response:
        sandbox, _ = self._sandbox(request)
        return JSONResponse([self._metric(sandbox)])

    async def metrics_many(self, request: Request) -> Response:
        ids = [i for i in request.query_params.get("sandbox_ids", "").split(",") if i]
        if len(ids) > limits.E2B_MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"at most {limits.E2B_MAX_PAGE_SIZE} sandbox_ids")
        found = {}
        for sandbox_id in ids:
            try:
                found[sandbox_id] = self._metric(self.ctx.sandbox(sandbox_id))
            except errors.NotFound:
                continue
        return JSONResponse({"sandboxes": found})

    def _metric(self, sandbox: Sandbox) -> dict[str, object]:
        record = sandbox.view.record
        pid = record.pid if record.state in (VmState.RUNNING, VmState.PAUSED) else None
        usage = self.usage.read(record.id, pid, record.vcpus, record.memory_mib, record.vm_dir)
        return {
            "timestamp": shapes.iso(usage.timestamp),
            "timestampUnix": int(usage.timestamp),
            "cpuCount": usage.cpu_count,
            "cpuUsedPct": usage.cpu_used_pct,
            "memUsed": usage.mem_used,
            "memTotal": usage.mem_total,
            "memCache": 0,
            "diskUsed": usage.disk_used,
            "diskTotal": usage.disk_total,
        }


def _entry(line: logs.LogLine) -> dict[str, object]:
    return {"timestamp": shapes.iso(line.timestamp), "level": "info", "message": line.line, "fields": {}}


def _int_param(request: Request, name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise errors.InvalidArgument(f"invalid {name} {errors.quote(value)}: an integer") from None
    if number < low or (high is not None and number > high):
        raise errors.InvalidArgument(f"{name} {number} out of range")
    return number


async def _health(_request: Request) -> Response:
    return Response(status_code=200)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return e2b_errors.error_response(exc.status_code, exc.detail)


def create_rest_app(ctx: E2bContext) -> Starlette:
    r = Routes(ctx)

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, _e2b_errors(handler), methods=[method])

    sandbox = "/sandboxes/{sandbox_id}"
    routes = [
        Route("/health", _health, methods=["GET"]),
        route("/sandboxes", functools.partial(r.create, v2=False), "POST"),
        route("/v2/sandboxes", functools.partial(r.create, v2=True), "POST"),
        route("/sandboxes", functools.partial(r.list_sandboxes, v2=False), "GET"),
        route("/v2/sandboxes", functools.partial(r.list_sandboxes, v2=True), "GET"),
        route("/sandboxes/metrics", r.metrics_many, "GET"),
        route(sandbox, r.get, "GET"),
        route(sandbox, r.kill, "DELETE"),
        route(f"{sandbox}/timeout", r.set_timeout, "POST"),
        route(f"{sandbox}/refreshes", r.refresh, "POST"),
        route(f"{sandbox}/pause", r.pause, "POST"),
        route(f"{sandbox}/resume", r.resume, "POST"),
        route(f"{sandbox}/connect", functools.partial(r.connect, v2=False), "POST"),
        route(f"/v2{sandbox}/connect", functools.partial(r.connect, v2=True), "POST"),
        route(f"{sandbox}/logs", r.logs_v1, "GET"),
        route(f"/v2{sandbox}/logs", r.logs_v2, "GET"),
        route(f"{sandbox}/metrics", r.metrics, "GET"),
        route(f"{sandbox}/fork", r.fork, "POST"),
        route(f"{sandbox}/snapshots", r.create_snapshot, "POST"),
        route("/snapshots", r.list_snapshots, "GET"),
        route("/templates/{template_id}", r.delete_snapshot, "DELETE"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
