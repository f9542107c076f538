"""``runstate auth``: the roles' credentials; ``runstate provision``: the admin's set-up.

``auth init`` writes a nats-server accounts block (JetStream in an account
of its own) with one user per role (admin, projector, writer, reader;
``runstate.engine._roles`` has their permissions) and one credentials file per role, for
``RUNSTATE_CREDENTIALS`` or ``connect(credentials=...)``. ``provision``
creates runstate's streams on a server at a URL: the one thing only the
admin role may do, which every other client checks was done.
"""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import click

from runstate.client.cli._app import (
    BadInputError,
    configure_logs,
    current_options,
    global_options,
    reporting_errors,
)
from runstate.engine._connection import provision_server
from runstate.engine._credentials import AUTH_CONF, write_authorization
from runstate.engine._names import Subjects
from runstate.engine._roles import ROLES
from runstate.engine._tls_files import CA_FILE, TLS_CONF

__all__ = ["auth", "provision"]


@click.group()
def auth() -> None:
    """Who may do what: credentials for runstate's four roles on NATS.

    \b
      admin      provision, update, delete and purge the streams
      projector  consume, dead-letter, serve queries, reap
      writer     append, heartbeat, counters, idempotency keys, blobs (maybe some flows only)
      reader     queries, watches, history, metric and log reads; nothing that changes state

    The HTTP gateway's bearer tokens map to the same roles: `runstate auth token`.
    """


def _flows(values: tuple[str, ...]) -> list[str] | None:
    flows = [flow.strip() for value in values for flow in value.split(",") if flow.strip()]
    return flows or None


@auth.command("init")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runstate-auth"),
    show_default=True,
    help="The directory to write to (created 0700; every file in it 0600).",
)
@click.option(
    "--writer-flows",
    multiple=True,
    metavar="FLOW[,FLOW...]",
    help="Limit the writer role to these flows (repeat or separate by commas). "
    "Default: every flow.",
)
@click.option(
    "--passwords",
    is_flag=True,
    help="Users with random passwords instead of nkeys (the server then holds the secrets).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Also a CA, the server's certificate and a client certificate per role, and the "
    "server's tls block (verify: true), which auth.conf includes. Needs runstate[tls].",
)
@click.option(
    "--tls-host",
    "tls_hosts",
    multiple=True,
    metavar="NAME",
    help="With --tls: a host name or address the server is reached by, besides localhost and "
    "127.0.0.1 (repeat or separate by commas).",
)
@click.option(
    "--tls-dir",
    metavar="DIR",
    help="With --tls: where the server will find these files, for tls.conf's paths (the "
    "server reads them from its working directory). Default: OUT, made absolute.",
)
@click.option(
    "--keep-existing",
    is_flag=True,
    help="Write nothing if OUT already has an auth.conf: for a container that runs this at "
    "every start (deploy/compose.yaml) and must keep the credentials it made the first time.",
)
@click.option("--prefix", help="Subject and stream prefix. Default: $RUNSTATE_PREFIX, else rs.")
@reporting_errors
def init(
    out: Path,
    writer_flows: tuple[str, ...],
    passwords: bool,
    tls: bool,
    tls_hosts: tuple[str, ...],
    tls_dir: str | None,
    keep_existing: bool,
    prefix: str | None,
) -> None:
    """Write a nats-server accounts block and a credentials file per role.

    OUT/auth.conf holds JetStream's account and the clients' account, with
    one user per role and its exact permissions;
    include it from the server's config (``include auth.conf``) and restart
    or reload the server. OUT/<role>.nk (an nkey seed; with --passwords
    OUT/<role>.pass) is what a client of that role connects with:
    RUNSTATE_CREDENTIALS=OUT/writer.nk, or connect(credentials=...).
    OUT/projector-queries.nk is the projector's second user, with which a
    replica answers the queries of the clients' account (readers, writers
    limited to flows); it finds it beside OUT/projector.nk. Running
    it again makes new users: the old credentials stop working once the
    server loads the new block.

    With --tls it also writes OUT/ca.pem (a new CA), OUT/server.pem and
    OUT/server-key.pem (the server's pair) and OUT/<role>.pem and
    OUT/<role>-key.pem (each role's client certificate), and OUT/tls.conf,
    the server's tls block, which auth.conf includes: every client must then
    show a certificate of that CA. A cluster's nodes include tls.conf inside
    their cluster block too, for the routes (deploy/README.md).

    \b
    Example:
      runstate auth init --out /etc/runstate/auth --writer-flows Train,Eval
      runstate auth init --out auth --tls --tls-host nats.example.com
    """
    if (tls_hosts or tls_dir) and not tls:
        raise BadInputError("--tls-host and --tls-dir go with --tls")
    if tls:
        try:
            import cryptography  # noqa: F401  (the tls extra)
        except ImportError:
            raise click.ClickException(
                "--tls makes certificates with the cryptography package: "
                "pip install 'runstate[tls]'"
            ) from None
    prefix = prefix or current_options().settings().prefix
    Subjects(prefix)  # checks the prefix
    if keep_existing and (out / AUTH_CONF).is_file():
        click.echo(f"kept {out / AUTH_CONF} and the credentials beside it (--keep-existing)")
        return
    written = write_authorization(
        out, prefix, writer_flows=_flows(writer_flows), passwords=passwords
    )
    click.echo(f"wrote {out / AUTH_CONF} (include it from nats-server's config)")
    if tls:
        from runstate.engine._certificates import write_certificates

        write_certificates(out, ROLES, hosts=_flows(tls_hosts) or (), server_dir=tls_dir)
        click.echo(f"wrote {out / TLS_CONF} (auth.conf includes it) and the certificates")
    for role, path in zip(ROLES, written[1 : len(ROLES) + 1], strict=True):
        line = f"  {role:<9} RUNSTATE_CREDENTIALS={path}"
        if tls:
            line += (
                f" RUNSTATE_TLS_CA={out / CA_FILE} RUNSTATE_TLS_CERT={out / role}.pem"
                f" RUNSTATE_TLS_KEY={out / role}-key.pem"
            )
        click.echo(line)
    click.echo(f"  (the projector's replicas also sign in with {written[-1]}, found beside it)")


@click.command()
@global_options(exclude=("user",))
@reporting_errors
def provision() -> None:
    """Create (or update) runstate's streams and buckets on the NATS server at --nats.

    An admin action: run it once with the admin role's credentials
    (RUNSTATE_CREDENTIALS=.../admin.nk) before any other client connects;
    those only check that the streams exist. Idempotent: run again after
    changing RUNSTATE_REPLICAS to update the streams. The embedded server
    (no --nats) provisions its own streams.

    \b
    Example:
      RUNSTATE_CREDENTIALS=auth/admin.nk runstate provision --nats nats://nats:4222
    """
    configure_logs("warning")
    settings = current_options().settings()
    if settings.nats_url is None:
        raise BadInputError(
            "give --nats URL (or RUNSTATE_NATS_URL): the embedded server provisions its own "
            "streams when it starts"
        )
    anyio.run(functools.partial(provision_server, settings))
    click.echo(f"provisioned runstate's streams (prefix {settings.prefix}) at {settings.nats_url}")
