"""Every code block in README.md and docs/*.md runs as written.

A document's blocks run in order in one subprocess, on a data directory of
their own (``RUNSTATE_DATA_DIR``, so the embedded server is the test's):
python blocks share one module namespace, as parts of one program do, and
sh blocks run in bash with the venv's ``runstate`` on ``PATH``. A python
block with top-level ``await`` is a notebook cell: it runs as a Jupyter
kernel runs one, as a task of its own on one event loop kept from block to
block. A block the
tests cannot run says so, visibly, on the line before it: ``Not run by the
doc tests: <reason>``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "text"}
_NOT_RUN = re.compile(r"^Not run by the doc tests: \S")

#: runs the blocks given as JSON in order; says which one failed
_RUNNER = """
import ast, asyncio, json, subprocess, sys, traceback
namespace = {"__name__": "__main__"}
kernel = asyncio.new_event_loop()  # the notebook cells' loop, as a Jupyter kernel's
for block in json.load(open(sys.argv[1])):
    where = f"{block['document']}:{block['line']}"
    print(f"-- {where}", flush=True)
    try:
        if block["language"] == "sh":
            subprocess.run(["bash", "-e", "-c", block["code"]], check=True)
        else:
            code = compile(block["code"], where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            cell = eval(code, namespace)  # a coroutine when the block awaits at top level
            if cell is not None:
                kernel.run_until_complete(cell)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the {block['language']} block at {where} failed")
"""


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    code: str
    not_run: bool


def blocks(document: Path) -> list[Block]:
    """The fenced code blocks of ``document``, in order."""
    found = []
    lines = document.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        found.append(
            Block(
                document.relative_to(ROOT).as_posix(),
                start + 1,
                fence.group(1),
                "\n".join(body) + "\n",
                bool(_NOT_RUN.match(before)),
            )
        )
        i += 1
    return found


def _runnable(document: Path) -> list[Block]:
    return [b for b in blocks(document) if b.language != "text" and not b.not_run]


def _run(blocks_to_run: list[Block], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    listing = tmp_path / "blocks.json"
    listing.write_text(json.dumps([asdict(b) for b in blocks_to_run]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    env.update(
        RUNSTATE_DATA_DIR=str(tmp_path / "data"),
        RUNSTATE_LOG_LEVEL="warning",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    work = tmp_path / "work"
    work.mkdir()
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(listing)],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=240,
    )


def test_every_block_names_its_language_and_why_it_is_not_run() -> None:
    """Each fence is python, sh or text; every document's code is run unless it says why not."""
    for document in DOCUMENTS:
        for block in blocks(document):
            assert block.language in LANGUAGES, f"{block.document}:{block.line}"
            assert not (block.not_run and block.language == "text"), block


@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if _runnable(d)],
    ids=lambda d: d.relative_to(ROOT).as_posix(),
)
def test_the_code_blocks_of_a_document_run_as_written(document: Path, tmp_path: Path) -> None:
    """A document's python and sh blocks, run in order on a fresh data directory, all succeed."""
    result = _run(_runnable(document), tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_the_guides_worker_runs_again_with_its_idempotency_key(tmp_path: Path) -> None:
    """Run twice, the guide's program creates its run once and the repeat ends cleanly."""
    program = [b for b in _runnable(ROOT / "docs" / "guide.md") if b.language == "python"]
    assert "idempotency_key" in "".join(b.code for b in program)
    result = _run([*program, program[-1]], tmp_path)  # the last block is anyio.run(main)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    listed = subprocess.run(
        [sys.executable, "-m", "runstate.client.cli", "runs", "Train", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "RUNSTATE_DATA_DIR": str(tmp_path / "data")},
        timeout=60,
    )
    assert [run["pathspec"] for run in json.loads(listed.stdout)] == ["Train/1"]
