"""The blocking W&B facade: seed 004's Run examples, with the import line changed.

The world is written through the async client (runs with parameters,
metric rows logged on the run, names, notes and summary updates) and read
back through ``runstate.client.wandb.Api`` against a real nats-server.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _workload import caught_up, facade_world
from hypothesis import given
from hypothesis import strategies as st

from runstate.client import RunState
from runstate.client import connect as connect_async
from runstate.client.wandb import STATES, Api, filters_to_query, order_to_sort
from runstate.engine.errors import BadFilter, ConfigurationError, InvalidName, NotFound

#: run id -> (lr, final state, accuracies logged per step)
RUNS: dict[str, tuple[float, RunState, list[float]]] = {
    "1": (0.1, RunState.COMPLETED, [0.5, 0.7, 0.95, 0.9]),
    "2": (0.01, RunState.COMPLETED, [0.4, 0.6, 0.8]),
    "3": (0.001, RunState.FAILED, [0.2, 0.3]),
    "4": (0.05, RunState.RUNNING, [0.6, 0.85]),
}


@dataclass
class World:
    user: str


async def _write_world(url: str, data_dir: Path) -> World:
    async with connect_async(url, projector=False, data_dir=data_dir) as client:
        for run_id, (lr, final, accs) in RUNS.items():
            run = await client.create_run(
                "Train", run_id=run_id, parameters={"lr": lr, "epochs": len(accs)}, tags=["exp"]
            )
            await run.start()
            for acc in accs:
                await run.log({"acc": acc, "loss": 1 - acc})
            await run.flush()
            if final is not RunState.RUNNING:
                await (run.complete() if final is RunState.COMPLETED else run.fail("diverged"))
        first = await client.run_handle("Train/1")
        await first.set_name("baseline")
        await first.set_notes("the first try")
        await first.update_config({"optimizer": "adam"})
        await first.update_summary({"best_acc": 0.95})
        return World(client.settings.user)


async def _caught_up_with_points(client: Any) -> None:
    await caught_up(client)
    last = await client.log.points.last_sequence()
    run = await client.run("Train/1")
    await run.history_keys(after=last)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with facade_world(
        tmp_path_factory.mktemp("wandb"), _write_world, _caught_up_with_points
    ) as written:
        yield written


def test_run_attributes(world: World) -> None:
    """`api.run("entity/project/run_id")` and seed 004's attributes."""
    run = Api().run("team/Train/1")
    assert (run.id, run.name, run.notes, run.project, run.entity) == (
        "1",
        "baseline",
        "the first try",
        "Train",
        "team",
    )
    assert run.path == "team/Train/1"
    assert run.state == "finished"
    assert run.config == {"lr": 0.1, "epochs": 4, "optimizer": "adam"}
    assert '"optimizer": {"value": "adam", "desc": null}' in run.json_config
    assert run.tags == ["exp"]
    assert run.user == run.username == world.user
    assert run.created_at.startswith("20")
    assert run.read_only is False
    assert Api().run("Train/2").name == "2"  # no display name: the id, as W&B's default
    assert Api().run("team/Train/runs/3").state == "failed"  # W&B's URL form
    assert Api().run("Train/4").state == "running"
    assert Api().run("Train/1").entity == world.user  # no entity asked for: the run's user


def test_history_is_sampled_deterministically(world: World) -> None:
    """`run.history()` is a DataFrame by default; the same call gives the same rows."""
    run = Api().run("Train/1")
    frame = run.history()
    assert list(frame["_step"]) == [0, 1, 2, 3]
    assert list(frame["acc"]) == RUNS["1"][2]
    assert run.history(pandas=False, keys=["loss"]) == run.history(pandas=False, keys=["loss"])
    rows = run.history(samples=8, keys=["acc"], pandas=False)
    assert [row["acc"] for row in rows] == RUNS["1"][2]  # fewer rows than samples: all


def test_scan_history_example(world: World) -> None:
    """Seed 004's example: export every loss value of a run."""
    api = Api()
    run = api.run("Train/1")
    history = run.scan_history(keys=["loss"])
    losses = [row["loss"] for row in history]
    assert losses == pytest.approx([1 - a for a in RUNS["1"][2]])
    assert [r["_step"] for r in run.scan_history(min_step=1, max_step=2, page_size=1)] == [1, 2]


def test_summary_keys_and_steps(world: World) -> None:
    run = Api().run("Train/2")
    assert run.summary["acc"] == 0.8
    assert math.isclose(run.summary["loss"], 0.2)
    assert set(run.history_keys["keys"]) == {"acc", "loss"}
    assert run.lastHistoryStep == 2
    assert run.system_metrics == {}
    first = Api().run("Train/1")
    assert first.summary["best_acc"] == 0.95  # the explicit update
    assert first.summary["acc"] == 0.9  # the last logged value


def test_summary_update_persists(world: World) -> None:
    """`run.summary.update({...})` persists at once, as W&B's does."""
    run = Api().run("Train/3")
    run.summary.update({"note_score": 7})
    assert Api().run("Train/3").summary["note_score"] == 7


def test_update_persists_name_notes_config_tags(world: World) -> None:
    run = Api().run("Train/2")
    run.name = "lower-lr"
    run.notes = "tried 0.01"
    run.config["batch"] = 64
    run.tags.append("keep")
    run.summary["checked"] = True
    run.update()
    again = Api().run("Train/2")
    assert (again.name, again.notes) == ("lower-lr", "tried 0.01")
    assert again.config["batch"] == 64 and again.config["lr"] == 0.01
    assert again.tags == ["exp", "keep"]
    assert again.summary["checked"] is True


def test_removing_a_config_key_is_refused(world: World) -> None:
    run = Api().run("Train/4")
    del run.config["epochs"]
    with pytest.raises(BadFilter, match="cannot be removed"):
        run.update()


def test_runs_filtered_and_ordered_by_summary(world: World) -> None:
    runs = Api().runs(
        "Train", filters={"summary_metrics.acc": {"$gt": 0.7}}, order="-summary_metrics.acc"
    )
    assert [run.id for run in runs] == ["1", "4", "2"]
    assert len(runs) == 3
    assert runs[1].id == "4"


def test_runs_by_state_tags_and_config(world: World) -> None:
    api = Api()
    finished = api.runs("Train", filters={"state": "finished"}, order="+created_at")
    assert [run.id for run in finished] == ["1", "2"]
    lr = api.runs("entity/Train", {"config.lr.value": {"$lte": 0.01}}, order="config.lr")
    assert [run.id for run in lr] == ["3", "2"]
    tagged = api.runs("Train", {"tags": {"$in": ["exp"]}, "state": {"$in": ["failed", "running"]}})
    assert sorted(run.id for run in tagged) == ["3", "4"]
    paged = api.runs("Train", per_page=1, order="+created_at")
    assert [run.id for run in paged] == ["1", "2", "3", "4"]


def test_default_project_and_projects(world: World) -> None:
    api = Api(overrides={"project": "Train", "entity": "team"})
    assert api.run("3").path == "team/Train/3"
    assert len(api.runs()) == 4
    assert "Train" in [p.name for p in api.projects()]


def test_missing_run_and_bad_paths(world: World) -> None:
    with pytest.raises(NotFound):
        Api().run("Train/404")
    with pytest.raises(InvalidName):
        Api().run("a/b/c/d/e")
    with pytest.raises(InvalidName):
        Api().run("Train")  # no default project to read a run id against


def test_pandas_missing_names_the_extra(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigurationError, match=r"runstate\[pandas\]"):
        Api().run("Train/1").history()


# -- translation of filters and order (pure) --------------------------------------------


def test_filters_translate_to_client_runs_keywords() -> None:
    query = filters_to_query(
        {
            "$and": [
                {"config.lr": {"$gte": 0.01, "$lt": 0.1}},
                {"summary_metrics.acc": 0.9},
            ],
            "tags": {"$all": ["a"], "$in": ["b", "c"]},
            "username": "alice",
            "created_at": {"$gt": "2026-01-01T00:00:00"},
        }
    )
    assert query["where"] == [
        ("config.lr", ">=", 0.01),
        ("config.lr", "<", 0.1),
        ("summary.acc", "=", 0.9),
    ]
    assert (query["tags"], query["any_tags"], query["user"]) == (["a"], ["b", "c"], "alice")
    assert query["created_after"].tzinfo is not None  # W&B's times are UTC


@pytest.mark.parametrize(
    "filters",
    [
        {"$or": [{"state": "finished"}]},
        {"display_name": {"$regex": "x"}},
        {"state": "sleeping"},
        {"config.lr": {"$exists": True}},
        {"created_at": "2026-01-01"},
        {"created_at": {"$gt": "not a time"}},
        {"tags": {"$nin": ["x"]}},
    ],
)
def test_unsupported_filters_are_bad_filters(filters: dict[str, Any]) -> None:
    with pytest.raises(BadFilter):
        filters_to_query(filters)


def test_order_translates() -> None:
    assert order_to_sort("-created_at") == "-created_at"
    assert order_to_sort("+summary_metrics.acc") == "summary.acc"
    assert order_to_sort("-config.lr.value") == "-config.lr"
    with pytest.raises(BadFilter, match="cannot order"):
        order_to_sort("-heartbeat_at")


@given(st.sampled_from(list(RunState)))
def test_every_state_reads_as_a_wandb_state_and_back(state: RunState) -> None:
    name = STATES[state]
    assert state in filters_to_query({"state": name})["state"]
