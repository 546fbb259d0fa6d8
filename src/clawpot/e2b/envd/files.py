"""HTTP ``/files`` (E2B's envd): download and upload guest files, streamed through the agent.

GET ``/files?path=P[&username=U]``: the file's bytes (``application/octet-stream``, gzip-encoded when
``Accept-Encoding`` prefers it, as envd negotiates). POST ``/files[?path=P][&username=U]``: the body is
``application/octet-stream`` (``path`` required) or ``multipart/form-data`` with ``file`` parts (each
part's file name is its path unless ``path`` is given), optionally ``Content-Encoding: gzip``; the
answer is envd's list of ``{"path", "name", "type": "file", "metadata"?}``; ``X-Metadata-<key>``
headers become the file's metadata (``user.e2b.<key>`` xattrs, its whole set: none clears it). Files
are written in place and owned by the user; missing parent directories are created for the user.
``user`` is accepted as a synonym of ``username``; without either the sandbox's default user acts.
Relative paths are from the user's home.

Errors have envd's shape ``{"code", "message"}``: 404 ``path '...' does not exist`` (the SDK's
``FileNotFoundException``), 400 for a directory or a bad request, 401 for an unknown user or a bad
signature, 406 when no acceptable encoding remains, 507 for a full guest disk.

Signed URLs (``signature``, ``signature_expiration``; the SDK's ``download_url``/``upload_url``) are
checked here for ``secure`` sandboxes: ``v1_`` + unpadded base64 of
SHA-256(``path:operation:username:token[:expiration]``), as envd checks them.

Nothing is held whole on the host: bodies go to the agent chunk by chunk (multipart parts through a
streaming parser), downloads come back the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from clawpot import errors, limits
from clawpot.agent_client import AgentClient, GuestError, RemoteError
from clawpot.agent_client.files import Download, RemoteFile
from clawpot.e2b.context import E2bContext, Sandbox
from clawpot.e2b.envd import users
from clawpot.e2b.envd.guest import agent_for, sandbox_gone_message
from clawpot.node.agents import one_line

SANDBOX_HEADER = "e2b-sandbox-id"
ACCESS_TOKEN_HEADER = "x-access-token"
# Bytes of an upload queued for the agent per part: enough to keep the agent busy, small enough that a
# fast client cannot make the host buffer more than this while the guest writes.
_PART_QUEUE_CHUNKS = 8
# Decompressed bytes produced per step from a gzip body (a small bomb cannot make one step large).
_INFLATE_STEP = 256 * 1024
_GZIP_LEVEL = 1  # the client cannot tell levels apart; level 1 costs the least CPU
METADATA_HEADER = "x-metadata-"
# envd's bounds on file metadata (user.e2b.<key> xattrs): checked here too, so a bad header is a 400
# before any byte of the body is written.
_METADATA_PREFIX = "user.e2b."
_METADATA_MAX_KEY = 255 - len(_METADATA_PREFIX)
_METADATA_MAX_TOTAL = 4096


class FilesError(Exception):
    """An answer other than success: its HTTP status and envd's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": errors.one_line(message)[:1000]}, status_code=status)


def create_files_app(ctx: E2bContext, *, default_user: str = limits.E2B_DEFAULT_USER) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            if request.method == "GET":
                response = await _download(ctx, request, default_user)
            elif request.method == "POST":
                response = await _upload(ctx, request, default_user)
            else:
                response = error_response(405, f"method {request.method[:16]} not allowed on /files")
        except FilesError as exc:
            response = error_response(exc.status, str(exc))
        await response(scope, receive, send)

    return app


# --- shared ---------------------------------------------------------------------------------------------


def _query(request: Request) -> dict[str, str]:
    """The first value of each query parameter (``keep_blank_values``: ``path=`` is a path)."""
    parsed = parse_qs(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def _username(query: dict[str, str], default_user: str) -> str:
    try:
        return users.checked(query.get("username") or query.get("user") or default_user)
    except ValueError as exc:
        raise FilesError(401, f"error looking up user: {exc}") from None


def _check_signature(sandbox: Sandbox, request: Request, query: dict[str, str], operation: str) -> None:
    """envd's access rule for /files: the token in the header, or a valid unexpired signature."""
    token = sandbox.attrs.envd_access_token
    if token is None:
        return
    given = request.headers.get(ACCESS_TOKEN_HEADER)
    if given is not None:
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise FilesError(401, "access token present in header but does not match")
        return
    signature = query.get("signature")
    if signature is None:
        raise FilesError(401, "missing signature query parameter")
    parts = [query.get("path", ""), operation, query.get("username", ""), token]
    expiration = query.get("signature_expiration")
    if expiration is not None:
        if not expiration.lstrip("-").isdigit() or len(expiration) > 20:
            raise FilesError(401, "invalid signature")
        parts.append(expiration)
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    expected = "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise FilesError(401, "invalid signature")
    if expiration is not None and int(expiration) < time.time():
        raise FilesError(401, "signature is already expired")


async def _sandbox_agent(ctx: E2bContext, request: Request, operation: str) -> tuple[AgentClient, Any, str]:
    sid = request.headers.get(SANDBOX_HEADER, "")
    try:
        sandbox = ctx.sandbox(sid)
    except errors.NotFound:
        raise FilesError(502, sandbox_gone_message(sid)) from None
    _check_signature(sandbox, request, _query(request), operation)
    try:
        agent, link = await agent_for(ctx, sid)
    except Exception as exc:  # ConnectError: the sandbox is not running
        raise FilesError(502, str(getattr(exc, "message", exc))) from None
    return agent, link, sid


def _remote_status(exc: RemoteError, path: str) -> FilesError:
    """envd's status for what the agent refused."""
    if exc.code == "unknown_user":
        return FilesError(401, f"error looking up user: {exc.message}")
    if exc.errno == "ENOENT":
        return FilesError(404, f"path '{path}' does not exist")
    if exc.errno in ("EISDIR", "ENOTDIR") or exc.code == "bad_request":
        return FilesError(400, exc.message)
    if exc.errno in ("ENOSPC", "EDQUOT"):
        return FilesError(507, f"not enough disk space available: {exc.message}")
    return FilesError(500, exc.message)


def _guest_failure(exc: BaseException, sid: str, link: Any, agent: AgentClient, path: str) -> FilesError:
    if isinstance(exc, RemoteError):
        return _remote_status(exc, path)
    if isinstance(exc, GuestError):
        link.lost(agent, exc)
        return FilesError(502, f"the connection to sandbox {sid} was lost: {one_line(exc)}")
    if isinstance(exc, TimeoutError):
        return FilesError(502, f"the agent of sandbox {sid} did not answer in time")
    raise exc


# --- download -------------------------------------------------------------------------------------------


def choose_encoding(accept: str | None) -> str | None:
    """envd's negotiation: ``gzip`` or ``identity``; None when the client refuses both (406)."""
    if not accept:
        return "identity"
    offers: list[tuple[float, str]] = []
    for raw in accept.split(","):
        name, _, params = raw.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        offers.append((quality, name.strip().lower()))
    identity_ok = not any(q == 0 and n == "identity" for q, n in offers)
    if any(q == 0 and n == "*" for q, n in offers) and not any(q > 0 and n == "identity" for q, n in offers):
        identity_ok = False
    for quality, name in sorted(offers, key=lambda o: -o[0]):  # stable: ties keep the client's order
        if quality == 0:
            continue
        if name == "identity":
            return "identity"
        if name == "*":
            return "identity" if identity_ok else "gzip"
        if name == "gzip":
            return "gzip"
    return "identity" if identity_ok else None


async def _download(ctx: E2bContext, request: Request, default_user: str) -> Response:
    query = _query(request)
    agent, link, sid = await _sandbox_agent(ctx, request, "read")
    user = _username(query, default_user)
    path = query.get("path", "") or "~"
    encoding = choose_encoding(request.headers.get("accept-encoding"))
    if encoding is None:
        raise FilesError(406, "no acceptable encoding found, supported: [gzip]")
    try:
        async with asyncio.timeout(link.budget(None)):
            download = await agent.open_file(path, user=user)
    except BaseException as exc:
        raise _guest_failure(exc, sid, link, agent, path) from exc
    name = download.info.path.rstrip("/").rsplit("/", 1)[-1] or "file"
    headers = {"Content-Disposition": _inline(name), "Vary": "Accept-Encoding"}
    if encoding == "gzip":
        headers["Content-Encoding"] = "gzip"
    else:
        headers["Content-Length"] = str(download.info.size)
    return StreamingResponse(
        _body(download, encoding == "gzip", link.budget(None)),
        media_type="application/octet-stream",
        headers=headers,
    )


def _inline(name: str) -> str:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    if quoted.isascii() and quoted.isprintable():
        return f'inline; filename="{quoted}"'
    from urllib.parse import quote

    return f"inline; filename*=utf-8''{quote(name)}"


class DownloadCut(Exception):
    """The guest stopped sending before the whole file was out: the response is aborted (a client
    sees a broken transfer, never a short file that looks complete)."""


async def _body(download: Download, gzip: bool, stall: float) -> AsyncIterator[bytes]:
    """The file's chunks, gzip-compressed when asked. Without gzip exactly the ``Content-Length``
    announced (the size the guest reported when it opened the file, as envd's ServeContent sends the
    size it stat'ed): a longer file is cut there, a shorter one (or a guest silent for ``stall`` seconds,
    or gone) aborts the response."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
    size = None if gzip else download.info.size
    sent = 0
    async with download:
        chunks = aiter(download)
        while size is None or sent < size:
            try:
                async with asyncio.timeout(stall):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except (GuestError, TimeoutError) as exc:
                raise DownloadCut(f"the guest stopped sending {download.info.path}: {exc}") from exc
            if size is not None:
                chunk = chunk[: size - sent]
            sent += len(chunk)
            if compressor is not None:
                chunk = compressor.compress(chunk)
                if not chunk:
                    continue
            yield chunk
    if size is not None and sent < size:
        raise DownloadCut(f"{download.info.path} shrank while it was sent ({sent} of {size} bytes)")
    if compressor is not None:
        yield compressor.flush()


# --- upload ---------------------------------------------------------------------------------------------


class _Inflater:
    """Request body chunks, gunzipped when the body is gzip-encoded (bounded output per step)."""

    def __init__(self, encoding: str | None) -> None:
        name = (encoding or "identity").strip().lower()
        if name not in ("identity", "gzip"):
            raise FilesError(400, f"unsupported Content-Encoding: {encoding}, supported: [gzip]")
        self._z = zlib.decompressobj(31) if name == "gzip" else None

    def feed(self, data: bytes) -> list[bytes]:
        if self._z is None:
            return [data] if data else []
        out: list[bytes] = []
        try:
            while data:
                piece = self._z.decompress(data, _INFLATE_STEP)
                if piece:
                    out.append(piece)
                data = self._z.unconsumed_tail
        except zlib.error as exc:
            raise FilesError(400, f"error decompressing request body: {exc}") from None
        return out

    def finish(self) -> None:
        if self._z is not None and not self._z.eof:
            raise FilesError(400, "error decompressing request body: unexpected end of gzip data")


async def _body_chunks(request: Request, inflater: _Inflater) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        for piece in inflater.feed(chunk):
            yield piece
    inflater.finish()


def _written(file: RemoteFile) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": file.path,
        "name": file.path.rstrip("/").rsplit("/", 1)[-1],
        "type": "file",
    }
    if file.metadata:
        out["metadata"] = file.metadata
    return out


def upload_metadata(request: Request) -> dict[str, str]:
    """``X-Metadata-<key>: <value>`` headers as envd reads them: key lowercased, the first value of a
    repeated header; checked as envd checks them (400 otherwise). Every upload sends its file's whole
    set, so an upload without such headers clears the file's metadata."""
    found: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        lowered = raw_name.decode("latin-1").lower()
        if lowered.startswith(METADATA_HEADER) and len(lowered) > len(METADATA_HEADER):
            found.setdefault(lowered[len(METADATA_HEADER) :], raw_value.decode("latin-1"))
    total = 0
    for key, text in found.items():
        if len(key) > _METADATA_MAX_KEY:
            raise FilesError(400, f"invalid metadata: key {key[:40]!r} exceeds {_METADATA_MAX_KEY} bytes")
        if not all(0x20 <= ord(c) <= 0x7E for c in key + text):
            raise FilesError(400, "invalid metadata: keys and values must be printable US-ASCII")
        total += len(_METADATA_PREFIX) + len(key) + len(text)
    if total > _METADATA_MAX_TOTAL:
        raise FilesError(
            400, f"invalid metadata: total metadata size {total} exceeds {_METADATA_MAX_TOTAL} bytes"
        )
    return found


async def _upload(ctx: E2bContext, request: Request, default_user: str) -> Response:
    query = _query(request)
    agent, link, sid = await _sandbox_agent(ctx, request, "write")
    user = _username(query, default_user)
    metadata = upload_metadata(request)
    inflater = _Inflater(request.headers.get("content-encoding"))
    media, params = parse_options_header(request.headers.get("content-type", ""))
    path = query.get("path")
    if media == b"application/octet-stream":
        if not path:
            raise FilesError(400, "path query parameter is required for raw body upload")
        try:
            file = await agent.write_file(
                _body_chunks(request, inflater), path, user=user, inplace=True, mkdirs=True, metadata=metadata
            )
        except FilesError:
            raise
        except BaseException as exc:
            raise _guest_failure(exc, sid, link, agent, path) from exc
        return JSONResponse([_written(file)])
    if media.startswith(b"multipart/"):
        boundary = params.get(b"boundary")
        if not boundary:
            raise FilesError(400, "error parsing multipart form: no boundary")
        written = await _multipart(request, inflater, boundary, agent, user, path, metadata)
        return JSONResponse([_written(f) for f in written])
    raise FilesError(
        400,
        f"unsupported content type: {media.decode('latin-1')[:80]}, "
        "expected multipart/form-data or application/octet-stream",
    )


class _PartUpload:
    """One ``file`` part on its way to the agent: the parser's data goes through a small queue to an
    upload task, so a slow guest slows the client down instead of filling the host's memory."""

    def __init__(self, agent: AgentClient, target: str, user: str, metadata: dict[str, str]) -> None:
        self.target = target
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(_PART_QUEUE_CHUNKS)
        self._task = asyncio.ensure_future(
            agent.write_file(self._chunks(), target, user=user, inplace=True, mkdirs=True, metadata=metadata)
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def _put(self, item: bytes | None) -> None:
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():  # the upload ended early (the agent refused): its error says why
            put.cancel()
            await self._task
            raise FilesError(500, f"the upload of '{self.target}' ended before its data did")

    async def feed(self, data: bytes) -> None:
        await self._put(data)

    async def finish(self) -> RemoteFile:
        await self._put(None)
        return await self._task

    async def abort(self) -> None:
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


async def _multipart(
    request: Request,
    inflater: _Inflater,
    boundary: bytes,
    agent: AgentClient,
    user: str,
    path: str | None,
    metadata: dict[str, str],
) -> list[RemoteFile]:
    """Stream each ``file`` part to the agent as it is parsed (other parts are skipped), one at a time,
    as envd does: a part that fails stops the upload (earlier ones stay written). A part's path is the
    ``path`` parameter, or else its file name (a full path: multipart does not strip directories here)."""
    events: list[tuple[str, bytes]] = []
    header = {"field": b"", "value": b""}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].lower() == b"content-disposition":
            events.append(("disposition", header["value"]))
        header["field"], header["value"] = b"", b""

    callbacks: Any = {
        "on_part_data": lambda data, start, end: events.append(("data", bytes(data[start:end]))),
        "on_part_end": lambda: events.append(("end", b"")),
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
    }
    parser = MultipartParser(boundary, callbacks)
    written: list[RemoteFile] = []
    seen: set[str] = set()
    current: _PartUpload | None = None
    try:
        async for chunk in request.stream():
            for piece in inflater.feed(chunk):
                try:
                    parser.write(piece)
                except Exception as exc:  # python-multipart's parse errors
                    raise FilesError(400, f"error reading form: {exc}") from None
                for kind, data in events:
                    if kind == "disposition":
                        current = _start_part(data, path, seen, agent, user, metadata)
                    elif kind == "data" and current is not None:
                        await current.feed(data)
                    elif kind == "end" and current is not None:
                        part, current = current, None
                        try:
                            written.append(await part.finish())
                        except RemoteError as exc:
                            raise _remote_status(exc, part.target) from exc
                events.clear()
        inflater.finish()
        if current is not None:
            raise FilesError(400, f"error reading form: the body ends inside the part for '{current.target}'")
    except GuestError as exc:
        raise FilesError(502, f"the connection to the sandbox was lost: {one_line(exc)}") from exc
    finally:
        if current is not None:
            await current.abort()
    if not written:
        raise FilesError(400, "no file part in the multipart form")
    return written


def _start_part(
    disposition: bytes,
    path: str | None,
    seen: set[str],
    agent: AgentClient,
    user: str,
    metadata: dict[str, str],
) -> _PartUpload | None:
    _, options = parse_options_header(disposition)
    if options.get(b"name") != b"file":
        return None  # envd ignores other form fields
    target = path or options.get(b"filename", b"").decode("utf-8", "replace")
    if not target:
        raise FilesError(400, "error getting multipart custom part file name: no file name")
    if target in seen:
        raise FilesError(
            400,
            f"you cannot upload multiple files to the same path '{target}' in one upload request, "
            "only the first specified file was uploaded",
        )
    seen.add(target)
    return _PartUpload(agent, target, user, metadata)
