"""A loopback TCP port that relays every connection to a unix socket: how a client that only speaks TCP
(the E2B SDK, whose transport cannot dial a unix socket) reaches a server running in a test's network
namespace, whose unix sockets are reachable from outside it while its TCP ports are not.

A plain byte relay (no parsing, no HTTP): whatever the client sends reaches the server unchanged, so
the server under test is still the real thing end to end. It runs in its own thread and event loop and
closes every connection when stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.contextmanager
def tcp_to_unix(path: Path) -> Iterator[int]:
    """Yield a port on 127.0.0.1 relaying to the unix socket ``path`` until the block ends."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_unix_connection(str(path))
        except OSError:
            client_w.close()
            return
        both = [
            asyncio.ensure_future(_pipe(client_r, server_w)),
            asyncio.ensure_future(_pipe(server_r, client_w)),
        ]
        await asyncio.gather(*both)

    def track(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = loop.create_task(relay(r, w))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def main() -> asyncio.AbstractServer:
        server = await asyncio.start_server(track, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        return server

    thread = threading.Thread(target=loop.run_forever, name="tcp-to-unix", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(main(), loop).result(10)
    started.wait(10)
    try:
        yield ready[0]
    finally:

        async def stop() -> None:
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
