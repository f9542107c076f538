"""Connecting to NATS and provisioning the streams runstate needs."""

from __future__ import annotations

import asyncio
import ssl
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType

from runstate.engine._batches import SideStream
from runstate.engine._credentials import connection_options
from runstate.engine._lines import lines_side
from runstate.engine._logging import get_logger
from runstate.engine._names import Subjects
from runstate.engine._nats_transport import MemoryTlsTransport
from runstate.engine._points import points_side
from runstate.engine._refusals import refusable, refusals_of
from runstate.engine._retry import TRANSIENT_CODES, TransientRefusal, retry, transient_api_error
from runstate.engine._roles import USER_INFO, stream_names
from runstate.engine._settings import Settings
from runstate.engine._tls_files import client_tls_context
from runstate.engine.errors import (
    ConfigurationError,
    JetStreamDisabled,
    PermissionDenied,
    RunstateError,
    ServerTooOld,
    StreamsMissing,
    Unavailable,
)

__all__ = [
    "MIN_SERVER_VERSION",
    "authenticated_user",
    "check_provisioned",
    "on_disconnect",
    "open_nats",
    "provision",
    "provision_server",
    "require_asyncio",
]

log = get_logger("runstate.connection")

MIN_SERVER_VERSION = (2, 11, 0)

#: the URL schemes nats-py connects with
_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
#: the schemes of a TCP connection (``MemoryTlsTransport``); WebSocket ones are nats-py's
_TCP_SCHEMES = frozenset({"nats", "tls"})


def _scheme(server: str) -> str:
    return urlsplit(server).scheme if "://" in server else "nats"


#: what a server answers to a wrong user, password, token or credentials, lower-cased
_AUTHORIZATION_VIOLATION = "authorization violation"

#: TLS handshake failures that trying again cannot mend, by OpenSSL's reason, with what to do
_TLS_REFUSALS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server asks for a client certificate: give "
    "tls_cert and tls_key (RUNSTATE_TLS_CERT, RUNSTATE_TLS_KEY)",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate's CA: use a "
    "certificate signed by the CA in its tls block",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server refused the client certificate as expired",
    "TLSV1_ALERT_ACCESS_DENIED": "the server refused the client certificate",
    "CERTIFICATE_VERIFY_FAILED": "the server's certificate is not one this client trusts: "
    "give the CA that signed it as tls_ca (RUNSTATE_TLS_CA)",
}

#: "no suitable peers for placement": while a cluster starts, a node that has not joined
#: yet cannot hold a replica, so provisioning asks again within the retry budget
_NO_PEERS_YET = 10005


#: what to call when a connection made by ``open_nats`` loses its server (``on_disconnect``)
_disconnect_listeners: weakref.WeakKeyDictionary[NATS, set[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def on_disconnect(nc: NATS, listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` when ``nc`` next loses its server; return what stops listening.

    A request in flight then has no answer coming (its reply went to the lost
    node): a read asks again once the connection is back (``NatsQueries``).
    Only connections made by ``open_nats`` tell; on others it is never called.
    """
    listeners = _disconnect_listeners.setdefault(nc, set())
    listeners.add(listener)
    return lambda: listeners.discard(listener)


def require_asyncio(what: str) -> None:
    """Raise ``ConfigurationError`` unless this runs on an asyncio event loop.

    nats-py, under every connection, runs on asyncio only: under trio it
    would fail deep inside with "no running event loop". Checked before
    anything starts, so nothing is left half-made (no coroutine never awaited).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    runtime = "no asyncio event loop"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            runtime = "trio"
        except RuntimeError:
            pass
    raise ConfigurationError(
        f"{what} needs asyncio (nats-py runs on asyncio only), and this is {runtime}: "
        "run it with anyio.run(main) or asyncio.run(main()), or use the blocking facade "
        "runstate.client.compat, which works from any thread and any runtime"
    )


async def open_nats(
    settings: Settings, url: str | None = None, *, name: str = "runstate", jetstream: bool = True
) -> NATS:
    """Connect to NATS, check the server is 2.11+ with JetStream, and return the connection.

    ``url`` overrides ``settings.nats_url`` (one URL, or several separated by commas).
    ``jetstream=False``: a connection that never calls JetStream (the query service's in
    the clients' account, whose user may not) does not ask whether it is ready.
    The first connect keeps trying for ``settings.retry_budget`` seconds; once
    connected the connection reconnects forever and writes retry within the budget.
    Raises ``Unavailable`` (cannot connect), ``ServerTooOld``, ``JetStreamDisabled``, or
    ``ConfigurationError`` (not a NATS URL, a missing TLS or credentials file, credentials
    the server refuses: final, not retried).
    """
    require_asyncio("runstate's NATS connection")
    target = url or settings.nats_url
    if not target:
        raise ConfigurationError("no NATS URL: pass url= or set RUNSTATE_NATS_URL")
    servers = [part.strip() for part in target.split(",") if part.strip()]
    for server in servers:
        scheme = _scheme(server)
        if scheme not in _NATS_SCHEMES:
            raise ConfigurationError(
                f"{server} is not a NATS URL: the scheme {scheme}:// is not one NATS speaks; "
                "give nats://HOST:PORT (or tls://, ws://, wss://)"
            )
    for what, path in (
        ("credentials file", settings.credentials),
        ("TLS CA file", settings.tls_ca),
        ("TLS certificate file", settings.tls_cert),
        ("TLS key file", settings.tls_key),
    ):
        if path is not None and not path.is_file():
            raise ConfigurationError(f"the {what} {path} does not exist (or is not a file)")

    errors: list[Exception] = []  # the last one explains a failed first connect
    connecting = True
    nc = NATS()
    if all(_scheme(server) in _TCP_SCHEMES for server in servers):
        # nats-py connects through the transport it holds (its own when it holds none)
        nc._transport = MemoryTlsTransport()
    refusals = refusals_of(nc)

    async def _on_error(exc: Exception) -> None:
        if refusals.report(str(exc)):
            # not fatal: the operation that waits on it raises PermissionDenied
            log.info("nats.permission_violation", error=str(exc))
            return
        errors[:] = [exc]
        log.debug("nats.error", error=str(exc))
        if connecting and _AUTHORIZATION_VIOLATION in str(exc).lower():
            # final: raised out of nc.connect(), which awaits this callback
            raise ConfigurationError(
                f"NATS at {target} refused the credentials (authorization violation); "
                "check the user and password, token or credentials file"
            )
        refusal = _TLS_REFUSALS.get(getattr(exc, "reason", None) or "")
        if connecting and isinstance(exc, ssl.SSLError) and refusal is not None:
            # final too: the same certificates fail the same way however often they try
            raise ConfigurationError(f"TLS with NATS at {target} failed: {refusal} ({exc})")

    async def _on_disconnect() -> None:
        log.debug("nats.disconnected")
        for listener in list(_disconnect_listeners.get(nc, ())):
            listener()

    async def _on_reconnect() -> None:
        log.info("nats.reconnected")

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "error_cb": _on_error,
        "disconnected_cb": _on_disconnect,
        "reconnected_cb": _on_reconnect,
    }
    if settings.credentials is not None:
        options.update(connection_options(settings.credentials))
    if settings.token is not None:
        options["token"] = settings.token
    tls = client_tls_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
    if tls is not None:
        options["tls"] = tls
    try:
        # With max_reconnect_attempts=-1 nats-py retries the first connect forever
        # too; bound it by the retry budget so a wrong URL fails instead of hanging.
        with anyio.fail_after(settings.retry_budget):
            await nc.connect(**options)
        connecting = False
    except ConfigurationError:
        with anyio.move_on_after(2):  # a TLS handshake refused mid-way can leave close() waiting
            await nc.close()
        raise
    except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
        await nc.close()
        cause = errors[-1] if errors else exc
        raise Unavailable(
            f"cannot connect to NATS at {target} within {settings.retry_budget:g}s: "
            f"{str(cause) or type(cause).__name__}; is the server running? "
            "(runstate server starts one)"
        ) from None
    try:
        await _check_server(nc, settings.retry_budget, jetstream=jetstream)
    except BaseException:
        await nc.close()
        raise
    return nc


def _parse_version(text: str) -> tuple[int, int, int]:
    core = text.split("-", 1)[0]
    parts = [int(p) for p in core.split(".")[:3] if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


async def _check_server(nc: NATS, budget: float, *, jetstream: bool = True) -> None:
    shown_version = repr(nc.connected_server_version)  # "<nats server v2.15.1>"
    version = _parse_version(shown_version.removeprefix("<nats server v").rstrip(">"))
    if version < MIN_SERVER_VERSION:
        shown = ".".join(map(str, version))
        raise ServerTooOld(
            f"NATS server {shown} is too old: runstate needs 2.11 or newer "
            "(for the wildcard expected-subject-sequence header); upgrade nats-server"
        )
    if jetstream:
        await _patiently(budget, "JetStream is not ready", lambda: _jetstream_info(nc))


async def _jetstream_info(nc: NATS) -> None:
    try:
        with refusable(nc, "ask JetStream whether it is ready", "$JS.API.INFO"):
            reply = await nc.request("$JS.API.INFO", b"", timeout=2)
    except nats.errors.NoRespondersError:
        raise JetStreamDisabled(
            "JetStream is not enabled on this NATS server; start it with -js "
            "or add a jetstream block to its config"
        ) from None
    except nats.errors.TimeoutError:
        raise TransientRefusal(
            "the NATS server did not answer a JetStream request within 2s"
        ) from None
    error = orjson.loads(reply.data).get("error")
    if error is None:
        return
    if not transient_api_error(error):
        raise JetStreamDisabled(f"JetStream is not available: {error.get('description')}")
    raise TransientRefusal(f"JetStream is not available yet: {error.get('description')}")


async def _patiently(budget: float, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
    """Run ``attempt`` until it stops failing transiently; ``Unavailable`` after ``budget`` s.

    A cluster that has just started (or lost its leader) answers late, or
    "temporarily unavailable", until it has elected its JetStream leaders.
    """

    def give_up(exc: BaseException) -> Unavailable:
        return Unavailable(f"{what} after {budget:g}s: {exc}")

    await retry(
        attempt,
        budget=budget,
        give_up=give_up,
        transient=(TransientRefusal, Unavailable),
        first_delay=0.1,
        max_delay=2.0,
        what=what,
    )


async def jetstream_api(
    nc: NATS,
    subject: str,
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - a per-request timeout, as nc.request takes
) -> dict[str, Any]:
    """Call a JetStream API subject with a JSON body and return the decoded reply."""
    payload = orjson.dumps(body) if body is not None else b""
    try:
        reply = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise JetStreamDisabled("JetStream did not answer; is it enabled on this server?") from None
    except nats.errors.TimeoutError:
        raise Unavailable(f"JetStream did not answer {subject} within {timeout}s") from None
    result: dict[str, Any] = orjson.loads(reply.data)
    return result


def stream_configs(settings: Settings) -> list[dict[str, Any]]:
    """The stream configurations runstate needs, as JetStream API JSON."""
    subjects = Subjects(settings.prefix)
    window_ns = int(settings.duplicate_window * 1e9)
    common = {"storage": "file", "num_replicas": settings.replicas, "retention": "limits"}

    def side_stream(side: SideStream, max_age: float) -> dict[str, Any]:
        age_ns = int(max_age * 1e9)
        return {
            **common,
            "name": side.name,
            "subjects": [side.subjects],
            # JetStream wants the duplicate window within the age limit
            "duplicate_window": min(window_ns, age_ns) if age_ns else window_ns,
            "max_age": age_ns,
            "allow_direct": True,
            "discard": "old",
            "max_consumers": settings.max_consumers,
        }

    return [
        {
            **common,
            "name": subjects.events_stream,
            "subjects": [subjects.all_events],
            "duplicate_window": window_ns,
            "allow_direct": True,
            "allow_atomic": True,
            "discard": "new",
            "max_consumers": settings.max_consumers,
        },
        side_stream(points_side(settings.prefix), settings.metrics_max_age),
        side_stream(lines_side(settings.prefix), settings.logs_max_age),
        {
            **common,
            "name": subjects.heartbeats_stream,
            "subjects": [subjects.all_heartbeats],
            "max_msgs_per_subject": 1,
            "allow_direct": True,
            "discard": "old",
        },
        {
            **common,
            "name": subjects.counters_stream,
            "subjects": [subjects.all_counters],
            "allow_msg_counter": True,
            "duplicate_window": window_ns,
            "allow_direct": True,
        },
        {
            **common,
            "name": subjects.deadletter_stream,
            "subjects": [subjects.all_deadletters],
            "allow_direct": True,
        },
    ]


async def _ensure_stream(nc: NATS, config: dict[str, Any]) -> None:
    name = config["name"]
    reply = await jetstream_api(nc, f"$JS.API.STREAM.CREATE.{name}", config)
    error = reply.get("error")
    if error is None:
        return
    if error.get("err_code") == 10058:  # exists with a different configuration
        reply = await jetstream_api(nc, f"$JS.API.STREAM.UPDATE.{name}", config)
        error = reply.get("error")
        if error is None:
            return
    if transient_api_error(error) or error.get("err_code") == _NO_PEERS_YET:
        raise TransientRefusal(f"{error.get('description')} (code {error.get('err_code')})")
    raise RunstateError(
        f"cannot create stream {name}: {error.get('description')} (code {error.get('err_code')})"
    )


async def _ensure_buckets(nc: NATS, settings: Settings) -> None:
    subjects = Subjects(settings.prefix)
    js = nc.jetstream()
    try:
        await js.create_key_value(
            KeyValueConfig(
                bucket=subjects.idempotency_bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=settings.replicas,
            )
        )
        await js.create_object_store(
            subjects.blobs_bucket,
            ObjectStoreConfig(storage=StorageType.FILE, replicas=settings.replicas),
        )
    except nats.js.errors.ServiceUnavailableError as exc:
        raise TransientRefusal(str(exc)) from None
    except nats.js.errors.APIError as exc:
        if exc.err_code in TRANSIENT_CODES or exc.err_code == _NO_PEERS_YET:
            raise TransientRefusal(str(exc.description)) from None
        raise RunstateError(f"cannot create buckets: {exc.description}") from None
    except nats.errors.TimeoutError:
        raise TransientRefusal("JetStream did not answer in time") from None


async def provision(nc: NATS, settings: Settings) -> None:
    """Create the streams, key-value and object buckets runstate uses; idempotent.

    An admin action (issue 17): only the admin role may create or update
    streams, so another role gets ``PermissionDenied`` at once. A cluster
    that is still electing its leaders (it times out, or says JetStream is
    temporarily unavailable) is asked again for up to
    ``settings.retry_budget`` seconds; then ``Unavailable``.
    """

    async def attempt() -> None:
        with refusable(nc, "provision runstate's streams (an admin action)", "$JS.API.STREAM.>"):
            for config in stream_configs(settings):
                await _ensure_stream(nc, config)
            await _ensure_buckets(nc, settings)

    await _patiently(
        settings.retry_budget, "JetStream is not ready for runstate's streams", attempt
    )
    log.debug("provisioned", prefix=settings.prefix, replicas=settings.replicas)


async def provision_server(settings: Settings) -> None:
    """Connect to ``settings.nats_url``, provision, and disconnect (``runstate provision``)."""
    nc = await open_nats(settings, name="runstate-provision")
    try:
        await provision(nc, settings)
    finally:
        await nc.close()


#: "stream not found"
_STREAM_NOT_FOUND = 10059


async def check_provisioned(nc: NATS, settings: Settings) -> None:
    """Check that every stream and bucket runstate uses exists; ``StreamsMissing`` if not.

    What a client that is not the admin does instead of provisioning: it
    needs only the right to read the streams' info, and it says which are
    missing and how to create them rather than creating them.
    """
    names = list(stream_names(settings.prefix).values())

    async def attempt() -> list[str]:
        missing = []
        with refusable(nc, "check that runstate's streams exist", "$JS.API.STREAM.INFO.>"):
            for name in names:
                reply = await jetstream_api(nc, f"$JS.API.STREAM.INFO.{name}")
                error = reply.get("error")
                if error is None:
                    continue
                if error.get("err_code") == _STREAM_NOT_FOUND:
                    missing.append(name)
                elif transient_api_error(error):
                    raise TransientRefusal(str(error.get("description")))
                else:
                    raise RunstateError(
                        f"cannot read the stream {name}: {error.get('description')} "
                        f"(code {error.get('err_code')})"
                    )
        return missing

    missing: list[str] = []

    async def checked() -> None:
        missing[:] = await attempt()

    await _patiently(settings.retry_budget, "JetStream is not ready for runstate", checked)
    if missing:
        prefix = "" if settings.prefix == "rs" else f" --prefix {settings.prefix}"
        raise StreamsMissing(
            f"runstate's streams are not on the NATS server: {', '.join(missing)} missing; "
            f"an admin creates them with `runstate provision --nats URL{prefix}` (admin "
            "credentials) or by running `runstate server` there",
            streams=missing,
        )


async def authenticated_user(nc: NATS, timeout: float = 2.0) -> str | None:  # noqa: ASYNC109
    """The user the server authenticated this connection as, or None if it does not say.

    Asked of the server (``$SYS.REQ.USER.INFO``), not taken from the client's
    settings: the name of a password user, the public key of an nkey user.
    None without authentication, on a server that does not answer, or for a
    user not allowed to ask.
    """
    try:
        with refusable(nc, "ask who this user is", USER_INFO):
            reply = await nc.request(USER_INFO, b"", timeout=timeout)
    except (nats.errors.Error, PermissionDenied, TimeoutError):
        return None
    try:
        user = orjson.loads(reply.data).get("data", {}).get("user")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return user if isinstance(user, str) and user else None
