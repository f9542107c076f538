"""The ``http`` benchmark's clients: small HTTP/1.1 clients and the processes that run them.

The gateway runs in a process of its own (``_gateway``, as ``runstate web``
runs it); its clients run elsewhere, so that a figure is the gateway's and
not its client's: the reads in the benchmark's process, the SSE clients and
the writers in client processes of their own (``_sse``, ``_writers``), each
holding many connections. The clients are plain asyncio (a request in one
write, ``TCP_NODELAY``; an SSE client is a protocol that only looks for each
message's ``id``), so that a few of them keep up with a thousand streams on a
machine the gateway shares. Times are ``time.monotonic()``, one clock for
every process of the machine, so an arrival in a client process is compared
with an append in the benchmark's.

A client process talks to the benchmark in lines: it prints ``ready`` once
its connections are open, answers the commands it reads on stdin, and ends
when stdin closes.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = ["Answer", "Connection", "gateway_main", "sse_main", "writers_main"]


@dataclass(slots=True)
class Answer:
    """A response: its status, its headers (names in lower case) and its body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = _address(url)
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, f"{host}:{port}")

    async def request(
        self,
        method: str,
        target: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send a request (``body``: JSON) in one write; read its whole answer."""
        head = f"{method} {target} HTTP/1.1\r\nHost: {self._host}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        data = b""
        if body is not None:
            data = orjson.dumps(body)
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + data)
        return await self._answer()

    async def _answer(self) -> Answer:
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await self._reader.readuntil(b"\r\n")).strip(), 16):
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            await self._reader.readuntil(b"\r\n")
            body = b"".join(parts)
        else:
            body = b""
        return Answer(status, headers, body)

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


# -- SSE clients --------------------------------------------------------------------


_ID = b"\nid: "


class _Stream(asyncio.Protocol):
    """An SSE stream read only for its messages' ids: ``arrived(self, id, time)`` for each.

    Each message is a line ``id: N`` after a newline (the one ending the
    line before it, or a chunk's size), and a message's JSON has no raw
    newline, so a scan for ``\\nid: `` finds exactly the messages.
    """

    def __init__(self, request: bytes, arrived: Callable[[_Stream, int, float], None]) -> None:
        self._request = request
        self._arrived = arrived
        self._tail = b""
        self.transport: asyncio.BaseTransport | None = None
        self.opened = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        at = time.monotonic()
        buffer = self._tail + data if self._tail else data
        start = buffer.find(_ID)
        keep = max(0, len(buffer) - len(_ID) + 1)
        while start >= 0:
            end = buffer.find(b"\n", start + len(_ID))
            if end < 0:
                keep = start
                break
            self._arrived(self, int(buffer[start + len(_ID) : end]), at)
            keep = max(keep, end)
            start = buffer.find(_ID, end)
        self._tail = buffer[keep:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a client process's ``main`` on uvloop when it is installed (the ``web`` extra
    installs it): the clients' own cost, kept small beside the gateway they measure."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _commands() -> asyncio.StreamReader:
    """stdin as a stream of command lines."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _sse(url: str, pathspec: str, count: int) -> None:
    """``count`` streams of ``/api/v1/watch/<pathspec>``: ``have N`` once every one has
    message N; ``report``: every later message's arrival times, as JSON."""
    host, port = _address(url)
    request = (
        f"GET /api/v1/watch/{pathspec} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    arrivals: dict[int, list[float]] = {}
    opened = 0
    all_open = asyncio.Event()

    def arrived(stream: _Stream, seq: int, at: float) -> None:
        nonlocal opened
        if not stream.opened:  # the snapshot
            stream.opened = True
            opened += 1
            if opened == count:
                all_open.set()
            return
        times = arrivals.setdefault(seq, [])
        times.append(at)
        if len(times) == count:
            _say(f"have {seq}")

    loop = asyncio.get_running_loop()
    streams: list[_Stream] = []
    for _ in range(count):
        stream = _Stream(request, arrived)
        await loop.create_connection(lambda s=stream: s, host, port)  # type: ignore[misc]
        streams.append(stream)
    await all_open.wait()
    _say("ready")
    commands = await _commands()
    while line := await commands.readline():
        if line.strip() == b"report":
            _say(orjson.dumps({str(k): v for k, v in arrivals.items()}).decode())
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()


def sse_main(argv: Sequence[str]) -> None:
    """``python -m runstate.client.cli._bench _sse URL PATHSPEC COUNT``."""
    url, pathspec, count = argv
    _run(_sse(url, pathspec, int(count)))


# -- writers -------------------------------------------------------------------------


async def _writers(url: str, connections: int, per_connection: int, per_run: int) -> None:
    """Writers that speak only HTTP, one per connection, each as a worker of its own runs.

    ``round NAME``: on each connection, create ``per_connection`` tasks of
    step NAME in running runs of ``per_run`` tasks each, created for them
    (not timed), then ``prepared``; ``go``: each writer moves its tasks
    running then completed (``If-Match``: the ETag of the answer before),
    then ``done T0 T1 N`` (monotonic times and transitions).
    """
    conns = [await Connection.open(url) for _ in range(connections)]
    tasks: list[list[tuple[str, str]]] = []

    async def new_run(conn: Connection) -> str:
        answer = await conn.request("POST", "/api/v1/runs", {"flow": "Train", "tags": ["http"]})
        assert answer.status == 201, answer.body
        run = str(answer.json()["pathspec"])  # type: ignore[index]
        await conn.request(
            "POST", f"/api/v1/runs/{run}/transitions", {"state": "running"}, {"If-Match": "*"}
        )
        return run

    async def create(conn: Connection, step: str) -> list[tuple[str, str]]:
        mine = []
        run = ""
        for i in range(per_connection):
            if i % per_run == 0:
                run = await new_run(conn)
            answer = await conn.request(
                "POST", f"/api/v1/runs/{run}/tasks", {"step": step, "task_id": str(i)}
            )
            assert answer.status == 201, answer.body
            flow, run_id, step_name, task_id = answer.json()["pathspec"].split("/")  # type: ignore[index]
            target = f"/api/v1/runs/{flow}/{run_id}/steps/{step_name}/tasks/{task_id}/transitions"
            mine.append((target, answer.headers["etag"]))
        return mine

    async def write(conn: Connection, mine: list[tuple[str, str]]) -> None:
        for target, version in mine:
            for state in ("running", "completed"):
                answer = await conn.request(
                    "POST", target, {"state": state}, headers={"If-Match": version}
                )
                if answer.status != 200:
                    raise RuntimeError(f"{target}: {answer.status} {answer.body!r}")
                version = answer.headers["etag"]

    _say("ready")
    commands = await _commands()
    while line := await commands.readline():
        command, _, arg = line.decode().strip().partition(" ")
        if command == "round":
            tasks = list(await asyncio.gather(*(create(conn, arg) for conn in conns)))
            _say("prepared")
        elif command == "go":
            started = time.monotonic()
            pairs = zip(conns, tasks, strict=True)
            await asyncio.gather(*(write(conn, mine) for conn, mine in pairs))
            ended = time.monotonic()
            _say(f"done {started!r} {ended!r} {2 * sum(len(mine) for mine in tasks)}")
    for conn in conns:
        await conn.aclose()


def writers_main(argv: Sequence[str]) -> None:
    """``python -m runstate.client.cli._bench _writers URL CONNECTIONS PER_CONNECTION PER_RUN``."""
    url, connections, per_connection, per_run = argv
    _run(_writers(url, int(connections), int(per_connection), int(per_run)))


# -- the gateway ---------------------------------------------------------------------


def gateway_main(argv: Sequence[str]) -> None:
    """``python -m runstate.client.cli._bench _gateway URL PREFIX DATA_DIR CREDENTIALS``:
    the gateway alone, as ``runstate web --nats URL --no-auth`` runs it (with the writer's
    NATS credentials, or none: an empty CREDENTIALS); prints ``ready`` and its URL; stops
    at the end of stdin."""
    from pathlib import Path

    from runstate.client.cli._bench._harness import child_connection
    from runstate.client.cli._web import run_gateway
    from runstate.engine._logging import configure_logging
    from runstate.engine._settings import Settings

    configure_logging("info", force=True)  # as runstate web; its stderr goes to a file
    url, prefix, data_dir, credentials = argv
    settings = Settings(
        nats_url=url, prefix=prefix, data_dir=Path(data_dir), **child_connection(credentials)
    )

    def ready(address: str) -> None:
        _say("ready")
        _say(address)

    # its clients' keep-alive connections wait while the other half of a paired run takes
    # its turns (the other's set-up alone takes half a minute): keep them open meanwhile
    run_gateway(
        settings, "127.0.0.1", 0, lambda url, _: ready(url), until_eof=True, idle_timeout=3600
    )
