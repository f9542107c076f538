"""A JetStream push consumer's deliveries, read straight off a socket of their own.

A feeder does nothing with a message but frame it or fold it, yet nats-py
spent about 15 µs of Python on each (its parser, a ``Msg``, a queue and a
callback): half the feeder's time in a catch-up. ``WireConsumer`` speaks the
few parts of the NATS client protocol a push consumer needs, on a blocking
socket: it subscribes to the consumer's deliver subject, answers the
server's pings and flow-control requests (and a stalled consumer's
heartbeat), and yields each delivery's stream sequence, subject and data.

It signs in as the client's settings do: a user and password or a token
from the URL, a credentials file (``connect_fields``: an nkey signs the
server's nonce), and TLS with the client's certificate when the server
requires it or the settings give one. For anything that goes wrong here the
feeder keeps to nats-py.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstate.engine._acks import delivery_sequence
from runstate.engine._credentials import connect_fields
from runstate.engine.errors import ConfigurationError

__all__ = ["Endpoint", "WireConsumer", "WireError", "new_inbox"]

#: bytes asked of the socket at a time
_READ = 1 << 20
_CRLF = b"\r\n"
#: the status line of flow-control requests and idle heartbeats
_STATUS_100 = b"NATS/1.0 100"
_STALLED = b"Nats-Consumer-Stalled:"


class WireError(Exception):
    """The server refused us, went quiet, or wrote what a push consumer does not get."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None
    token: str | None = None
    #: a credentials file runstate accepts (``connect_fields``)
    credentials: Path | None = None
    #: TLS, verifying the server (and presenting a client certificate, if it has one)
    tls: ssl.SSLContext | None = None

    @classmethod
    def of(cls, url: Any) -> Endpoint:
        """The endpoint of a parsed URL (nats-py's ``connected_url``)."""
        if url.username and not url.password:
            return cls(url.hostname, url.port or 4222, token=url.username)
        return cls(url.hostname, url.port or 4222, url.username, url.password)


class WireConsumer:
    """Subscribes to ``subject`` on a connection of its own and yields what is delivered there.

    Open it before the consumer that delivers to ``subject`` is created:
    the server drops deliveries to a subject nobody has subscribed to.
    """

    def __init__(self, endpoint: Endpoint, subject: str, *, quiet_limit: float = 30.0) -> None:
        self._endpoint = endpoint
        self._subject = subject.encode()
        self._quiet_limit = quiet_limit
        self._sock: socket.socket | _Tls | None = None
        self._buffer = b""
        #: flow-control requests answered
        self.flow_controls = 0

    def open(self) -> None:
        """Connect, subscribe, and return once the server has the subscription."""
        endpoint = self._endpoint
        try:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=5.0)
        except OSError as exc:
            raise WireError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc}") from None
        self._sock = sock
        sock.settimeout(self._quiet_limit)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        info = self._line()
        if not info.startswith(b"INFO "):
            raise WireError(f"the server did not introduce itself: {info[:80]!r}")
        server = json.loads(info[5:])
        if server.get("tls_required") or endpoint.tls is not None:
            self._upgrade(server)
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python-runstate-feeder",
            "version": "1",
            "name": "runstate-feeder-wire",
        }
        if endpoint.token is not None:
            options["auth_token"] = endpoint.token
        elif endpoint.user is not None:
            options["user"] = endpoint.user
            options["pass"] = endpoint.password
        if endpoint.credentials is not None:
            try:
                options.update(connect_fields(endpoint.credentials, server.get("nonce")))
            except ConfigurationError as exc:
                raise WireError(exc.message) from None
        self._send(
            b"CONNECT " + json.dumps(options).encode() + _CRLF
            + b"SUB " + self._subject + b" 1" + _CRLF
            + b"PING" + _CRLF
        )  # fmt: skip
        while (line := self._line()) != b"PONG":
            if line.startswith(b"-ERR"):
                raise WireError(
                    f"the server refused the connection: {line.decode(errors='replace')}"
                )

    def _upgrade(self, server: dict[str, Any]) -> None:
        """Go on over TLS (the server sends its ``INFO`` in the clear, then waits for it)."""
        endpoint, sock = self._endpoint, self._sock
        assert isinstance(sock, socket.socket)
        if endpoint.tls is None:
            raise WireError("the server requires TLS and the settings give no TLS files")
        if not server.get("tls_available", server.get("tls_required")):
            raise WireError("the settings ask for TLS and the server offers none")
        tls = _Tls(sock, endpoint.tls, endpoint.host)
        try:
            tls.handshake()
        except OSError as exc:  # ssl.SSLError included
            raise WireError(f"the TLS handshake failed: {exc}") from None
        self._sock = tls

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> WireConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def deliveries(self) -> Iterator[tuple[int, str, bytes]]:
        """(stream sequence, subject, data) of each delivery, for ever; ``WireError`` ends it."""
        sock = self._sock
        if sock is None:
            raise WireError("not open")
        buffer = self._buffer
        self._buffer = b""
        while True:
            try:
                chunk = sock.recv(_READ)
            except TimeoutError:
                raise WireError(
                    f"nothing from the server in {self._quiet_limit:g}s, not even a heartbeat"
                ) from None
            except OSError as exc:
                raise WireError(f"the connection failed: {exc}") from None
            if not chunk:
                raise WireError("the server closed the connection")
            buffer = buffer + chunk if buffer else chunk
            try:
                parsed, position = self._parse(buffer)
            except ValueError as exc:  # a reply subject that is not JetStream's
                raise WireError(str(exc)) from None
            buffer = buffer[position:]
            yield from parsed

    def _parse(self, buffer: bytes) -> tuple[list[tuple[int, str, bytes]], int]:
        """The deliveries whole in ``buffer``, and where the rest begins."""
        deliveries: list[tuple[int, str, bytes]] = []
        find = buffer.find
        end = len(buffer)
        position = 0
        while (eol := find(_CRLF, position)) >= 0:
            op = buffer[position : position + 4]
            if op == b"HMSG":
                args = buffer[position + 5 : eol].split(b" ")
                # HMSG <subject> <sid> [reply-to] <header bytes> <total bytes>
                reply = args[2] if len(args) == 5 else b""
                header_size = int(args[-2])
                stop = eol + 2 + int(args[-1])
                if stop + 2 > end:
                    break
                header = buffer[eol + 2 : eol + 2 + header_size]
                position = stop + 2
                if header.startswith(_STATUS_100):
                    self._control(header, reply)
                    continue
                deliveries.append(
                    (
                        delivery_sequence(reply.decode()),
                        args[0].decode(),
                        buffer[eol + 2 + header_size : stop],
                    )
                )
            elif op == b"MSG ":
                args = buffer[position + 4 : eol].split(b" ")
                # MSG <subject> <sid> [reply-to] <bytes>
                stop = eol + 2 + int(args[-1])
                if stop + 2 > end:
                    break
                reply = args[2] if len(args) == 4 else b""
                deliveries.append(
                    (delivery_sequence(reply.decode()), args[0].decode(), buffer[eol + 2 : stop])
                )
                position = stop + 2
            elif op == b"PING":
                self._send(b"PONG" + _CRLF)
                position = eol + 2
            elif op == b"PONG" or op == b"INFO" or op.startswith(b"+OK"):
                position = eol + 2
            elif op == b"-ERR":
                raise WireError(buffer[position:eol].decode(errors="replace"))
            else:
                raise WireError(f"not the NATS protocol: {buffer[position : position + 40]!r}")
        return deliveries, position

    def _control(self, header: bytes, reply: bytes) -> None:
        """Answer a flow-control request; wake a consumer whose heartbeat says it stalled."""
        if reply:  # a flow-control request: the reply lets the server send more
            self._send(b"PUB " + reply + b" 0" + _CRLF + _CRLF)
            self.flow_controls += 1
            return
        start = header.find(_STALLED)
        if start >= 0:
            stalled = header[start + len(_STALLED) : header.find(_CRLF, start)].strip()
            self._send(b"PUB " + stalled + b" 0" + _CRLF + _CRLF)

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise WireError(f"the connection failed: {exc}") from None

    def _line(self) -> bytes:
        """The next protocol line, before any delivery is read."""
        assert self._sock is not None
        while (eol := self._buffer.find(_CRLF)) < 0:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise WireError(f"the connection failed: {exc}") from None
            if not chunk:
                raise WireError("the server closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer[:eol], self._buffer[eol + 2 :]
        return line


class _Tls:
    """TLS over a blocking socket through memory buffers, for reading many small records.

    nats-server writes about one TLS record per delivery, and an ``ssl`` socket's
    ``recv`` returns one record at a time: some 500 bytes, where a plain socket
    gives a megabyte. ``recv`` here reads what the socket has (up to ``n`` bytes) into
    the TLS object's buffer and returns every record whole in it at once, so the
    reader parses a chunk of many deliveries, as it does in the clear.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, host: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)

    def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill(65536):
                    raise WireError(
                        "the server closed the connection during the TLS handshake"
                    ) from None
                continue
            self._flush()
            return

    def recv(self, n: int) -> bytes:
        """Plaintext: every whole record buffered, reading the socket (once) if there is none;
        b"" once the server closed the connection."""
        while True:
            parts = []
            try:
                while part := self._tls.read(n):
                    parts.append(part)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""
            self._flush()
            if parts:
                return b"".join(parts)
            if not self._fill(n):
                return b""

    def sendall(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def close(self) -> None:
        self._sock.close()

    def _fill(self, n: int) -> bool:
        data = self._sock.recv(n)
        if data:
            self._incoming.write(data)
        return bool(data)

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._sock.sendall(self._outgoing.read())


def new_inbox() -> str:
    return "_INBOX.runstate-feeder." + os.urandom(12).hex()
