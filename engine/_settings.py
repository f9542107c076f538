"""One settings object, from arguments and the environment."""

from __future__ import annotations

import dataclasses
import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from runstate.engine._names import check_prefix
from runstate.engine.errors import ConfigurationError

__all__ = ["Settings"]


def _default_data_dir() -> Path:
    return platformdirs.user_data_path("runstate", appauthor=False)


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where NATS is, how to reach it, and the knobs every part shares.

    ``nats_url=None`` means the local runstate of ``data_dir`` (a client starts it when
    none runs).
    """

    nats_url: str | None = None
    credentials: Path | None = None
    #: a replica's second user, which answers the queries asked in the clients' account
    #: (``runstate auth init``'s ``projector-queries.nk``; found beside a ``projector.nk``
    #: given as ``credentials`` when not given here)
    query_credentials: Path | None = None
    #: the token NATS asks for; set by itself when joining the embedded server of
    #: ``data_dir`` (its ``server.token``), so rarely given
    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    prefix: str = "rs"
    data_dir: Path = field(default_factory=_default_data_dir)
    #: replicas of each stream (3 on a 3-node cluster)
    replicas: int = 1
    #: seconds the server remembers commit ids for de-duplication
    duplicate_window: float = 120.0
    #: artifacts larger than this many bytes go to the object store
    inline_artifact_limit: int = 16 * 1024
    #: load pickled artifacts (unpickling runs code the writer chose). None: decided on
    #: connecting, True on the embedded server of your own data directory, False on a
    #: server at a URL (anyone allowed to write there could plant a pickle)
    trust_pickles: bool | None = None
    #: who is writing (the ``actor`` of events and Metaflow's ``user:`` namespace)
    user: str = field(default_factory=_default_user)
    #: seconds between heartbeats while a task runs
    heartbeat_interval: float = 5.0
    #: seconds of silence after which the reaper declares a running task crashed
    heartbeat_timeout: float = 30.0
    #: seconds a write keeps retrying transient faults (same commit id) before Unavailable
    retry_budget: float = 30.0
    #: seconds a request waits for one reply
    request_timeout: float = 5.0
    #: consumers the events stream allows: every live watch and projector replica is one.
    #: nats-server 2.15 defaults to 1,000 and no longer accepts -1 for "unlimited".
    max_consumers: int = 100_000
    #: seconds the metric points stream keeps a batch (0: for ever); the read store keeps
    #: what it has projected either way
    metrics_max_age: float = 0.0
    #: seconds between flushes of buffered metric rows (and a task's log lines) while a
    #: task or run block runs
    metrics_flush_interval: float = 1.0
    #: seconds the task log lines stream keeps a batch (0: for ever); lines are read from
    #: that stream only, so this is how long a task's output stays readable
    logs_max_age: float = 0.0
    #: seconds between samples of the worker process's CPU and memory into the ``system``
    #: metric stream while a task or run block runs (0: none; needs ``runstate[system]``)
    system_metrics_interval: float = 0.0
    #: seconds the local runstate (the background server a client starts when given no
    #: URL) runs on with no client connected before it stops by itself (0: never)
    local_idle_timeout: float = 900.0

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if self.replicas not in (1, 3, 5):
            raise ConfigurationError(f"replicas must be 1, 3 or 5, not {self.replicas}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("give both tls_cert and tls_key, or neither")
        if self.metrics_max_age < 0:
            raise ConfigurationError("metrics_max_age is seconds (0 keeps points for ever)")
        if self.logs_max_age < 0:
            raise ConfigurationError("logs_max_age is seconds (0 keeps log lines for ever)")
        if self.local_idle_timeout < 0:
            raise ConfigurationError("local_idle_timeout is seconds (0 keeps it running)")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigurationError(
                "heartbeat_timeout must be longer than heartbeat_interval "
                f"({self.heartbeat_timeout} <= {self.heartbeat_interval})"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``RUNSTATE_*`` variables, then ``overrides`` (None is ignored).

        Variables: RUNSTATE_NATS_URL, RUNSTATE_CREDENTIALS, RUNSTATE_QUERY_CREDENTIALS,
        RUNSTATE_TLS_CA,
        RUNSTATE_TLS_CERT, RUNSTATE_TLS_KEY, RUNSTATE_PREFIX, RUNSTATE_DATA_DIR,
        RUNSTATE_REPLICAS, RUNSTATE_TRUST_PICKLES, RUNSTATE_USER, RUNSTATE_TOKEN,
        RUNSTATE_HEARTBEAT_TIMEOUT, RUNSTATE_LOCAL_IDLE_TIMEOUT.
        """
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        paths = {
            "RUNSTATE_CREDENTIALS": "credentials",
            "RUNSTATE_QUERY_CREDENTIALS": "query_credentials",
            "RUNSTATE_TLS_CA": "tls_ca",
            "RUNSTATE_TLS_CERT": "tls_cert",
            "RUNSTATE_TLS_KEY": "tls_key",
            "RUNSTATE_DATA_DIR": "data_dir",
        }
        for var, name in paths.items():
            if env.get(var):
                values[name] = Path(env[var]).expanduser()
        if env.get("RUNSTATE_NATS_URL"):
            values["nats_url"] = env["RUNSTATE_NATS_URL"]
        if env.get("RUNSTATE_PREFIX"):
            values["prefix"] = env["RUNSTATE_PREFIX"]
        if env.get("RUNSTATE_TOKEN"):
            values["token"] = env["RUNSTATE_TOKEN"]
        if env.get("RUNSTATE_USER"):
            values["user"] = env["RUNSTATE_USER"]
        try:
            if env.get("RUNSTATE_REPLICAS"):
                values["replicas"] = int(env["RUNSTATE_REPLICAS"])
            if env.get("RUNSTATE_HEARTBEAT_TIMEOUT"):
                values["heartbeat_timeout"] = float(env["RUNSTATE_HEARTBEAT_TIMEOUT"])
            if env.get("RUNSTATE_LOCAL_IDLE_TIMEOUT"):
                values["local_idle_timeout"] = float(env["RUNSTATE_LOCAL_IDLE_TIMEOUT"])
        except ValueError as exc:
            raise ConfigurationError(f"bad number in the environment: {exc}") from None
        if env.get("RUNSTATE_TRUST_PICKLES"):
            values["trust_pickles"] = env["RUNSTATE_TRUST_PICKLES"].lower() in ("1", "true", "yes")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in (
            "credentials",
            "query_credentials",
            "tls_ca",
            "tls_cert",
            "tls_key",
            "data_dir",
        ):
            if isinstance(values.get(name), str):
                values[name] = Path(values[name]).expanduser()
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def trusting_pickles_if(self, local: bool) -> Settings:
        """These settings with ``trust_pickles`` decided: kept when set, else ``local``.

        ``local`` says whether the log is this user's own (the embedded server of their
        data directory, or a log in memory): only then are pickles trusted by default.
        """
        if self.trust_pickles is not None:
            return self
        return dataclasses.replace(self, trust_pickles=local)
