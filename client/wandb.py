"""W&B's public API, blocking, over runstate: ``wandb.Api`` users change the import line.

::

    from runstate.client.wandb import Api

    api = Api()
    run = api.run("Train/42")                  # or "entity/Train/42", "entity/Train/runs/42"
    print(run.name, run.state, run.config["lr"], run.summary["acc"])
    frame = run.history(keys=["loss"])         # sampled, deterministic; a DataFrame
    losses = [row["loss"] for row in run.scan_history(keys=["loss"])]
    run.summary.update({"best_acc": 0.93})     # persists at once, as W&B's does
    for run in api.runs("Train", filters={"summary_metrics.acc": {"$gt": 0.9}},
                        order="-summary_metrics.acc"):
        print(run.id, run.summary["acc"])

Names: a W&B **project** is a runstate **flow**, a W&B **run id** is the
run's id (``Train/42`` is run ``42`` of project ``Train``). runstate has no
**entity** (one runstate is one team's): paths may name one
(``entity/project/run_id``) and ``run.entity`` gives it back, else the
run's user; it selects nothing. W&B's states read as runstate's: pending
(scheduled, pending), running (running, cancelling), finished (completed),
failed, killed (cancelled), crashed.

The facade shares the Metaflow facade's background client
(``runstate.client.compat``): ``compat.metadata(...)`` or
``compat.connect(url)`` chooses the runstate both read, else
``RUNSTATE_NATS_URL`` or the local server. Not here, because runstate has
no such thing yet: run files (``files``, ``file``, ``upload_file``),
W&B artifacts (``log_artifact``, ``use_artifact``, ...), ``url``,
``delete`` and ``create``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from runstate.client import _objects as aio
from runstate.client._client import Client
from runstate.client._history import _pandas
from runstate.client.compat import _session, close, connect
from runstate.engine._states import RunState
from runstate.engine.errors import BadFilter, InvalidName

__all__ = ["Api", "Run", "Runs", "Summary", "close", "connect"]

#: runstate's run states as W&B names them
STATES: dict[RunState, str] = {
    RunState.SCHEDULED: "pending",
    RunState.PENDING: "pending",
    RunState.RUNNING: "running",
    RunState.CANCELLING: "running",
    RunState.COMPLETED: "finished",
    RunState.FAILED: "failed",
    RunState.CANCELLED: "killed",
    RunState.CRASHED: "crashed",
}

#: W&B's state names to runstate's (``aborted`` is W&B's older name of ``killed``)
_WANDB_STATES: dict[str, list[RunState]] = {}
for _state, _name in STATES.items():
    _WANDB_STATES.setdefault(_name, []).append(_state)
_WANDB_STATES["aborted"] = _WANDB_STATES["killed"]


def _client() -> Client:
    """The shared background client, seeing every run (W&B's projects are not per user)."""
    return _session.open().with_namespace(None)


def _call(function: Any, *args: Any) -> Any:
    return _session.call(function, *args)


def _split_path(path: str, default_entity: str | None) -> tuple[str | None, str, str | None]:
    """``(entity, project, run_id)`` of ``project``, ``project/run``, ``entity/project/run``
    or ``entity/project/runs/run`` (W&B's URL form)."""
    if not isinstance(path, str) or not path.strip("/"):
        raise InvalidName(
            f"a W&B path is 'project/run_id' or 'entity/project/run_id', not {path!r}"
        )
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[2] == "runs":
        parts = [parts[0], parts[1], parts[3]]
    if len(parts) == 1:
        return default_entity, parts[0], None
    if len(parts) == 2:
        return default_entity, parts[0], parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise InvalidName(
        f"a W&B path is 'project/run_id' or 'entity/project/run_id' (a project is a "
        f"runstate flow), not {path!r}"
    )


class Summary(Mapping[str, Any]):
    """A run's summary: each metric's latest value, overridden by explicit updates.

    ``summary.update({...})`` persists at once, as W&B's does;
    ``summary[key] = value`` changes it here, and ``run.update()`` persists.
    """

    def __init__(self, run: Run, values: dict[str, Any]) -> None:
        self._run = run
        self._values = values
        self._changed: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._changed[key] = value

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set keys and persist them, with any set by ``summary[key] = value`` before."""
        changes = {**self._changed, **dict(values or {}), **more}
        if changes:
            _call(self._run._update_run, {"summary": changes})
        self._values.update(changes)
        self._changed.clear()

    def _pending(self) -> dict[str, Any]:
        changed, self._changed = self._changed, {}
        return changed

    def __repr__(self) -> str:
        return f"Summary({self._values!r})"


class Run:
    """One runstate run in W&B's shape (``Api().run(path)``)."""

    def __init__(self, obj: aio.Run, entity: str | None = None) -> None:
        self._set(obj)
        self._entity = entity

    def _set(self, obj: aio.Run) -> None:
        self._obj = obj
        self.id: str = obj.id
        self.name: str = obj.display_name or obj.id
        self.notes: str | None = obj.notes
        self.config: dict[str, Any] = dict(obj.config)
        self.tags: list[str] = sorted(obj.user_tags)
        self._summary: Summary | None = None
        self._saved = (self.name, self.notes, dict(self.config), list(self.tags))

    # -- attributes ------------------------------------------------------------

    @property
    def project(self) -> str:
        """The run's flow."""
        return self._obj.flow

    @property
    def entity(self) -> str | None:
        """The entity the run was asked for with, else its user (runstate has no entities)."""
        return self._entity if self._entity is not None else self._obj.user

    @property
    def path(self) -> str:
        """``entity/project/run_id`` (``project/run_id`` when there is no entity)."""
        entity = self.entity
        return "/".join(p for p in (entity, self.project, self.id) if p)

    @property
    def pathspec(self) -> str:
        """The run's runstate pathspec, ``Flow/run_id``."""
        return self._obj.pathspec

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def state(self) -> str:
        """``pending``, ``running``, ``finished``, ``failed``, ``killed`` or ``crashed``."""
        return STATES[self._obj.state]

    @property
    def created_at(self) -> str:
        """When the run was created, ISO 8601 (as W&B's ``createdAt``)."""
        return self._obj.created_at.isoformat()

    @property
    def user(self) -> str | None:
        return self._obj.user

    username = user

    @property
    def read_only(self) -> bool:
        """False: a runstate run's name, notes, tags, config and summary can be edited."""
        return False

    @property
    def json_config(self) -> str:
        """The config as W&B's JSON: ``{"key": {"value": ..., "desc": null}}``."""
        return json.dumps({k: {"value": v, "desc": None} for k, v in self.config.items()})

    @property
    def summary(self) -> Summary:
        """Each metric's latest value, overridden by ``summary.update`` (read once, then kept)."""
        if self._summary is None:
            self._summary = Summary(self, _call(self._obj.summary))
        return self._summary

    @property
    def system_metrics(self) -> dict[str, Any]:
        """The latest system metrics sampled for the run."""
        values: dict[str, Any] = _call(self._obj.system_metrics)
        return values

    @property
    def history_keys(self) -> dict[str, Any]:
        """``{"keys": {key: {}, ...}, "lastStep": step}`` as W&B's, of the default stream."""
        keys = _call(self._obj.history_keys)
        return {"keys": {key: {} for key in keys}, "lastStep": self.lastHistoryStep}

    @property
    def lastHistoryStep(self) -> int:
        """The last step logged, -1 before the first (as W&B's)."""
        step = _call(self._obj.last_history_step)
        return -1 if step is None else int(step)

    # -- metrics ---------------------------------------------------------------

    def history(
        self,
        samples: int = 500,
        keys: Sequence[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        stream: str = "default",
    ) -> Any:
        """Sampled history: the first, last, and each bucket's minimum, maximum and last
        point kept (deterministic, unlike W&B's); a DataFrame unless ``pandas=False``."""
        if pandas:
            _pandas()  # before the request: say what is missing
        return _call(lambda: self._obj.history(samples, keys, x_axis, pandas, stream))

    def scan_history(
        self,
        keys: Sequence[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every row from ``min_step`` to ``max_step``, ``page_size`` rows a request; with
        ``keys``, only rows that have all of them."""
        pages = self._obj._history().scan_pages(keys, page_size, min_step, max_step)
        try:
            while True:
                try:
                    page = _call(pages.__anext__)
                except StopAsyncIteration:
                    return
                yield from page
        finally:
            _call(pages.aclose)

    # -- changes ---------------------------------------------------------------

    def update(self) -> None:
        """Persist changes made here to ``name``, ``notes``, ``config``, ``tags`` and
        ``summary[key] = value`` (one event for all but the tags)."""
        name, notes, config, tags = self._saved
        changes: dict[str, Any] = {}
        if self.name != name:
            changes["name"] = self.name
        if self.notes != notes:
            changes["notes"] = self.notes
        removed = sorted(set(config) - set(self.config))
        if removed:
            raise BadFilter(
                f"config keys cannot be removed from a run ({', '.join(removed)}); "
                "set them to None instead"
            )
        changed = {k: v for k, v in self.config.items() if k not in config or config[k] != v}
        if changed:
            changes["config"] = changed
        if self._summary is not None:
            pending = self._summary._pending()
            if pending:
                changes["summary"] = pending
        if changes:
            _call(self._update_run, changes)
        if sorted(self.tags) != sorted(tags):
            _call(self._obj.replace_tags, list(tags), list(self.tags))
        self.load(force=True)

    save = update

    async def _update_run(self, changes: dict[str, Any]) -> None:
        await self._obj._client.update_run(self.pathspec, **changes)

    def load(self, force: bool = False) -> Run:
        """Read the run again (``force``: even if nothing was asked of it since)."""
        if force or self._summary is not None:
            self._set(_call(lambda: self._obj.refresh(after=self._obj._client.last_write)))
        return self

    def __repr__(self) -> str:
        return f"<Run {self.path} ({self.state})>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.pathspec == self.pathspec

    def __hash__(self) -> int:
        return hash(("wandb.Run", self.pathspec))


class Runs:
    """The runs of a project matching ``filters``, in ``order``, read a page at a time."""

    def __init__(
        self,
        project: str,
        entity: str | None,
        filters: Mapping[str, Any] | None,
        order: str,
        per_page: int,
    ) -> None:
        self.project = project
        self.entity = entity
        self.filters = dict(filters or {})
        self.order = order
        self._query = {**filters_to_query(self.filters), "sort": order_to_sort(order)}
        self._per_page = per_page
        self._loaded: list[Run] = []
        self._cursor: str | None = None
        self._done = False

    def _more(self) -> bool:
        if self._done:
            return False

        async def page() -> Any:
            client = _client()
            after = client.last_write or None if self._cursor is None else None
            return await client.runs(
                self.project,
                page_size=self._per_page,
                cursor=self._cursor,
                after=after,
                **self._query,
            )

        result = _call(page)
        self._loaded.extend(Run(obj, self.entity) for obj in result.items)
        self._cursor = result.next_cursor
        self._done = self._cursor is None
        return bool(result.items) or not self._done

    def __iter__(self) -> Iterator[Run]:
        index = 0
        while True:
            while index < len(self._loaded):
                yield self._loaded[index]
                index += 1
            if not self._more():
                return

    def __len__(self) -> int:
        while self._more():
            pass
        return len(self._loaded)

    def __getitem__(self, index: int) -> Run:
        while index >= len(self._loaded) and self._more():
            pass
        return self._loaded[index]

    def __repr__(self) -> str:
        return f"<Runs {self.project} filters={self.filters!r} order={self.order!r}>"


class Api:
    """W&B's ``wandb.Api``: runs by path, and lists of runs by filters and order.

    ``overrides`` may set ``entity`` and ``project`` (the defaults of paths
    that leave them out). ``timeout`` is accepted for W&B's signature; reads
    use the connection's own budget.
    """

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        api_key: str | None = None,
    ) -> None:
        overrides = dict(overrides or {})
        self.default_entity: str | None = overrides.get("entity")
        self.default_project: str | None = overrides.get("project")
        self.timeout = timeout

    def run(self, path: str = "") -> Run:
        """The run at ``project/run_id`` or ``entity/project/run_id``; ``NotFound`` if none."""
        entity, project, run_id = _split_path(path, self.default_entity)
        if run_id is None:
            if self.default_project is None:
                raise InvalidName(f"{path!r} names no run: use 'project/run_id'")
            project, run_id = self.default_project, project

        async def read() -> aio.Run:
            client = _client()  # read this process's writes, as W&B's API does
            return await client.run(f"{project}/{run_id}", after=client.last_write or None)

        return Run(_call(read), entity)

    def runs(
        self,
        path: str | None = None,
        filters: Mapping[str, Any] | None = None,
        order: str = "-created_at",
        per_page: int = 50,
        include_sweeps: bool = True,
    ) -> Runs:
        """The runs of a project (``entity/project`` or ``project``) matching ``filters``,
        a subset of W&B's MongoDB-style filters (see ``filters_to_query``)."""
        if path is None:
            if self.default_project is None:
                raise InvalidName("name a project: Api().runs('project') (a runstate flow)")
            entity, project = self.default_entity, self.default_project
        else:
            parts = path.strip("/").split("/")
            if len(parts) == 1:
                entity, project = self.default_entity, parts[0]
            elif len(parts) == 2:
                entity, project = parts[0], parts[1]
            else:
                raise InvalidName(f"a W&B project path is 'entity/project', not {path!r}")
        return Runs(project, entity, filters, order, per_page)

    def projects(self, entity: str | None = None) -> list[Project]:
        """Every project (runstate flow)."""

        async def flows() -> list[aio.Flow]:
            return await _client().flows()

        return [Project(flow.name, entity or self.default_entity) for flow in _call(flows)]

    def flush(self) -> None:
        """W&B clears its cache of runs here; this facade keeps none, so there is nothing
        to clear (reads always ask the query service)."""


class Project:
    """A W&B project: a runstate flow."""

    def __init__(self, name: str, entity: str | None) -> None:
        self.name = name
        self.entity = entity

    def __repr__(self) -> str:
        return f"<Project {self.name}>"


# -- filters and order -------------------------------------------------------------

_OPERATORS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _field(key: str) -> str | None:
    """A W&B filter or order key as runstate's ``summary.<key>``/``config.<key>``."""
    if key.startswith("summary_metrics."):
        return "summary." + key.removeprefix("summary_metrics.")
    if key.startswith("config."):
        name = key.removeprefix("config.")
        return "config." + name.removesuffix(".value")
    return None


def order_to_sort(order: str) -> str:
    """W&B's ``order`` (``-created_at``, ``+summary_metrics.acc``) as runstate's ``sort``."""
    descending = order.startswith("-")
    key = order.lstrip("+-")
    if key in ("created_at", "createdAt"):
        name = "created_at"
    elif key in ("finished_at", "duration"):
        name = key
    else:
        mapped = _field(key)
        if mapped is None:
            raise BadFilter(
                f"cannot order runs by {key!r}: use created_at, finished_at, duration, "
                "summary_metrics.<key> or config.<key>"
            )
        name = mapped
    return ("-" if descending else "") + name


def filters_to_query(filters: Mapping[str, Any]) -> dict[str, Any]:
    """W&B's MongoDB-style filters as ``client.runs`` keywords; ``BadFilter`` for the rest.

    Supported: ``state`` (a W&B state, or ``{"$in": [...]}``), ``tags``
    (``"t"``, ``{"$in": [...]}`` any of, ``{"$all": [...]}``), ``username``/``user``,
    ``created_at`` with ``$gt``/``$gte``/``$lt``/``$lte`` (ISO 8601),
    ``config.<key>`` (or ``config.<key>.value``) and ``summary_metrics.<key>``
    with a value or ``$eq``/``$ne``/``$gt``/``$gte``/``$lt``/``$lte``, and
    ``$and`` of such filters.
    """
    query: dict[str, Any] = {"tags": [], "any_tags": [], "where": []}
    _add_filters(filters, query)
    return {k: v for k, v in query.items() if v not in ([], None)}


def _add_filters(filters: Mapping[str, Any], query: dict[str, Any]) -> None:
    if not isinstance(filters, Mapping):
        raise BadFilter(f"filters are a dict (MongoDB style), not {type(filters).__name__}")
    for key, value in filters.items():
        if key == "$and":
            for part in value:
                _add_filters(part, query)
        elif key == "state":
            _add_state(value, query)
        elif key == "tags":
            _add_tags(value, query)
        elif key in ("username", "user"):
            query["user"] = value
        elif key in ("created_at", "createdAt"):
            _add_created(value, query)
        elif (field := _field(key)) is not None:
            conditions = value if isinstance(value, Mapping) else {"$eq": value}
            for op, operand in conditions.items():
                if op not in _OPERATORS:
                    raise BadFilter(
                        f"{op!r} on {key!r} is not supported: use {', '.join(_OPERATORS)}"
                    )
                query["where"].append((field, _OPERATORS[op], operand))
        else:
            raise BadFilter(
                f"cannot filter runs by {key!r} here: use state, tags, username, created_at, "
                "config.<key>, summary_metrics.<key> or $and"
            )


def _add_state(value: Any, query: dict[str, Any]) -> None:
    names = value["$in"] if isinstance(value, Mapping) and "$in" in value else [value]
    states: list[RunState] = []
    for name in names:
        if name not in _WANDB_STATES:
            raise BadFilter(
                f"unknown W&B state {name!r}: use one of {', '.join(sorted(_WANDB_STATES))}"
            )
        states += _WANDB_STATES[name]
    query["state"] = states


def _add_tags(value: Any, query: dict[str, Any]) -> None:
    if isinstance(value, str):
        query["tags"].append(value)
    elif isinstance(value, Mapping) and set(value) <= {"$in", "$all"}:
        query["any_tags"] += list(value.get("$in", ()))
        query["tags"] += list(value.get("$all", ()))
    else:
        raise BadFilter(f"tags filter {value!r}: use a tag, {{'$in': [...]}} or {{'$all': [...]}}")


def _time(value: Any) -> datetime:
    """An ISO 8601 time of a filter, UTC when it names no offset (W&B's times are UTC)."""
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise BadFilter(f"{value!r} is not an ISO 8601 time (2026-01-01T00:00:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _add_created(value: Any, query: dict[str, Any]) -> None:
    if not isinstance(value, Mapping):
        raise BadFilter("created_at filters by range: {'$gt': '2026-01-01T00:00:00Z'}")
    for op, operand in value.items():
        when = _time(operand)
        if op in ("$gt", "$gte"):
            query["created_after"] = when
        elif op in ("$lt", "$lte"):
            query["created_before"] = when
        else:
            raise BadFilter(f"{op!r} on created_at is not supported: use $gt, $gte, $lt, $lte")
