"""Who may do what: the four roles and their exact NATS permissions (issue 17).

The permissions are generated from the names the code itself uses (``Subjects``,
the side streams, the key-value and object buckets), so they cannot drift from
what the clients publish and subscribe to. They are NATS allow lists: a
subject not listed is refused by the server, whatever the client's code does.

- **admin**: everything (provisioning, stream updates, deletes, purges).
- **projector**: consumes every stream, dead-letters, answers queries (on
  ``<prefix>.q.>`` and the micro service's ``$SRV.>``, replying to inboxes
  and to the replies of requests from the clients' account only), and reaps
  (appends the ``crashed`` transitions of silent tasks).
- **writer**: what a reader may do, plus appends, heartbeats, counters,
  idempotency keys and object store puts; optionally on some flows only, so
  a writer of flow ``A`` cannot append to flow ``B``.
- **reader**: queries, watches, history, metric and log reads; nothing
  that changes state.

The projector has a second user, ``projector-queries`` (``QUERIES_USER``), in
the clients' account: a replica answers the queries asked there on a
connection of its own, so that no query crosses an import (``query_permissions``).

The admin, the projector and a writer of every flow sign in to JetStream's
own account; readers and flow-limited writers to the clients' account
(``accounts``, ``in_streams_account``).

No role but admin may call ``STREAM.CREATE``, ``UPDATE``, ``DELETE`` or
``PURGE``, so only an admin provisions (``runstate provision``,
``runstate server``); every other client checks that the streams exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runstate.engine._lines import all_lines, lines_stream
from runstate.engine._names import Subjects, check_flow_name
from runstate.engine._points import all_points, points_stream
from runstate.engine.errors import ConfigurationError

__all__ = [
    "JETSTREAM_SERVICES",
    "QUERIES_USER",
    "ROLES",
    "Permissions",
    "accounts",
    "admin_subjects",
    "in_streams_account",
    "permissions_table",
    "query_permissions",
    "role_permissions",
    "stored_subjects",
    "stream_names",
]

#: the roles, from the most to the least trusted
ROLES = ("admin", "projector", "writer", "reader")

#: the projector's second user, in the clients' account: it answers the queries asked there
QUERIES_USER = "projector-queries"

#: the subject every role asks who it is on (the server answers with the
#: authenticated user and its permissions): the actor of a writer's events
USER_INFO = "$SYS.REQ.USER.INFO"

#: where replies come back: nats-py's inboxes (requests, JetStream acks, consumers)
INBOX = "_INBOX.>"


def in_streams_account(role: str, writer_flows: Sequence[str] | None = None) -> bool:
    """Whether ``role``'s user signs in to JetStream's own account (``accounts``).

    In that account JetStream's answer to a request lands on whatever subject the
    request named as its reply, stored subjects included: junk (an answer, never a
    commit) where the user may not publish. So it holds the roles whose publish
    rights already cover (nearly) every stored subject: the admin, the projector,
    and a writer of every flow (the dead letters are the one stored subject it may
    not publish on and could put junk on). A reader, and a writer limited to some
    flows, are clients in the other account: the server keeps their requests'
    answers out of the streams. Whoever moves the most messages crosses no import.
    """
    if role == "writer":
        return writer_flows is None
    return role in ("admin", "projector")


@dataclass(frozen=True, slots=True)
class Permissions:
    """A NATS permissions block: the subjects a user may publish to and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def stream_names(prefix: str = "rs") -> dict[str, str]:
    """Every JetStream stream runstate provisions, by what it holds, for ``prefix``."""
    subjects = Subjects(prefix)
    return {
        "events": subjects.events_stream,
        "metrics": points_stream(prefix),
        "logs": lines_stream(prefix),
        "heartbeats": subjects.heartbeats_stream,
        "counters": subjects.counters_stream,
        "deadletters": subjects.deadletter_stream,
        "keys": f"KV_{subjects.idempotency_bucket}",
        "blobs": f"OBJ_{subjects.blobs_bucket}",
    }


def stored_subjects(prefix: str = "rs") -> tuple[str, ...]:
    """Every subject a stream or bucket of ``prefix`` stores.

    The clients' account imports each as a service from the account that holds
    JetStream, so a publish on it reaches its stream and gets its ack.
    """
    subjects = Subjects(prefix)
    return (
        subjects.all_events,
        all_points(prefix),
        all_lines(prefix),
        subjects.all_heartbeats,
        subjects.all_counters,
        subjects.all_deadletters,
        f"$KV.{subjects.idempotency_bucket}.>",
        f"$O.{subjects.blobs_bucket}.>",
    )


def admin_subjects(prefix: str = "rs") -> str:
    """Where an admin keeps streams of its own beside runstate's (``runstate bench``'s raw
    figure writes there): the clients' account imports it as a service too, and no role
    but admin may publish on it."""
    return f"{prefix}.admin.>"


#: what the JetStream account exports beside the stored subjects: its API (a pull
#: request has many answers, so it is a stream of responses), consumers' acks and their
#: flow control replies
JETSTREAM_SERVICES = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>")


def accounts(prefix: str = "rs") -> tuple[str, str]:
    """The two NATS accounts of ``prefix``: the one holding JetStream, and the clients'.

    JetStream lives in an account the admin, the projector and a writer of every
    flow sign in to (``in_streams_account``): what they move (appends and their
    acks, a replica's catch-up and reaping) crosses nothing. Readers, and writers
    limited to some flows, are users of the clients' account, which imports
    JetStream's API and the stored subjects as services; their queries are answered
    in their own account, by the projector's second user (``QUERIES_USER``). A
    service's answer comes back to the requester's reply subject in the clients'
    account and is not passed on through another service import, so an answer
    whose reply names an event subject or a key is not stored: the server itself
    keeps a reader from replying into the log (docs/roles.md).
    """
    upper = prefix.upper()
    return f"{upper}_STREAMS", f"{upper}_CLIENTS"


#: the JetStream API a client reading a stream uses beside its info: message gets (by the
#: leader and direct), consumers (ordered push ones for watches, pull ones for reads),
#: their acks and flow control
READ_API = (
    "$JS.API.STREAM.MSG.GET.{stream}",
    "$JS.API.DIRECT.GET.{stream}",
    "$JS.API.DIRECT.GET.{stream}.>",
    "$JS.API.CONSUMER.CREATE.{stream}",
    "$JS.API.CONSUMER.CREATE.{stream}.>",
    "$JS.API.CONSUMER.INFO.{stream}.>",
    "$JS.API.CONSUMER.DELETE.{stream}.>",
    "$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
    "$JS.ACK.{stream}.>",
    "$JS.FC.{stream}.>",
)

#: the streams each role reads (by ``stream_names``' keys)
READS = {
    "reader": ("events", "metrics", "logs", "blobs"),
    "writer": ("events", "metrics", "logs", "blobs", "counters", "keys"),
    "projector": ("events", "metrics", "logs", "blobs", "heartbeats"),
}


def _reads(stream: str) -> list[str]:
    return [template.format(stream=stream) for template in READ_API]


def _common(prefix: str, role: str) -> list[str]:
    """What every role but admin publishes: readiness, who am I, queries, reads."""
    streams = stream_names(prefix)
    publish = ["$JS.API.INFO", USER_INFO, f"{Subjects(prefix).query_prefix}.>"]
    # nats-py's object store finds the blobs stream by its subjects to read a blob
    publish.append("$JS.API.STREAM.NAMES")
    # each client checks that every stream exists
    publish += [f"$JS.API.STREAM.INFO.{name}" for name in streams.values()]
    for what in READS[role]:
        publish += _reads(streams[what])
    return publish


def _writes(prefix: str, flows: Sequence[str] | None) -> list[str]:
    subjects = Subjects(prefix)
    if flows is None:
        publish = [
            subjects.all_events,
            subjects.all_heartbeats,
            all_points(prefix),
            all_lines(prefix),
            subjects.all_counters,
        ]
    else:
        publish = []
        for flow in flows:
            publish += [
                subjects.flow_all(flow),
                f"{prefix}.hb.{flow}.>",
                f"{prefix}.mt.{flow}.>",
                f"{prefix}.lg.{flow}.>",
                subjects.run_counter(flow),
                subjects.task_counter(flow, "*"),
            ]
    # keys are hashes and blobs are named by their content: not scoped by flow
    return [*publish, f"$KV.{subjects.idempotency_bucket}.>", f"$O.{subjects.blobs_bucket}.>"]


def role_permissions(
    role: str, prefix: str = "rs", *, writer_flows: Sequence[str] | None = None
) -> Permissions:
    """The NATS permissions of ``role`` for subject prefix ``prefix``.

    ``writer_flows``: the flows a writer may write to (None: every flow); it
    applies to the writer role only. Raises ``ConfigurationError`` for an
    unknown role and ``InvalidName`` for a bad flow name.
    """
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if writer_flows is not None:
        if not writer_flows:
            raise ConfigurationError("writer_flows names no flow: give one or more, or None")
        writer_flows = [check_flow_name(flow) for flow in writer_flows]
    subjects = Subjects(prefix)
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",))
    if role == "reader":
        return Permissions(publish=_dedupe(_common(prefix, role)), subscribe=(INBOX,))
    if role == "writer":
        publish = _common(prefix, role) + _writes(prefix, writer_flows)
        return Permissions(publish=_dedupe(publish), subscribe=(INBOX,))
    # the projector: dead-letters, reaps (appends crashed transitions), answers queries
    # on the micro service's subjects (those asked in its account), replying to inboxes
    publish = _common(prefix, role)
    publish += [subjects.all_events, subjects.all_deadletters, INBOX, "$SRV.>"]
    return Permissions(
        publish=_dedupe(publish),
        subscribe=(INBOX, f"{subjects.query_prefix}.>", "$SRV.>"),
    )


def query_permissions(prefix: str = "rs") -> Permissions:
    """The permissions of the projector's user in the clients' account (``QUERIES_USER``).

    It takes the queries (and the micro service's ``$SRV`` requests) asked in that
    account and publishes nothing but answers to inboxes: there an event subject, a key
    or JetStream's API is a service import, so an answer sent on one would be stored or
    obeyed in JetStream's account. The service sends answers to inboxes only; this makes
    the server refuse any other, whatever the code does.
    """
    return Permissions(publish=(INBOX,), subscribe=(f"{Subjects(prefix).query_prefix}.>", "$SRV.>"))


def _dedupe(subjects: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


def permissions_table(prefix: str = "rs") -> str:
    """The permissions of every role as Markdown tables (docs/roles.md shows them).

    The first has a row per subject and a column per role (``pub``, ``sub``),
    and one for the projector's second user (``QUERIES_USER``); the JetStream
    reads of a stream (``READ_API``) make one row, "reads of <stream>", spelled
    out by the second table. The writer column is the writer of every flow.
    """
    read_rows = {
        subject: f"reads of `{name}`"
        for name in stream_names(prefix).values()
        for subject in _reads(name)
    }
    users = (*ROLES, QUERIES_USER)
    rows: dict[str, dict[str, set[str]]] = {}
    for user in users:
        permissions = (
            query_permissions(prefix) if user == QUERIES_USER else role_permissions(user, prefix)
        )
        for kind, listed in (("pub", permissions.publish), ("sub", permissions.subscribe)):
            for subject in listed:
                row = read_rows.get(subject, f"`{subject}`")
                rows.setdefault(row, {}).setdefault(user, set()).add(kind)
    lines = ["| subject | " + " | ".join(users) + " |", "|---" * (len(users) + 1) + "|"]
    for row, by_user in rows.items():
        cells = [", ".join(sorted(by_user.get(user, ()))) for user in users]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "| reads of `<stream>`: publish on |", "|---|"]
    lines += [f"| `{template.replace('{stream}', '<stream>')}` |" for template in READ_API]
    return "\n".join(lines)
