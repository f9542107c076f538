"""Every error runstate raises, in one tree.

::

    RunstateError
    ├── InvalidName            a flow/step/run/task name or pathspec is malformed
    ├── InvalidEvent           an event or commit does not match the schema
    ├── PayloadTooLarge        a commit or artifact is over the configured limit
    ├── IllegalTransition      a state change the state machine does not allow
    ├── StepWentBack           a metric row logged at a step before the last one
    ├── ConflictError          someone else appended to the entity first
    ├── IdempotencyKeyReused   an idempotency key repeated with other parameters
    ├── NotFound               no object at that pathspec
    ├── NotInNamespace         the object exists but is outside the current namespace
    ├── BadFilter              a list query with an unknown field, operator or value
    ├── Timeout                a bounded wait ran out (``after=`` reads, requests)
    ├── Unavailable            NATS could not be reached within the retry budget
    ├── ServerTooOld           the NATS server lacks features runstate needs
    ├── JetStreamDisabled      the NATS server runs without JetStream
    ├── UnsafeArtifact         a pickled artifact was refused by the trust setting
    ├── StoreInUse             another replica holds the read store file
    ├── ServerAlreadyRunning   the data directory's embedded server runs in another process
    ├── LocalServerOutdated    the local runstate runs an older version than this client
    ├── PermissionDenied       the NATS server refused this user an operation (its role)
    ├── StreamsMissing         runstate's streams are not provisioned on the server
    └── ConfigurationError     settings that cannot work together

Errors caused by the caller's input (``InvalidName``, ``InvalidEvent``,
``PayloadTooLarge``, ``IllegalTransition``, ``StepWentBack``, ``BadFilter``) are raised before
anything is sent. Errors caused by something outside (``Unavailable``,
``Timeout``) leave every acknowledged write in place: a write either has a
receipt or may be retried with the same commit id.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadFilter",
    "ConfigurationError",
    "ConflictError",
    "IdempotencyKeyReused",
    "IllegalTransition",
    "InvalidEvent",
    "InvalidName",
    "JetStreamDisabled",
    "LocalServerOutdated",
    "NotFound",
    "NotInNamespace",
    "PayloadTooLarge",
    "PermissionDenied",
    "RunstateError",
    "ServerAlreadyRunning",
    "ServerTooOld",
    "StepWentBack",
    "StoreInUse",
    "StreamsMissing",
    "Timeout",
    "Unavailable",
    "UnsafeArtifact",
    "error_from_wire",
]


class RunstateError(Exception):
    """The base of every runstate error."""

    code: str = "runstate_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """Return the error as a JSON-able dict, for error replies over NATS."""
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidName(RunstateError, ValueError):
    """A name or pathspec is malformed; nothing was sent."""

    code = "invalid_name"


class InvalidEvent(RunstateError, ValueError):
    """An event or commit does not match the event schema."""

    code = "invalid_event"


class PayloadTooLarge(RunstateError, ValueError):
    """A commit is larger than the server accepts; nothing was sent."""

    code = "payload_too_large"


class IllegalTransition(RunstateError):
    """The state machine does not allow this change; nothing was appended."""

    code = "illegal_transition"

    def __init__(
        self, entity: str, from_state: str | None, to_state: str, reason: str = ""
    ) -> None:
        shown = from_state if from_state is not None else "(new)"
        message = f"{entity}: cannot go from {shown} to {to_state}"
        if reason:
            message += f" ({reason})"
        super().__init__(message, entity=entity, from_state=from_state, to_state=to_state)
        self.entity = entity
        self.from_state = from_state
        self.to_state = to_state


class StepWentBack(RunstateError, ValueError):
    """A metric row was logged at a step before the entity's last step (W&B refuses it too)."""

    code = "step_went_back"


class ConflictError(RunstateError):
    """Another writer appended to the entity since the version this append expected.

    ``current_version`` is the entity's version now; reload and decide again.
    """

    code = "conflict"

    def __init__(self, entity: str, expected_version: int, current_version: int) -> None:
        super().__init__(
            f"{entity}: expected version {expected_version} but it is at {current_version}; "
            "another writer changed it, reload and retry",
            entity=entity,
            expected_version=expected_version,
            current_version=current_version,
        )
        self.entity = entity
        self.expected_version = expected_version
        self.current_version = current_version


class IdempotencyKeyReused(RunstateError):
    """A run was created with this idempotency key before, with other parameters.

    A key stands for one request (Prefect's rule): repeat it unchanged to get
    the same run, or use a new key for new parameters.
    """

    code = "idempotency_key_reused"


class NotFound(RunstateError, LookupError):
    """There is no object at that pathspec (yet)."""

    code = "not_found"


class NotInNamespace(RunstateError):
    """The object exists but is outside the current namespace; use namespace(None) to see all."""

    code = "not_in_namespace"


class BadFilter(RunstateError, ValueError):
    """A list query names an unknown field or sort key, or a value of the wrong type."""

    code = "bad_filter"


class Timeout(RunstateError, TimeoutError):
    """A bounded wait ran out before the condition held."""

    code = "timeout"


class Unavailable(RunstateError, ConnectionError):
    """NATS (or the query service) could not be reached within the retry budget."""

    code = "unavailable"


class ServerTooOld(RunstateError):
    """The NATS server is older than runstate needs (2.11 or newer)."""

    code = "server_too_old"


class JetStreamDisabled(RunstateError):
    """The NATS server runs without JetStream; start it with -js or enable it in its config."""

    code = "jetstream_disabled"


class UnsafeArtifact(RunstateError):
    """A pickled artifact was not loaded because this client does not trust pickles."""

    code = "unsafe_artifact"


class StoreInUse(RunstateError):
    """Another replica holds the read store file; give each replica its own store."""

    code = "store_in_use"


class ServerAlreadyRunning(RunstateError):
    """The embedded server of the data directory runs already, started by another process."""

    code = "server_already_running"


class LocalServerOutdated(RunstateError):
    """The local runstate of the data directory runs an older runstate than this client.

    It keeps running for the clients that use it; stop it with ``runstate
    server stop`` (the next client starts this version), or connect with
    ``restart_local=True``.
    """

    code = "local_server_outdated"


class PermissionDenied(RunstateError, PermissionError):
    """The NATS server refused this user an operation: its role does not allow it.

    ``details`` name the ``operation`` and the ``subject`` the server refused.
    Nothing was changed; connect with the credentials of a role that may do it.
    """

    code = "permission_denied"


class StreamsMissing(RunstateError):
    """runstate's streams are not on the server: an admin provisions them first.

    ``details["streams"]`` names the missing streams and buckets; ``runstate
    provision`` (with admin credentials) or ``runstate server`` creates them.
    """

    code = "streams_missing"


class ConfigurationError(RunstateError, ValueError):
    """Settings that cannot work together."""

    code = "configuration_error"


_BY_CODE: dict[str, type[RunstateError]] = {
    cls.code: cls
    for cls in (
        RunstateError,
        InvalidName,
        InvalidEvent,
        PayloadTooLarge,
        NotFound,
        NotInNamespace,
        BadFilter,
        Timeout,
        Unavailable,
        ServerTooOld,
        JetStreamDisabled,
        UnsafeArtifact,
        StoreInUse,
        ServerAlreadyRunning,
        LocalServerOutdated,
        PermissionDenied,
        StreamsMissing,
        ConfigurationError,
        IdempotencyKeyReused,
        StepWentBack,
    )
}


def error_from_wire(wire: dict[str, Any]) -> RunstateError:
    """Rebuild an error sent as ``RunstateError.to_wire()``; unknown codes become the base."""
    code = str(wire.get("code", "runstate_error"))
    message = str(wire.get("message", "unknown error"))
    details = wire.get("details") or {}
    if code == "conflict":
        return ConflictError(
            str(details.get("entity", "?")),
            int(details.get("expected_version", -1)),
            int(details.get("current_version", -1)),
        )
    if code == "illegal_transition":
        return IllegalTransition(
            str(details.get("entity", "?")),
            details.get("from_state"),
            str(details.get("to_state", "?")),
        )
    cls = _BY_CODE.get(code, RunstateError)
    return cls(message, **details)
