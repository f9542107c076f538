"""A task's log lines through the whole runstate in memory: capture, write_log, reads, tails."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runstate.client import BadFilter, Client, InvalidEvent, LogLine, Task, Unavailable
from runstate.client.testing import in_memory
from runstate.engine import MemoryEventLog, Settings
from runstate.engine._capture import capturing
from runstate.engine._lines import STDOUT, decode_lines, max_line_chars
from runstate.engine._log_writer import LogBuffer
from runstate.engine._worker import Writer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A client of a runstate in memory."""
    async with in_memory(Settings(retry_budget=0.5)) as client:
        yield client


def _memory_log(client: Client) -> MemoryEventLog:
    assert isinstance(client.log, MemoryEventLog)
    return client.log


async def _task(client: Client, pathspec: str) -> Task:
    """The task, once the projector has applied everything written so far."""
    return await client.task(pathspec, after=await client.log.stream_last_sequence())


async def _read(client: Client, pathspec: str, stream: str = "stdout") -> str:
    """What the task's latest attempt wrote to ``stream``."""
    return await (await _task(client, pathspec)).logs(stream)


async def test_eight_concurrent_tasks_each_get_their_own_output_complete_and_in_order(
    client: Client,
) -> None:
    """Prints, log records and a thread's prints of 8 tasks running at once land on the right
    task, every line, in the order written."""
    run = await client.create_run("Train")
    pathspecs: dict[int, str] = {}
    logger = logging.getLogger("user.train")

    def from_a_thread(i: int) -> None:
        for n in range(20):
            print(f"task {i} thread {n}")

    async def one(i: int) -> None:
        async with run.task("train", index=i) as task:
            pathspecs[i] = task.pathspec
            for n in range(100):
                print(f"task {i} line {n}")
                if n % 25 == 0:
                    logger.warning("task %d record %d", i, n)
                await anyio.lowlevel.checkpoint()
            await anyio.to_thread.run_sync(from_a_thread, i)
            print(f"task {i} done")

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    for i, pathspec in pathspecs.items():
        expected = [f"task {i} line {n}" for n in range(100)]
        expected += [f"task {i} thread {n}" for n in range(20)] + [f"task {i} done"]
        assert (await _read(client, pathspec)).splitlines() == expected
        records = [f"WARNING:user.train:task {i} record {n}" for n in range(0, 100, 25)]
        assert (await _read(client, pathspec, "stderr")).splitlines() == records


async def test_print_stderr_logging_and_write_log_land_once_each_in_order(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """print, sys.stderr, a logging record and write_log all reach the task's log, a record
    written by a StreamHandler to stderr once; the terminal still sees the output."""
    run = await client.create_run("Train")
    handler: logging.Handler | None = None
    try:
        async with run.task("train") as task:
            handler = logging.StreamHandler()  # writes to sys.stderr, here the tee
            logging.getLogger().addHandler(handler)
            print("one")
            sys.stderr.write("err one\n")
            logging.getLogger("user").error("a record")
            await task.write_log("two\nthree", stream="stdout")
            await task.write_log("err two", stream="stderr")
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
    assert await _read(client, task.pathspec) == "one\ntwo\nthree\n"
    assert await _read(client, task.pathspec, "stderr") == (
        "err one\nERROR:user:a record\nerr two\n"
    )
    seen = capsys.readouterr()
    assert seen.out == "one\n" and "err one\n" in seen.err and "a record" in seen.err


async def test_a_task_without_capture_keeps_only_what_write_log_writes(client: Client) -> None:
    """capture_output=False leaves print and logging alone; write_log still writes."""
    run = await client.create_run("Train")
    async with run.task("train", capture_output=False) as task:
        print("not captured")
        logging.getLogger("user").warning("not captured either")
        await task.write_log("written")
    assert await _read(client, task.pathspec) == "written\n"
    assert await _read(client, task.pathspec, "stderr") == ""


async def test_output_outside_any_task_block_is_left_alone(client: Client) -> None:
    """A print in another task (not started inside the block) goes to no task, and stdout
    is itself again once the last capturing block exits."""
    run = await client.create_run("Train")
    before = sys.stdout
    entered, printed = anyio.Event(), anyio.Event()

    async def outsider() -> None:
        await entered.wait()
        print("from outside")
        printed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(outsider)
        async with run.task("train") as task:
            assert sys.stdout is not before
            entered.set()
            await printed.wait()
            print("from inside")
    assert sys.stdout is before
    assert await _read(client, task.pathspec) == "from inside\n"


async def test_partial_lines_are_joined_until_their_newline_or_the_blocks_exit(
    client: Client,
) -> None:
    """print(end="") pieces make one line with the time of its first piece; an unended line
    is sent at the block's exit."""
    run = await client.create_run("Train")
    async with run.task("train") as task:
        print("a", end="")
        print("b", end="")
        print("c")
        print("x\ny", end="")
        print("z", end="")
    assert await _read(client, task.pathspec) == "abc\nx\nyz"
    lines = [line async for line in (await _task(client, task.pathspec)).log_lines()]
    assert [line.text for line in lines] == ["abc\n", "x\n", "yz"]
    assert all(isinstance(line, LogLine) and line.stream == "stdout" for line in lines)


async def test_runstates_own_records_are_not_a_tasks_output(client: Client) -> None:
    """Records of runstate's loggers are not captured into the task's stderr."""
    run = await client.create_run("Train")
    async with run.task("train") as task:
        logging.getLogger("runstate.worker").warning("runstate says")
        logging.getLogger("user").warning("user says")
    assert await _read(client, task.pathspec, "stderr") == "WARNING:user:user says\n"


async def test_a_failed_flush_raises_and_the_next_sends_the_batch_once(client: Client) -> None:
    """A flush whose ack is lost raises Unavailable; the next one resends the same commit id
    and the batch is stored once."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    lines = _memory_log(client).lines
    append = lines.append
    ids: list[str] = []

    async def ack_lost_once(subject: str, data: bytes, commit_id: str) -> Any:
        ids.append(commit_id)
        receipt = await append(subject, data, commit_id)
        if len(ids) == 1:
            raise Unavailable("the ack was lost", commit_id=commit_id)
        return receipt

    lines.append = ack_lost_once  # type: ignore[method-assign]
    await task.write_log("once")
    with pytest.raises(Unavailable):
        await task.flush_logs()
    receipt = await task.flush_logs()
    assert receipt is not None and receipt.duplicate
    assert ids[0] == ids[1]
    assert len(lines.messages) == 1
    assert await (await _task(client, task.pathspec)).logs() == "once\n"


async def test_lines_left_by_a_failing_flush_are_sent_when_the_block_exits(
    client: Client,
) -> None:
    """Flushes that fail while the block runs lose nothing: its exit sends every line."""
    run = await client.create_run("Train")
    lines = _memory_log(client).lines
    failing = True

    def refuse() -> None:
        if failing:
            raise Unavailable("down")

    lines.before_append = refuse
    async with run.task("train") as task:
        for n in range(5):
            print(f"line {n}")
        with pytest.raises(Unavailable):
            await task.flush_logs()
        failing = False
    assert await _read(client, task.pathspec) == "".join(f"line {n}\n" for n in range(5))


async def test_long_lines_are_cut_in_pieces_every_batch_within_the_payload_limit(
    client: Client,
) -> None:
    """A line longer than a message can hold is split; the pieces give it back whole."""
    log = MemoryEventLog(Settings(), max_payload=64 * 1024)
    handle = await Writer(log).create_run("Train")
    long = "é\x01" * 40_000 + "\n"
    async with handle.task("train") as task:
        print(long, end="")
        for n in range(3000):
            print(f"short {n}")
    sizes = [len(data) for _, _, data in log.lines.messages]
    assert max(sizes) <= log.max_payload and len(sizes) > 1
    pieces = [line for _, _, data in log.lines.messages for line in decode_lines(data).lines()]
    limit = max_line_chars(log.max_payload)
    assert all(len(piece[2]) <= limit for piece in pieces)
    assert "".join(piece[2] for piece in pieces) == long + "".join(
        f"short {n}\n" for n in range(3000)
    )
    assert task.pathspec.endswith("/train/1")


async def test_write_log_refuses_another_stream_or_a_non_string_before_buffering(
    client: Client,
) -> None:
    """write_log takes 'stdout' or 'stderr' and a string, else InvalidEvent."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    with pytest.raises(InvalidEvent, match="stdout"):
        await task.write_log("x", stream="stdlog")
    with pytest.raises(InvalidEvent, match="string"):
        await task.write_log(b"x")  # type: ignore[arg-type]
    assert await task.flush_logs() is None


async def test_each_attempt_has_its_own_lines(client: Client) -> None:
    """A retried task's lines are its latest attempt's; attempt=0 reads the first one's."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    await task.write_log("first try")
    await task.fail("boom")
    await task.retry()
    async with task.attempting():
        print("second try")
    latest = await _task(client, task.pathspec)
    assert latest.attempt == 1 and await latest.logs() == "second try\n"
    first = await client.task(task.pathspec, attempt=0)
    assert await first.logs() == "first try\n"


async def test_log_lines_resume_exactly_after_a_position(client: Client) -> None:
    """after= a line's position gives the lines after it; a stream filter keeps one stream."""
    run = await client.create_run("Train")
    async with run.task("train", capture_output=False) as task:
        await task.write_log("a\nb")
        await task.flush_logs()
        await task.write_log("c", stream="stderr")
        await task.write_log("d\ne")
    view = await _task(client, task.pathspec)
    lines = [line async for line in view.log_lines()]
    assert [line.text for line in lines] == ["a\n", "b\n", "c\n", "d\n", "e\n"]
    for at in range(len(lines)):
        rest = [line.text async for line in view.log_lines(after=lines[at].position)]
        assert rest == [line.text for line in lines[at + 1 :]]
    only_out = [line.text async for line in view.log_lines("stdout", after=lines[0].position)]
    assert only_out == ["b\n", "d\n", "e\n"]
    with pytest.raises(BadFilter):
        await view.logs("stdlog")


async def test_a_follow_goes_from_history_into_live_lines_with_no_gap_or_repeat(
    client: Client,
) -> None:
    """follow_logs gives the lines stored after its position, then each new one, once; a
    follow resumed from the last line it gave continues right after it."""
    run = await client.create_run("Train")
    task = await run.create_task("train", start=True)
    for n in range(3):
        await task.write_log(f"old {n}")
        await task.flush_logs()
    view = await _task(client, task.pathspec)
    seen: list[LogLine] = []
    with anyio.fail_after(10):
        async with view.follow_logs() as lines:
            async for line in lines:
                seen.append(line)
                if len(seen) == 3:
                    await task.write_log("new 0\nnew 1")
                    await task.flush_logs()
                if len(seen) == 5:
                    break
        await task.write_log("later")
        await task.flush_logs()
        async with view.follow_logs(after=seen[3].position) as lines:
            resumed = [line.text async for line, _ in _zip_count(lines, 2)]
    assert [line.text for line in seen] == ["old 0\n", "old 1\n", "old 2\n", "new 0\n", "new 1\n"]
    assert resumed == ["new 1\n", "later\n"]


async def _zip_count(
    lines: AsyncIterator[LogLine], count: int
) -> AsyncIterator[tuple[LogLine, int]]:
    n = 0
    async for line in lines:
        yield line, n
        n += 1
        if n == count:
            return


def test_a_thread_with_the_tasks_context_writes_to_the_task() -> None:
    """A thread run in a copy of the block's context (contextvars) writes to its buffer;
    a thread without it writes to no task."""
    log = MemoryEventLog(Settings())
    buffer = LogBuffer(log, "Train/1/train/1", 0)
    with capturing(buffer):
        context = contextvars.copy_context()
        with_context = threading.Thread(target=context.run, args=(print, "inside"))
        without = threading.Thread(target=print, args=("outside",))
        for thread in (with_context, without):
            thread.start()
            thread.join()
    assert buffer._lines == [(buffer._lines[0][0], STDOUT, "inside\n")]


def test_the_logs_command_explains_itself_with_an_example() -> None:
    """``runstate logs --help`` names its options and shows an example."""
    from click.testing import CliRunner

    from runstate.client.cli import cli

    result = CliRunner().invoke(cli, ["logs", "--help"])
    assert result.exit_code == 0
    assert all(part in result.output for part in ("--stderr", "--follow", "--attempt", "Example"))


async def test_a_record_no_other_handler_takes_still_reaches_the_terminal_once(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no logging handler configured, a warning goes to the terminal as logging's last
    resort would have sent it, and to the task's stderr once."""
    run = await client.create_run("Train")
    root = logging.getLogger()
    async with run.task("train") as task:
        others = [handler for handler in root.handlers if type(handler).__name__ != "_TaskHandler"]
        for handler in others:  # pytest's own capture handlers
            root.removeHandler(handler)
        try:
            logging.getLogger("user").warning("nobody configured logging")
        finally:
            for handler in others:
                root.addHandler(handler)
    assert capsys.readouterr().err == "nobody configured logging\n"
    assert (
        await _read(client, task.pathspec, "stderr") == "WARNING:user:nobody configured logging\n"
    )


def _written(text: str, cuts: list[int], max_line: int | None = None) -> list[str]:
    """The texts of the lines a buffer keeps of ``text`` written in pieces cut at ``cuts``."""
    buffer = LogBuffer(MemoryEventLog(Settings()), "Train/1/train/1", 0)
    if max_line is not None:
        buffer._max_line = max_line
    at = 0
    for cut in sorted(cuts):
        buffer.write(STDOUT, text[at:cut])
        at = max(at, cut)
    buffer.write(STDOUT, text[at:])
    buffer.end_lines()
    return [line[2] for line in buffer._lines]


@given(st.text(alphabet="ab\n", max_size=120), st.lists(st.integers(0, 120), max_size=12))
def test_lines_do_not_depend_on_how_the_writes_were_cut(text: str, cuts: list[int]) -> None:
    """However a text is cut into writes, the buffer keeps its lines, each newline ending one."""
    assert _written(text, cuts) == text.splitlines(keepends=True)


@given(st.text(alphabet="ab\n", max_size=120), st.lists(st.integers(0, 120), max_size=12))
def test_long_lines_come_back_whole_from_pieces_within_the_limit(
    text: str, cuts: list[int]
) -> None:
    """With a small line limit every piece fits it and the pieces concatenate to the text."""
    pieces = _written(text, cuts, max_line=5)
    assert all(0 < len(piece) <= 5 for piece in pieces)
    assert "".join(pieces) == text


async def test_a_failing_blocks_traceback_ends_its_stderr(client: Client) -> None:
    """The exception a task block raises is written to the end of its stderr, as Metaflow's."""
    run = await client.create_run("Train")
    with pytest.raises(ValueError, match="boom"):
        async with run.task("train") as task:
            print("working")
            raise ValueError("boom")
    stderr = await _read(client, task.pathspec, "stderr")
    assert stderr.startswith("Traceback (most recent call last):\n")
    assert stderr.endswith("ValueError: boom\n")
    assert await _read(client, task.pathspec) == "working\n"


async def test_printed_lines_reach_a_follower_while_the_block_still_runs() -> None:
    """Captured output alone (no metric row, no flush call, a thread's print too) starts
    the block's periodic flush: a follower sees the lines before the block ends."""
    async with in_memory(Settings(metrics_flush_interval=0.02)) as client:
        run = await client.create_run("Train")
        async with run.running():
            async with run.task("train") as task:
                view = await client.task(task.pathspec, after=task.receipt)
                async with view.follow_logs() as lines:
                    print("from the block")
                    with anyio.fail_after(10):
                        assert (await anext(lines)).text == "from the block\n"
                    await anyio.to_thread.run_sync(
                        contextvars.copy_context().run, print, "from a thread"
                    )
                    with anyio.fail_after(10):
                        assert (await anext(lines)).text == "from a thread\n"
