"""Names, pathspecs and the NATS subjects they map to."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstate.engine._names import (
    Pathspec,
    Subjects,
    check_artifact_name,
    check_flow_name,
    check_id,
    check_prefix,
    check_step_name,
    parse_pathspec,
)
from runstate.engine.errors import InvalidName

# Characters that would change a subject's meaning, and other bad input.
BAD_NAMES = [
    "",
    "a.b",
    "a*",
    "*",
    ">",
    "a>",
    "a b",
    " a",
    "a\n",
    "a/b",
    "tràin",
    "日本",
    "a\x00",
]

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,127}", fullmatch=True)
ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
prefixes = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


@pytest.mark.parametrize("check", [check_flow_name, check_step_name])
@pytest.mark.parametrize("name", ["Train", "_private", "a", "A1_b2", "x" * 128])
def test_valid_flow_and_step_names(check: Callable[[str], str], name: str) -> None:
    """Flow and step names are a letter or _ then up to 127 letters, digits or _."""
    assert check(name) == name


@pytest.mark.parametrize("check", [check_flow_name, check_step_name])
@pytest.mark.parametrize("name", [*BAD_NAMES, "1train", "-a", "a-b", "x" * 129])
def test_invalid_flow_and_step_names(check: Callable[[str], str], name: str) -> None:
    """A bad flow or step name is refused with a message quoting it and saying what is allowed."""
    with pytest.raises(InvalidName) as info:
        check(name)
    assert repr(name) in str(info.value)
    assert "letter" in str(info.value)


@pytest.mark.parametrize("check", [check_flow_name, check_step_name])
@pytest.mark.parametrize("value", [None, 42, b"Train"])
def test_flow_and_step_names_must_be_strings(check: Callable[[object], str], value: object) -> None:
    """A flow or step name that is not a str is refused, not crashed on."""
    with pytest.raises(InvalidName):
        check(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("42", "42"), (42, "42"), (0, "0"), ("run-7_b", "run-7_b"), ("x" * 64, "x" * 64)],
)
def test_valid_ids(value: str | int, expected: str) -> None:
    """Run and task ids are 1 to 64 letters, digits, '_' or '-', given as str or int."""
    assert check_id(value) == expected


@pytest.mark.parametrize("value", [*BAD_NAMES, "x" * 65, 10**70])
def test_invalid_ids(value: str | int) -> None:
    """A bad id is refused, naming what kind of id it is."""
    with pytest.raises(InvalidName) as info:
        check_id(value, "run id")
    assert "run id" in str(info.value)
    assert "64" in str(info.value)


@pytest.mark.parametrize("value", [True, False, None, 4.2, b"42"])
def test_ids_must_be_str_or_int(value: object) -> None:
    """A bool, float, bytes or None is not an id, even where it would print as one."""
    with pytest.raises(InvalidName) as info:
        check_id(value)  # type: ignore[arg-type]
    assert "string or an integer" in str(info.value)


def test_artifact_names() -> None:
    """Artifact names are Python identifiers of up to 128 characters."""
    assert check_artifact_name("model_v2") == "model_v2"
    for bad in ["2model", "model-v2", "x" * 129, "", "a.b"]:
        with pytest.raises(InvalidName):
            check_artifact_name(bad)


def test_prefixes() -> None:
    """A subject prefix is one token of letters, digits, '_' or '-'."""
    assert check_prefix("rs") == "rs"
    assert Subjects("team-a").prefix == "team-a"
    for bad in ["", "a.b", "rs*", "r s", "x" * 33]:
        with pytest.raises(InvalidName):
            check_prefix(bad)
        with pytest.raises(InvalidName):
            Subjects(bad)


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("Train", Pathspec("Train"), "flow"),
        ("Train/42", Pathspec("Train", "42"), "run"),
        ("Train/42/train", Pathspec("Train", "42", "train"), "step"),
        ("Train/42/train/7", Pathspec("Train", "42", "train", "7"), "task"),
        ("Train/42/train/7/model", Pathspec("Train", "42", "train", "7", "model"), "artifact"),
    ],
)
def test_parse_pathspec_at_each_depth(text: str, expected: Pathspec, kind: str) -> None:
    """A pathspec parses at every depth, knows its kind and prints back unchanged."""
    path = parse_pathspec(text)
    assert path == expected
    assert path.kind == kind
    assert path.depth == text.count("/") + 1
    assert str(path) == text


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("Tr.ain/42", "flow name"),
        ("Train/4 2", "run id"),
        ("Train/42/tr*ain", "step name"),
        ("Train/42/train/>", "task id"),
        ("Train/42/train/7/not-an-identifier", "artifact name"),
        ("Train//train", "run id"),
        ("Train/42/", "step name"),
    ],
)
def test_parse_pathspec_names_the_bad_part(text: str, part: str) -> None:
    """A malformed pathspec is refused with a message naming the part that is wrong."""
    with pytest.raises(InvalidName) as info:
        parse_pathspec(text)
    assert part in str(info.value)


def test_parse_pathspec_depth_limits() -> None:
    """min_depth and max_depth refuse other depths and say which forms are expected."""
    assert parse_pathspec("Train/42", min_depth=2, max_depth=2).run == "42"
    with pytest.raises(InvalidName) as info:
        parse_pathspec("Train", min_depth=2, max_depth=4)
    assert "Flow/run or Flow/run/step or Flow/run/step/task" in str(info.value)
    with pytest.raises(InvalidName) as info:
        parse_pathspec("Train/42/train/7/model", max_depth=4)
    assert "Flow/run/step/task" in str(info.value)
    with pytest.raises(InvalidName):
        parse_pathspec("a/1/b/2/c/d")
    for bad in ["", None, 42]:
        with pytest.raises(InvalidName):
            parse_pathspec(bad)  # type: ignore[arg-type]


def test_pathspec_parents() -> None:
    """A pathspec gives its run's and task's pathspecs, and refuses when it has none."""
    artifact = parse_pathspec("Train/42/train/7/model")
    assert artifact.run_pathspec == "Train/42"
    assert artifact.task_pathspec == "Train/42/train/7"
    with pytest.raises(InvalidName):
        _ = Pathspec("Train").run_pathspec
    with pytest.raises(InvalidName):
        _ = Pathspec("Train", "42", "train").task_pathspec


def test_subjects_of_objects() -> None:
    """Each object maps to the subject (filter) DESIGN.md section 3 gives it."""
    s = Subjects()
    assert s.run("Train", "42") == "rs.ev.Train.42.r"
    assert s.task("Train", "42", "train", "7") == "rs.ev.Train.42.t.train.7"
    assert s.run_all("Train", "42") == "rs.ev.Train.42.>"
    assert s.step_all("Train", "42", "train") == "rs.ev.Train.42.t.train.*"
    assert s.flow_all("Train") == "rs.ev.Train.>"
    assert s.all_events == "rs.ev.>"
    assert s.for_pathspec(parse_pathspec("Train")) == s.flow_all("Train")
    assert s.for_pathspec(parse_pathspec("Train/42")) == s.run_all("Train", "42")
    assert s.for_pathspec(parse_pathspec("Train/42/train")) == s.step_all("Train", "42", "train")
    assert s.for_pathspec(parse_pathspec("Train/42/train/7")) == s.task("Train", "42", "train", "7")


def test_subjects_of_other_streams() -> None:
    """Streams, buckets and the other subjects follow the prefix."""
    s = Subjects("team")
    assert s.events_stream == "TEAM_EVENTS"
    assert s.heartbeats_stream == "TEAM_HEARTBEATS"
    assert s.idempotency_bucket == "team_idempotency"
    assert s.heartbeat(parse_pathspec("Train/42")) == "team.hb.Train.42.r"
    assert s.heartbeat(parse_pathspec("Train/42/train/7")) == "team.hb.Train.42.t.train.7"
    assert s.run_counter("Train") == "team.ctr.runid.Train"
    assert s.task_counter("Train", "42") == "team.ctr.taskid.Train.42"
    assert s.deadletter(17) == "team.dlq.17"
    assert s.service_name == "team-query"


def test_pathspec_of_refuses_other_subjects() -> None:
    """A subject that is not a run or task events subject is refused."""
    s = Subjects()
    for bad in ["rs.ev.Train.42", "rs.hb.Train.42.r", "rs.ev.Train.42.t.train", "rs.ev.Train.42.x"]:
        with pytest.raises(InvalidName):
            s.pathspec_of(bad)


def test_pathspec_of_checks_the_prefix() -> None:
    """A subject under another prefix is not one of this prefix's events subjects."""
    with pytest.raises(InvalidName):
        Subjects("rs").pathspec_of("xx.ev.Train.42.r")


@settings(max_examples=100, deadline=None)
@given(prefix=prefixes, flow=names, run=ids, step=names, task=ids)
def test_pathspec_of_round_trips(prefix: str, flow: str, run: str, step: str, task: str) -> None:
    """pathspec_of inverts run() and task() for every valid name."""
    s = Subjects(prefix)
    assert s.pathspec_of(s.run(flow, run)) == Pathspec(flow, run)
    assert s.pathspec_of(s.task(flow, run, step, task)) == Pathspec(flow, run, step, task)
    assert parse_pathspec(str(Pathspec(flow, run, step, task))) == Pathspec(flow, run, step, task)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=20))
def test_parse_pathspec_never_crashes(text: str) -> None:
    """Any text either parses to a pathspec that prints back the same, or is InvalidName."""
    try:
        path = parse_pathspec(text)
    except InvalidName:
        return
    assert str(path) == text
