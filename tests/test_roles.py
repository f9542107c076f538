"""Who may do what (issue 17): the four roles on a real nats-server running the generated
authorization block.

Each role does everything it must through runstate; what it must not do is
tried with a plain nats-py connection too, so the refusal is the server's,
not runstate's own code. Holes 1, 2 and 5 of the issue are reproduced here.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.js.errors
import nkeys  # type: ignore[import-untyped]
import orjson
import pytest
from _drain import drained_off_the_wire
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from runstate.client import (
    ConfigurationError,
    PermissionDenied,
    RunState,
    StreamsMissing,
    TaskState,
    connect,
)
from runstate.client.cli import cli
from runstate.engine._connection import open_nats, provision, provision_server
from runstate.engine._credentials import (
    connection_options,
    new_credentials,
    queries_beside,
    render_authorization,
    write_authorization,
)
from runstate.engine._names import Subjects, subject_matches
from runstate.engine._roles import (
    QUERIES_USER,
    ROLES,
    USER_INFO,
    accounts,
    in_streams_account,
    permissions_table,
    query_permissions,
    role_permissions,
)
from runstate.engine._server import NatsServer
from runstate.engine._settings import Settings
from runstate.projections._replica import Replica
from runstate.projections._service import QueryService

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parent.parent / "docs" / "roles.md"


@dataclass
class Roles:
    """A started nats-server with the generated authorization, and where its credentials are."""

    server: NatsServer
    auth: Path
    base: Path

    @property
    def url(self) -> str:
        return self.server.url

    def credentials(self, role: str) -> Path:
        found = sorted(self.auth.glob(f"{role}.*"))
        assert len(found) == 1, found
        return found[0]

    def settings(self, role: str, **changes: object) -> Settings:
        return Settings(
            nats_url=self.url,
            credentials=self.credentials(role),
            data_dir=self.base / role,
            **changes,  # type: ignore[arg-type]
        )


@contextmanager
def _started(
    base: Path, *, writer_flows: list[str] | None = None, passwords: bool = False
) -> Iterator[Roles]:
    """A nats-server running the generated authorization, stopped after the block."""
    auth = base / "auth"
    write_authorization(auth, writer_flows=writer_flows, passwords=passwords)
    config = base / "server.conf"
    config.write_text(f'jetstream {{ store_dir: "{base / "nats"}" }}\ninclude "auth/auth.conf"\n')
    server = NatsServer(base / "nats", config_file=config)
    server.start()
    try:
        yield Roles(server, auth, base)
    finally:
        server.stop()


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Roles]:
    """The generated authorization on a server whose streams nobody provisioned yet."""
    with _started(tmp_path) as roles:
        yield roles


@pytest.fixture
def roles(bare: Roles) -> Roles:
    """The generated authorization, the streams provisioned by the admin role."""
    anyio.run(provision_server, bare.settings("admin"))
    return bare


@pytest.fixture
def flow_a(tmp_path: Path) -> Iterator[Roles]:
    """The writer role limited to flow ``A``; the streams provisioned."""
    with _started(tmp_path, writer_flows=["A"]) as roles:
        anyio.run(provision_server, roles.settings("admin"))
        yield roles


def _violations(roles: Roles) -> list[str]:
    return [line for line in roles.server.log_file.read_text().splitlines() if "Violation" in line]


# -- what each role may do ------------------------------------------------------------


async def test_each_role_does_all_it_must_with_no_refusal(roles: Roles) -> None:
    """Projector, writer and reader do their whole part; the server refuses nothing."""
    fast = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
    async with Replica(roles.settings("projector", **fast), name="p"):
        async with connect(settings=roles.settings("writer", **fast), projector=False) as writer:
            run = await writer.create_run("Train", parameters={"lr": 0.1}, idempotency_key="k")
            async with run.running():
                async with run.task("start") as task:
                    await task.save(small={"e": 3}, big="x" * 40_000)  # inline, and a blob
                    await task.record_metadata(host="gpu-7")
                    await task.log({"loss": 0.5}, step=0)
                    await task.flush()
                    await task.write_log("hello\n")
                    await task.flush_logs()
                shards = await run.foreach("train", 3, parents=[task])  # an atomic batch
                for shard in shards:
                    async with shard.attempting():
                        await shard.save(accuracy=0.9)
                silent = await run.create_task("silent")
                await silent.start()
                await silent.heartbeat()  # then nothing: the projector's reaper crashes it
            again = await writer.create_run("Train", parameters={"lr": 0.1}, idempotency_key="k")
            assert again.pathspec == run.pathspec
        reader_settings = roles.settings("reader", trust_pickles=True)
        async with connect(settings=reader_settings, projector=False, namespace=None) as reader:
            last = await reader.log.stream_last_sequence()
            read = await reader.run(run.pathspec, after=last)
            assert read.state is RunState.COMPLETED
            start = await reader.task(task.pathspec, after=last)
            assert await start.data.load("big") == "x" * 40_000
            assert [row["loss"] for row in await start.history()] == [0.5]
            assert await start.logs() == "hello\n"
            assert [r.pathspec for r in await reader.runs("Train")] == [run.pathspec]
            events = [e async for e in reader.events(run.pathspec, follow=False)]
            assert events and events[0].event.type == "run.created"
            async with reader.watch(run.pathspec) as changes:
                async for change in changes:
                    assert any(key for key in change.views)  # the snapshot
                    break
            for _ in range(150):  # the reaper's sweep, 1 s after the beat
                crashed = (await reader.task(silent.pathspec)).state is TaskState.CRASHED
                if crashed:
                    break
                await anyio.sleep(0.2)
            assert crashed
    assert _violations(roles) == []


async def test_the_actor_is_who_the_server_authenticated_not_who_the_writer_claims(
    roles: Roles,
) -> None:
    """Hole 5: a writer that says it is someone else is recorded as who it signed in as."""
    seed = roles.credentials("writer").read_text().strip()
    public_key = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    claimed = roles.settings("writer", user="mallory")
    async with Replica(roles.settings("projector"), name="p"):
        async with connect(settings=claimed, projector=False) as writer:
            assert writer.settings.user == public_key
            run = await writer.create_run("Train")
        async with connect(settings=roles.settings("reader"), namespace=None) as reader:
            events = [e async for e in reader.events(run.pathspec, follow=False)]
            assert [record.event.actor for record in events] == [public_key]
            seen = await reader.run(run.pathspec, after=run.receipt)
            assert f"user:{public_key}" in seen.system_tags


async def test_a_password_user_connects_with_its_credentials_file(tmp_path: Path) -> None:
    """``--passwords`` users work as nkey ones: the reader reads, and is who it says."""
    with _started(tmp_path, passwords=True) as roles:
        await provision_server(roles.settings("admin"))
        async with connect(settings=roles.settings("reader"), projector=False) as reader:
            assert reader.settings.user == "reader"
            assert await reader.log.stream_last_sequence() == 0


# -- what each role may not do: refused by the server ---------------------------------


class _Raw:
    """A plain nats-py connection as one role, collecting the server's refusals: ``async
    with _Raw(url, credentials) as raw:``, closed after the block."""

    def __init__(self, url: str, credentials: Path) -> None:
        self.errors: list[str] = []
        self.nc: NATS
        self._url = url
        self._credentials = credentials
        self._arrived = anyio.Event()

    async def __aenter__(self) -> _Raw:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
            self._arrived.set()

        self.nc = await nats.connect(
            self._url,
            error_cb=on_error,
            allow_reconnect=False,
            **connection_options(self._credentials),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.nc.close()

    async def refused(self, attempt: str, publish: bool = True) -> bool:
        """Whether the server refuses ``attempt`` (a publish, else a subscription)."""
        before = len(self.errors)
        self._arrived = anyio.Event()
        if publish:
            await self.nc.publish(attempt, b"{}", reply=self.nc.new_inbox())
        else:
            await self.nc.subscribe(attempt)
        # the server answers the flush's PING after the publish or subscription before it, so
        # a refusal (-ERR) is read before the PONG: past the flush, a short wait for nats-py
        # to call the error callback bounds an allowed one, which has no answer
        await self.nc.flush()
        with anyio.move_on_after(0.3):
            await self._arrived.wait()
        return any("permissions violation" in error.lower() for error in self.errors[before:])


#: what no role but admin may publish (the streams' administration, and the internals)
_ADMIN_ONLY = [
    "$JS.API.STREAM.CREATE.RS_EVIL",
    "$JS.API.STREAM.UPDATE.RS_EVENTS",
    "$JS.API.STREAM.DELETE.RS_EVENTS",
    "$JS.API.STREAM.PURGE.RS_EVENTS",
    "$JS.API.STREAM.MSG.DELETE.RS_EVENTS",
    "$JS.API.STREAM.DELETE.KV_rs_idempotency",
    "$JS.API.STREAM.PURGE.OBJ_rs_blobs",
    "$JS.API.CONSUMER.DURABLE.CREATE.RS_EVENTS.mine",
    "$JS.API.ACCOUNT.PURGE",
]


@pytest.mark.parametrize("role", ["projector", "writer", "reader"])
async def test_stream_administration_is_refused_to_every_role_but_admin(
    roles: Roles, role: str
) -> None:
    """Update, delete, purge, create: the server refuses them to every role but admin."""
    async with _Raw(roles.url, roles.credentials(role)) as raw:
        refused = {subject: await raw.refused(subject) for subject in _ADMIN_ONLY}
        assert refused == dict.fromkeys(_ADMIN_ONLY, True)
    async with _Raw(roles.url, roles.credentials("admin")) as admin:
        assert not await admin.refused("$JS.API.STREAM.INFO.RS_EVENTS")


#: (role, subject, publish?) -> refused?; what each role may and may not touch
_MATRIX = [
    ("reader", "rs.ev.Train.1.r", True, True),
    ("reader", "rs.hb.Train.1.r", True, True),
    ("reader", "rs.mt.Train.1.r", True, True),
    ("reader", "rs.ctr.runid.Train", True, True),
    ("reader", "$KV.rs_idempotency.abc", True, True),
    ("reader", "$O.rs_blobs.C.abc", True, True),
    ("reader", "rs.dlq.1", True, True),
    ("reader", "rs.q.get", True, False),
    ("reader", "rs.q.>", False, True),  # answering queries (replying into the log)
    ("reader", "rs.ev.>", False, True),
    ("writer", "rs.ev.Train.1.r", True, False),
    ("writer", "rs.dlq.1", True, True),
    ("writer", "rs.q.>", False, True),
    ("writer", "$SRV.PING", True, True),
    ("projector", "rs.ev.Train.1.r", True, False),
    ("projector", "rs.hb.Train.1.r", True, True),
    ("projector", "rs.mt.Train.1.r", True, True),
    ("projector", "$KV.rs_idempotency.abc", True, True),
    ("projector", "rs.q.>", False, False),
    ("projector", "rs.admin.x", True, True),  # the admin's own streams
    ("writer", "rs.admin.x", True, True),
    ("reader", "rs.admin.x", True, True),
]


@pytest.mark.parametrize(("role", "subject", "publish", "refused"), _MATRIX)
async def test_the_server_allows_and_refuses_as_the_roles_say(
    roles: Roles, role: str, subject: str, publish: bool, refused: bool
) -> None:
    async with _Raw(roles.url, roles.credentials(role)) as raw:
        assert await raw.refused(subject, publish) is refused


async def test_a_writer_of_flow_a_cannot_append_to_flow_b(flow_a: Roles) -> None:
    """Hole 5: a writer limited to A writes A; B is refused by the server, at once."""
    async with Replica(flow_a.settings("projector"), name="p"):
        async with connect(settings=flow_a.settings("writer"), projector=False) as writer:
            run = await writer.create_run("A")
            async with run.running():
                pass
            with anyio.fail_after(10):  # the retry budget is 30 s: no retry loop here
                with pytest.raises(PermissionDenied, match=r"rs\.ctr\.runid\.b"):
                    await writer.create_run("B")
                with pytest.raises(PermissionDenied, match=r"append to B/1") as raised:
                    await writer.create_run("B", run_id="1")
            assert raised.value.details["subject"] == "rs.ev.b.1.r"
            assert await writer.log.last_sequence(Subjects().run_all("B", "1")) == 0
    async with _Raw(flow_a.url, flow_a.credentials("writer")) as raw:
        assert await raw.refused("rs.ev.B.1.r")
        assert await raw.refused("rs.hb.B.1.r")
        assert not await raw.refused("rs.ev.A.9.r")


# -- hole 2: connecting needs no right to change the streams ---------------------------


async def test_a_reader_connects_at_once_and_cannot_shorten_the_log(roles: Roles) -> None:
    """Hole 2: a reader connects without provisioning, and may not set max_age."""
    with anyio.fail_after(10):
        async with connect(settings=roles.settings("reader"), projector=False) as reader:
            assert await reader.log.stream_last_sequence() == 0
            with pytest.raises(PermissionDenied, match="provision"):
                await provision(reader.nc, reader.settings)  # type: ignore[arg-type]
    async with _Raw(roles.url, roles.credentials("reader")) as raw:
        update = {"name": "RS_EVENTS", "subjects": ["rs.ev.>"], "max_age": 1_000_000_000}
        await raw.nc.publish("$JS.API.STREAM.UPDATE.RS_EVENTS", orjson.dumps(update))
        assert await raw.refused("$JS.API.STREAM.UPDATE.RS_EVENTS")
    admin = await open_nats(roles.settings("admin"))
    try:
        info = await admin.jetstream().stream_info("RS_EVENTS")
        assert not info.config.max_age
    finally:
        await admin.close()


async def test_a_client_on_a_server_not_provisioned_says_what_is_missing(bare: Roles) -> None:
    """Hole 2: not provisioned, a client names the missing streams and how to make them."""
    for role in ("reader", "writer", "projector"):
        with anyio.fail_after(10), pytest.raises(StreamsMissing, match="runstate provision"):
            async with connect(settings=bare.settings(role), projector=role == "projector"):
                pass
    with pytest.raises(StreamsMissing) as raised:
        async with connect(settings=bare.settings("reader"), projector=False):
            pass
    assert "RS_EVENTS" in raised.value.details["streams"]
    result = await anyio.to_thread.run_sync(
        functools.partial(
            CliRunner().invoke,
            cli,
            ["provision", "--nats", bare.url],
            env={"RUNSTATE_CREDENTIALS": str(bare.credentials("admin"))},
        )
    )
    assert result.exit_code == 0, result.output
    async with connect(settings=bare.settings("reader"), projector=False) as reader:
        assert await reader.log.stream_last_sequence() == 0


# -- hole 1: answers go to inboxes only -----------------------------------------------


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reply subject of every query a replica answers in this test, in order."""
    replies: list[str] = []
    respond = QueryService._respond

    async def spied(self: QueryService, request: Any, endpoint: str, parsed: Any) -> None:
        replies.append(request._msg.reply)
        await respond(self, request, endpoint, parsed)

    monkeypatch.setattr(QueryService, "_respond", spied)
    return replies


async def test_a_query_with_a_reply_into_the_log_stores_nothing(
    roles: Roles, answered: list[str]
) -> None:
    """Hole 1: a reader's query asking for its answer on an event subject or a key is not
    answered, and nothing is stored. The replica takes the reader's queries in the reader's
    own account (its reply is the reader's inbox, not the ``_R_.`` one an import gives), and
    refuses a reply that is not an inbox; the server refuses the replica's user there any
    publish that is not to an inbox, so the code's refusal is not the only one."""
    async with (
        Replica(roles.settings("projector"), name="p") as replica,
        _Raw(roles.url, roles.credentials("reader")) as raw,
        _Raw(roles.url, roles.auth / f"{QUERIES_USER}.nk") as queries,
    ):
        assert replica.service is not None
        body = orjson.dumps({"pathspec": "Train/1"})
        for reply in ("rs.ev.Train.1.r", "$KV.rs_idempotency.abc"):
            await raw.nc.publish("rs.q.get", body, reply=reply)
        await raw.nc.flush()
        answer = await raw.nc.request("rs.q.status", b"{}", timeout=5)
        assert b"result" in answer.data  # the service works, and has refused the two
        assert len(answered) == 1 and answered[0].startswith("_INBOX.")
        for subject in ("rs.ev.Train.1.r", "$KV.rs_idempotency.abc", "$JS.API.STREAM.PURGE.x"):
            assert await queries.refused(subject), subject
        assert not await queries.refused(raw.nc.new_inbox())
    async with _Raw(roles.url, roles.credentials("admin")) as admin:
        for stream in ("RS_EVENTS", "KV_rs_idempotency"):
            info = await admin.nc.jetstream().stream_info(stream)
            assert info.state.messages == 0, stream


async def test_queries_are_answered_in_the_account_they_are_asked_in(
    roles: Roles, answered: list[str]
) -> None:
    """A replica answers on two connections: as the projector in JetStream's account (the
    writer's queries) and as ``projector-queries`` in the clients' account (the reader's),
    so no query crosses an import: each arrives with its asker's own inbox as its reply.
    Without the second user the reader's queries find no replica: none is imported."""
    async with Replica(roles.settings("projector"), name="p"):
        async with (
            connect(settings=roles.settings("writer"), projector=False) as writer,
            connect(settings=roles.settings("reader"), projector=False) as reader,
        ):
            run = await writer.create_run("Train")
            for client, account in zip((writer, reader), accounts(), strict=True):
                found = await client.with_namespace(None).run(run.pathspec, after=writer.last_write)
                assert found.pathspec == run.pathspec
                info = orjson.loads((await client.nc.request(USER_INFO, b"", timeout=5)).data)
                assert info["data"]["account"] == account
    assert len(answered) == 2 and all(reply.startswith("_INBOX.") for reply in answered)
    block = (roles.auth / "auth.conf").read_text()  # neither exported nor imported
    assert 'service: "rs.q.>"' not in block and 'subject: "rs.q.>"' not in block
    (roles.auth / f"{QUERIES_USER}.nk").unlink()
    async with (
        Replica(roles.settings("projector"), name="q"),
        _Raw(roles.url, roles.credentials("reader")) as raw,
    ):
        with pytest.raises(nats.errors.NoRespondersError):
            await raw.nc.request("rs.q.status", b"{}", timeout=5)


def test_the_projectors_second_user_is_found_beside_its_credentials(tmp_path: Path) -> None:
    """``projector-queries.nk`` (or ``.pass``) beside ``projector.nk`` (or ``.pass``); nothing
    beside another role's file, or where ``runstate auth init`` wrote none."""
    for passwords in (False, True):
        out = tmp_path / str(passwords)
        write_authorization(out, passwords=passwords)
        suffix = ".pass" if passwords else ".nk"
        assert queries_beside(out / f"projector{suffix}") == out / f"{QUERIES_USER}{suffix}"
        assert queries_beside(out / f"reader{suffix}") is None
        (out / f"{QUERIES_USER}{suffix}").unlink()
        assert queries_beside(out / f"projector{suffix}") is None
    assert queries_beside(None) is None
    given_path = tmp_path / "q.nk"
    env = {"RUNSTATE_QUERY_CREDENTIALS": str(given_path)}
    assert Settings.from_env(env).query_credentials == given_path


def test_the_second_users_permissions_are_answers_to_inboxes_only() -> None:
    """It takes the queries and the micro service's requests, and publishes on inboxes
    only: in the clients' account every stored subject is an import into the streams."""
    permissions = query_permissions()
    assert permissions.publish == ("_INBOX.>",)
    assert set(permissions.subscribe) == {"rs.q.>", "$SRV.>"}
    block = render_authorization(new_credentials())
    clients_part = block[block.index("RS_CLIENTS {") :]
    assert f"# {QUERIES_USER}" in clients_part  # a user of the clients' account
    assert 'publish: {allow: ["_INBOX.>"]}' in clients_part


@pytest.mark.parametrize("role", ROLES)
async def test_who_signs_in_to_jetstreams_account(tmp_path: Path, role: str) -> None:
    """The admin, the projector and a writer of every flow sign in where JetStream is
    (nothing they move crosses an import); a reader and a writer limited to flows are
    clients of it, whose requests' answers the server keeps out of the streams."""
    streams, clients = accounts()
    for writer_flows in (None, ["A"]):
        with _started(tmp_path / str(writer_flows), writer_flows=writer_flows) as place:
            async with _Raw(place.url, place.credentials(role)) as raw:
                info = orjson.loads((await raw.nc.request(USER_INFO, b"", timeout=5)).data)
        expected = streams if in_streams_account(role, writer_flows) else clients
        assert info["data"]["account"] == expected
    assert in_streams_account(role) is (role != "reader")
    assert not in_streams_account("writer", ["A"])


@pytest.mark.parametrize("role", ROLES)
async def test_a_jetstream_answer_sent_to_its_api_administers_nothing(
    roles: Roles, role: str
) -> None:
    """In JetStream's own account an answer goes to whatever reply a request names; one
    naming a purge or a delete of a stream is not taken as that request."""
    async with connect(settings=roles.settings("writer"), projector=False) as writer:
        await writer.create_run("Train")
    async with _Raw(roles.url, roles.credentials(role)) as raw:
        for reply in ("$JS.API.STREAM.PURGE.RS_EVENTS", "$JS.API.STREAM.DELETE.RS_DEADLETTER"):
            await raw.nc.publish("$JS.API.INFO", b"", reply=reply)
        await raw.nc.flush()
        answer = await raw.nc.request("$JS.API.INFO", b"", timeout=5)
        assert b"memory" in answer.data  # JetStream answers this role's requests
    async with _Raw(roles.url, roles.credentials("admin")) as admin:
        js = admin.nc.jetstream()
        assert (await js.stream_info("RS_EVENTS")).state.messages > 0
        assert (await js.stream_info("RS_DEADLETTER")).config.name == "RS_DEADLETTER"


# -- the feeder's own socket ------------------------------------------------------------


@pytest.mark.parametrize("passwords", [False, True], ids=["nkey", "password"])
async def test_the_feeder_reads_off_its_own_socket_as_the_projector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passwords: bool
) -> None:
    """A replica's feeder signs in to its socket with the projector's credentials (an nkey
    signing the server's nonce, or a password) instead of falling back to nats-py."""
    with _started(tmp_path, passwords=passwords) as roles:
        await provision_server(roles.settings("admin"))
        async with connect(settings=roles.settings("writer"), projector=False) as writer:
            for _ in range(3):
                async with (await writer.create_run("Train")).running():
                    pass
        received = await drained_off_the_wire(roles.settings("projector"), monkeypatch)
        assert received == list(range(1, len(received) + 1)) and len(received) >= 6
        assert not _violations(roles)


# -- credentials ------------------------------------------------------------------------


async def test_wrong_credentials_are_refused_at_once(roles: Roles, tmp_path: Path) -> None:
    """An nkey the server does not know: ConfigurationError at once, no retries."""
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    with anyio.fail_after(10), pytest.raises(ConfigurationError, match="refused the credentials"):
        async with connect(roles.url, credentials=stranger, projector=False):
            pass


def test_auth_init_writes_private_files_for_every_role(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    result = CliRunner().invoke(
        cli, ["auth", "init", "--out", str(out), "--writer-flows", "A,B", "--passwords"]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o700
    files = sorted(path.name for path in out.iterdir())
    assert files == sorted(
        ["auth.conf", f"{QUERIES_USER}.pass", *(f"{role}.pass" for role in ROLES)]
    )
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in out.iterdir())
    assert connection_options(out / "reader.pass")["user"] == "reader"
    block = (out / "auth.conf").read_text()
    assert '"rs.ev.A.>"' in block and '"rs.ev.B.>"' in block and '"rs.ev.>"' in block


def test_a_file_that_is_no_credentials_is_refused_before_connecting(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(ConfigurationError, match="not a credentials file"):
        connection_options(junk)


# -- the permissions themselves -----------------------------------------------------------


def test_the_docs_table_is_the_generated_permissions() -> None:
    assert permissions_table() in DOCS.read_text()


_FLOW = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(st.lists(_FLOW, min_size=1, max_size=4, unique=True), _FLOW)
def test_a_flow_limited_writer_may_write_its_flows_only(flows: list[str], other: str) -> None:
    """Every subject of a listed flow is allowed; no event subject of another flow is."""
    publish = role_permissions("writer", writer_flows=flows).publish
    subjects = Subjects()

    def allowed(subject: str) -> bool:
        return any(subject_matches(pattern, subject) for pattern in publish)

    for flow in flows:
        assert allowed(subjects.run(flow, "1")) and allowed(subjects.task(flow, "1", "s", "2"))
        assert allowed(subjects.run_counter(flow)) and allowed(subjects.task_counter(flow, "1"))
    if other not in flows:
        assert not allowed(subjects.run(other, "1"))
        assert not allowed(subjects.run_counter(other))


def test_no_role_but_admin_may_administer_streams() -> None:
    for role in ("projector", "writer", "reader"):
        publish = role_permissions(role).publish
        for api in ("CREATE", "UPDATE", "DELETE", "PURGE"):
            subject = f"$JS.API.STREAM.{api}.RS_EVENTS"
            assert not any(subject_matches(p, subject) for p in publish), (role, api)


async def test_a_replica_without_the_projector_role_says_it_may_not_serve(roles: Roles) -> None:
    """A writer running a replica is refused the query subjects: PermissionDenied, at once."""
    with anyio.fail_after(10), pytest.raises(PermissionDenied, match="serve queries"):
        async with connect(settings=roles.settings("writer"), projector=True):
            pass


async def test_a_jetstream_reply_into_the_log_or_a_key_is_not_stored(roles: Roles) -> None:
    """JetStream lives in an account of its own: its answer to a reader that names an event
    subject or an idempotency key as the reply comes back to the clients' account on that
    subject and is not passed on into the stream. (No user of the clients' account may
    subscribe there to see it; the same request with the reader's inbox is answered.)"""
    subjects = Subjects()
    async with connect(settings=roles.settings("writer"), projector=False) as writer:
        run = await writer.create_run("Train")
        assert run.receipt is not None
        subject = subjects.run("Train", run.id)
        key = hashlib.sha256(b"Train\0k").hexdigest()
        replies = [subject, f"$KV.{subjects.idempotency_bucket}.{key}"]
        async with _Raw(roles.url, roles.credentials("reader")) as raw:
            for reply in replies:
                for _ in range(5):
                    await raw.nc.publish("$JS.API.STREAM.INFO.RS_EVENTS", b"", reply=reply)
            await raw.nc.flush()
            answer = await raw.nc.request("$JS.API.STREAM.INFO.RS_EVENTS", b"", timeout=5)
            assert b"RS_EVENTS" in answer.data and not raw.errors
        assert await writer.log.last_sequence(subject) == run.receipt.sequence
        await run.start()  # expects the version it knows: nothing came in between
        again = await writer.create_run("Train", idempotency_key="k")
        assert (await writer.create_run("Train", idempotency_key="k")).pathspec == again.pathspec
        assert writer.nc is not None
        info = await writer.nc.jetstream().stream_info(f"KV_{subjects.idempotency_bucket}")
        assert info.state.messages == 1


async def test_a_jetstream_answer_stored_on_a_run_or_a_key_breaks_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    """With JetStream in the clients' own account (a server with no authorization, or with
    a block of its own) the answer to a request naming a run's subject or a key as its
    reply is stored there. runstate steps over it: the run's next transition works, from
    the handle it holds and from one loaded again; the key creates its run; the projector
    dead-letters the junk and shows the run as it is."""
    settings = Settings(nats_url=nats_url, data_dir=tmp_path / "d")
    subjects = Subjects()
    async with Replica(settings, name="p") as replica:
        assert replica.projector is not None
        async with connect(settings=settings, projector=False) as writer:
            run = await writer.create_run("Train")
            assert run.receipt is not None
            subject = subjects.run("Train", run.id)
            key = hashlib.sha256(b"Train\0k").hexdigest()
            nc = await nats.connect(nats_url)
            try:
                for reply in (subject, f"$KV.{subjects.idempotency_bucket}.{key}"):
                    await nc.publish("$JS.API.STREAM.INFO.RS_EVENTS", b"", reply=reply)
                await nc.flush()
                keys = await nc.jetstream().key_value(subjects.idempotency_bucket)
                for _ in range(200):  # JetStream answers on its own time
                    stored = await writer.log.last_sequence(subject)
                    junk_key = await _entry_or_none(keys, key)
                    if stored != run.receipt.sequence and junk_key is not None:
                        break
                    await anyio.sleep(0.05)
            finally:
                await nc.close()
            assert stored == run.receipt.sequence + 1  # the answer, on the run's subject
            assert junk_key is not None and b"stream_info_response" in junk_key
            started = await run.start()  # expects the version before the junk
            assert started.sequence == stored + 1
            again = await writer.run_handle(run.pathspec)  # the junk is no part of its history
            await again.complete()
            created = await writer.create_run("Train", idempotency_key="k")
            repeated = await writer.create_run("Train", idempotency_key="k")
            assert repeated.pathspec == created.pathspec
            last = await writer.log.stream_last_sequence()
            await replica.projector.wait_for(last, timeout=10)
            assert replica.projector.deadlettered == 1
            seen = await writer.run(run.pathspec, after=last)
            assert seen.state is RunState.COMPLETED
            assert (await writer.run(created.pathspec, after=last)).state is RunState.PENDING


async def _entry_or_none(kv: object, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)  # type: ignore[attr-defined]
    except nats.js.errors.KeyNotFoundError:
        return None
    return bytes(entry.value or b"")
