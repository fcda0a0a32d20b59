"""A TCP proxy for browser tests: what the browser sends goes on at a bounded rate (so that an
upload takes seconds, not milliseconds, and can be cut part-way), and `cut()` drops every open
connection at once, as a network that fails would. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class ThrottlingProxy:
    def __init__(self, upstream_port: int, *, rate_bytes_per_s: int) -> None:
        self.upstream_port = upstream_port
        self.rate = rate_bytes_per_s
        self.sent_upstream = 0  # bytes the browser sent that went on
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThrottlingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shut() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self._loop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await reader.read(16384 if limit else 65536):
                if limit:
                    self.sent_upstream += len(data)
                    await asyncio.sleep(len(data) / self.rate)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, up_writer}
        try:
            await asyncio.gather(
                self._pump(client_reader, up_writer, True), self._pump(up_reader, client_writer, False)
            )
        finally:
            self._writers -= {client_writer, up_writer}

    def cut(self) -> None:
        """Drop every connection open now (new ones are served as before)."""

        def drop() -> None:
            for writer in list(self._writers):
                transport = writer.transport
                with contextlib.suppress(Exception):
                    transport.abort()

        self._loop.call_soon_threadsafe(drop)
        time.sleep(0.1)
