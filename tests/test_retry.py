"""The one retry loop and the subject matching of the in-memory log: pure logic."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstate.engine._names import subject_matches
from runstate.engine._retry import TransientRefusal, retry, transient_api_error
from runstate.engine.errors import RunstateError, Unavailable

pytestmark = pytest.mark.anyio


async def test_retry_asks_again_after_transient_faults_until_it_succeeds() -> None:
    """Transient faults are retried; the operation's result comes back."""
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise TransientRefusal("leader changed")
        return "stored"

    result = await retry(
        flaky, budget=5.0, give_up=lambda exc: Unavailable(str(exc)), first_delay=0.001
    )
    assert result == "stored" and len(tries) == 3


async def test_retry_gives_up_with_the_callers_error_once_the_budget_is_spent() -> None:
    """A fault that never passes ends in ``give_up(fault)``, raised without a chain."""

    async def always() -> None:
        raise TransientRefusal("still electing")

    with pytest.raises(Unavailable, match="still electing") as info:
        await retry(always, budget=0.05, give_up=lambda exc: Unavailable(f"gave up: {exc}"))
    assert info.value.__cause__ is None


async def test_retry_lets_any_other_error_through_at_once() -> None:
    """A non-transient error is raised on the first try."""
    tries: list[int] = []

    async def refused() -> None:
        tries.append(1)
        raise RunstateError("refused for good")

    with pytest.raises(RunstateError, match="for good"):
        await retry(refused, budget=5.0, give_up=lambda exc: Unavailable(str(exc)))
    assert len(tries) == 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ({"err_code": 10008, "code": 503}, True),
        ({"err_code": 10163}, True),
        ({"code": 503}, True),
        ({"err_code": 10071, "code": 400}, False),
        ({"err_code": 10058, "code": 400}, False),
    ],
)
def test_transient_api_errors_are_the_ones_a_cluster_gives_while_electing(
    error: dict[str, int], transient: bool
) -> None:
    """Leader elections and 503s are transient; conflicts and refusals are not."""
    assert transient_api_error(error) is transient


_TOKEN = st.sampled_from(["a", "b", "rs", "ev", "x1"])
_SUBJECT = st.lists(_TOKEN, min_size=1, max_size=5).map(".".join)
_PATTERN = st.lists(st.one_of(_TOKEN, st.just("*")), min_size=1, max_size=5).flatmap(
    lambda tokens: st.sampled_from([".".join(tokens), ".".join([*tokens, ">"])])
)


def _reference(pattern: str, subject: str) -> bool:
    """NATS matching as a regular expression: ``*`` one token, a final ``>`` one or more."""
    parts = []
    for token in pattern.split("."):
        parts.append(
            r"[^.]+" if token == "*" else (r"[^.]+(\.[^.]+)*" if token == ">" else re.escape(token))
        )
    return re.fullmatch(r"\.".join(parts), subject) is not None


@given(pattern=_PATTERN, subject=_SUBJECT)
def test_subject_matching_is_nats_matching(pattern: str, subject: str) -> None:
    """The in-memory log matches subject filters as nats-server does."""
    assert subject_matches(pattern, subject) == _reference(pattern, subject)
