"""The socket under runstate's NATS connections: nats-py's TCP transport, with TLS in memory.

nats-py reads and writes through asyncio streams, and over TLS through asyncio's
SSL protocol, which passes every record through a chain of Python calls and asks
the TLS object for more until it raises. On a small request and its reply that
costs more than the encryption: ~50 µs of a ~400 µs round trip on this project's
machine, against ~2 µs of cipher. This transport keeps the same contract (the
methods of ``nats.aio.transport.Transport``) on one protocol object: plain bytes
go to a buffer as they come; over TLS each delivery is decrypted record by record
through memory buffers (``ssl.MemoryBIO``), every whole record at once, and each
write is one encryption and one socket write.

``open_nats`` gives it to the connections it makes (``nats://`` and ``tls://``
URLs; WebSocket ones keep nats-py's own).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import cast
from urllib.parse import ParseResult

from nats.aio.transport import Transport

__all__ = ["MemoryTlsTransport"]


class _Stream(asyncio.Protocol):
    """One TCP connection's bytes, decrypted once ``start_tls`` has run."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._handshaken = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is one without subclassing asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._tls is None:
            self.buffer += data
        else:
            self._incoming.write(data)
            if self._handshaken:
                self._decrypt()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    # -- reading -----------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until something more arrives (or the connection ends)."""
        if self.error is not None:
            raise self.error
        if self.eof:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _decrypt(self) -> None:
        """Every whole record buffered, decrypted into ``buffer``."""
        tls = self._tls
        assert tls is not None
        incoming = self._incoming
        try:
            # The TLS object takes a record's bytes from ``incoming`` only as it decrypts
            # it (no read-ahead), so once ``incoming`` is empty nothing whole is left:
            # asking again would only raise SSLWantReadError, costly on every delivery.
            while incoming.pending or tls.pending():
                data = tls.read(65536)
                if not data:  # the server's close_notify
                    self.eof = True
                    break
                self.buffer += data
        except ssl.SSLWantReadError:
            pass  # a partial record (its rest comes with the next bytes), or a session ticket
        except ssl.SSLZeroReturnError:
            self.eof = True
        except ssl.SSLError as exc:  # an alert: the server refused us, or the record is bad
            self.error = exc
            if self.transport is not None:
                self.transport.close()
        self._flush()

    # -- writing -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None  # set before create_connection returns
        if self._tls is None:
            self.transport.write(data)
            return
        self._tls.write(data)
        self._flush()

    def _flush(self) -> None:
        if self._outgoing.pending and self.transport is not None:
            self.transport.write(self._outgoing.read())

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            if self.error is not None:
                raise self.error
            if self.eof or self.transport is None:
                raise ConnectionResetError("the connection to NATS was lost")
        if self._paused is not None and not self._paused.done():
            await self._paused

    async def closed(self) -> None:
        await self._closed

    # -- TLS ---------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, hostname: str | None) -> None:
        """Upgrade the connection: the handshake, then every read and write is TLS."""
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        if self.buffer:  # the server wrote nothing after INFO; bytes here are the handshake's
            self._incoming.write(bytes(self.buffer))
            self.buffer.clear()
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if self.eof or self.error is not None:
                    raise self.error or ConnectionResetError(
                        "NATS closed the connection during the TLS handshake"
                    ) from None
                await self.wait()
                continue
            break
        self._handshaken = True
        self._decrypt()


class MemoryTlsTransport(Transport):
    """nats-py's ``Transport`` for TCP, its TLS done through memory buffers (see module)."""

    def __init__(self) -> None:
        self._stream: _Stream | None = None

    async def connect(self, uri: ParseResult, buffer_size: int, connect_timeout: int) -> None:
        loop = asyncio.get_running_loop()
        stream = _Stream()
        if uri.hostname is None:  # an OSError: nats-py tries the next server
            raise OSError(f"no host in the NATS URL {uri.geturl()}")
        await asyncio.wait_for(
            loop.create_connection(lambda: stream, uri.hostname, uri.port or 4222),
            connect_timeout,
        )
        self._stream = stream

    async def connect_tls(
        self,
        uri: str | ParseResult,
        ssl_context: ssl.SSLContext,
        buffer_size: int,
        connect_timeout: int,
    ) -> None:
        stream = self._stream
        assert stream is not None, "connect() first"
        hostname = uri if isinstance(uri, str) else uri.hostname
        await asyncio.wait_for(stream.start_tls(ssl_context, hostname), connect_timeout)

    def write(self, payload: bytes) -> None:
        if self._stream is not None:  # else never connected: nothing to write to, as closed
            self._stream.write(payload)

    def writelines(self, payload: Sequence[bytes]) -> None:
        if self._stream is not None:
            self._stream.write(b"".join(payload))

    async def read(self, buffer_size: int) -> bytes:
        stream = self._stream
        assert stream is not None
        while not stream.buffer:
            if stream.error is not None:
                raise stream.error
            if stream.eof:
                return b""
            await stream.wait()
        if len(stream.buffer) <= buffer_size:
            data = bytes(stream.buffer)
            stream.buffer.clear()
        else:
            data = bytes(stream.buffer[:buffer_size])
            del stream.buffer[:buffer_size]
        return data

    async def readline(self) -> bytes:
        stream = self._stream
        assert stream is not None
        while (end := stream.buffer.find(b"\n")) < 0:
            if stream.error is not None:
                raise stream.error
            if stream.eof:
                data = bytes(stream.buffer)
                stream.buffer.clear()
                return data
            await stream.wait()
        line = bytes(stream.buffer[: end + 1])
        del stream.buffer[: end + 1]
        return line

    async def drain(self) -> None:
        if self._stream is not None:
            await self._stream.drain()

    async def wait_closed(self) -> None:
        if self._stream is not None:
            await self._stream.closed()

    def close(self) -> None:
        if self._stream is not None and self._stream.transport is not None:
            self._stream.transport.close()

    def at_eof(self) -> bool:
        stream = self._stream
        return stream is None or (stream.eof and not stream.buffer)

    def __bool__(self) -> bool:
        # nats-py makes a transport of its own when the one it has is false: this one
        # is there from the start, connected or not
        return True
