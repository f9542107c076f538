"""runstate in a Jupyter kernel, executed with nbclient as Metaflow users run notebooks.

Each cell of a kernel runs as a task of its own on the kernel's event loop,
with top-level ``await``. The query service runs outside the kernel (a
replica process, ``_query_service``), so these tests exercise the client
alone: a client opened in one cell and closed in a later one, and the async
client interleaved with the blocking facade, whose calls hold the kernel's
loop while they wait.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
from _query_service import query_service, write_run

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _execute(cells: list[str], tmp_path: Path) -> list[str]:
    """Run ``cells`` in order in a fresh python3 kernel; the text each printed."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells]
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    with warnings.catch_warnings():
        # jupyter_client's own deprecations (paths, datetimes) are not ours to fail on
        warnings.simplefilter("ignore", DeprecationWarning)
        client.execute()
    printed = []
    for cell in notebook.cells:
        outputs: list[dict[str, Any]] = cell.outputs
        printed.append("".join(o.get("text", "") for o in outputs if o["output_type"] == "stream"))
    return printed


def test_a_client_opened_in_one_cell_is_closed_in_a_later_one(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``client = await open_client(...)`` in one cell (with a projector in the kernel, whose
    task group the opening cell would otherwise own), writes and reads in another, ``await
    client.aclose()`` in a third: no "cancel scope in a different task", the connection closed."""
    monkeypatch.setenv("RUNSTATE_DATA_DIR", str(tmp_path / "kernel"))
    printed = _execute(
        [
            "from runstate.client import open_client\n"
            f"client = await open_client({nats_url!r}, projector=True)\n",
            'run = await client.create_run("Cells")\n'
            "async with run.running():\n"
            "    pass\n"
            "print((await client.run(run.pathspec, after=client.last_write)).state)\n",
            "await client.aclose()\nprint(client.nc.is_closed)\n",
        ],
        tmp_path,
    )
    assert printed[1:] == ["completed\n", "True\n"]


def test_the_async_client_and_the_facade_interleave_in_one_kernel(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 calls of the async client (top-level ``await``) alternate with 1,000 of the
    blocking facade in one kernel, each reading the run the other reads: none stalls (a
    stall would raise ``Timeout`` in the cell, failing the notebook)."""
    monkeypatch.setenv("RUNSTATE_DATA_DIR", str(tmp_path / "kernel"))
    with query_service(nats_url, tmp_path / "store" / "views.sqlite3"):
        pathspec = anyio.run(write_run, nats_url, tmp_path / "writer", "Kernel", 0.75)
        printed = _execute(
            [
                "from runstate.client import compat, open_client\n"
                f"client = await open_client({nats_url!r}, namespace=None)\n"
                f"compat.metadata({nats_url!r})\n"
                "compat.namespace(None)\n",
                "same = 0\n"
                "for _ in range(1000):\n"
                f"    mine = await client.run({pathspec!r})\n"
                f"    theirs = compat.Run({pathspec!r})\n"
                "    same += mine.pathspec == theirs.pathspec and mine.state == theirs.state\n"
                f"accuracy = compat.Run({pathspec!r})['start'].task.data.accuracy\n"
                "print(same, accuracy)\n",
                "await client.aclose()\ncompat.close()\nprint(client.nc.is_closed)\n",
            ],
            tmp_path,
        )
    assert printed[1:] == ["1000 0.75\n", "True\n"]


def test_the_readmes_examples_run_in_a_kernel_with_await_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's python blocks, pasted into cells with ``await main()`` for ``anyio.run(main)``
    as README says, run in a kernel on the local runstate of a data directory."""
    from test_docs import ROOT, blocks

    cells = [
        block.code.replace("anyio.run(main)", "await main()")
        for block in blocks(ROOT / "README.md")
        if block.language == "python" and not block.not_run
    ]
    assert sum("await main()" in cell for cell in cells) == 2
    monkeypatch.setenv("RUNSTATE_DATA_DIR", str(tmp_path / "data"))
    printed = _execute(cells, tmp_path)
    assert printed[1].startswith("completed {'completed': 4}\n")
    assert printed[2] == "0.95\n"
