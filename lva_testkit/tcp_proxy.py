"""A TCP proxy the test controls: the network between an agent and its database, cut at will.

``cut()`` makes the link go silent, the nasty kind of partition: bytes stop flowing both ways
on open connections and new connections are accepted but never answered, so the client learns
nothing until its own timeouts fire. ``restore()`` resets the silent connections (as a network
that comes back after the peers' state is gone) and forwards new ones again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from lva_testkit.ports import LOOPBACK


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._cut = threading.Event()
        self._connections: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result()
        return self

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        async def reset() -> None:
            for writer in list(self._connections):
                writer.transport.abort()
            self._connections.clear()

        asyncio.run_coroutine_threadsafe(reset(), self._loop).result()
        self._cut.clear()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        while self._cut.is_set():  # accepted, never answered
            await asyncio.sleep(0.05)
            if writer not in self._connections:
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._connections.add(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                while self._cut.is_set():  # silent: hold the bytes, send nothing
                    await asyncio.sleep(0.05)
                    if writer not in self._connections:
                        return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
