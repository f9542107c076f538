"""``runstate server`` serves the gateway and prints its URL; ``runstate web`` runs one alone
beside it; both stop cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

RUNSTATE = [sys.executable, "-m", "runstate.client.cli"]


class Printing:
    """A ``runstate`` subprocess whose output goes to a file, read as it grows."""

    def __init__(self, output: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
        env.update(RUNSTATE_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
        self.output = output
        with output.open("w") as sink:
            self.process = subprocess.Popen(
                [*RUNSTATE, *args], stdout=sink, stderr=subprocess.STDOUT, env=env
            )

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output.read_text())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in: {self.output.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Printing]:
    running = Printing(
        tmp_path / "server.out", "server", "--data-dir", str(tmp_path / "data"), "--http-port", "0"
    )
    yield running
    running.stop()


def test_the_server_serves_the_gateway_and_a_second_runs_alone(
    server: Printing, tmp_path: Path
) -> None:
    """``runstate server`` prints its gateway's URL, which answers its owner (the token it
    made in the data directory, named in its output) and no one else; ``runstate web`` on
    the same NATS and data directory serves the same runs to the same token; each stops
    with exit status 0 on SIGTERM."""
    url = server.wait_for(r"HTTP gateway: (http://\S+)").group(1)
    nats = server.wait_for(r"ready: (nats://\S+)").group(1)
    assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
    token_file = server.wait_for(r"sign in with the token in (\S+)").group(1)
    assert token_file == str(tmp_path / "data" / "gateway-token")
    owner = {"Authorization": f"Bearer {Path(token_file).read_text().strip()}"}
    refused = httpx.post(f"{url}/api/v1/runs", json={"flow": "Cli"}, timeout=20)
    assert refused.status_code == 401, refused.text
    created = httpx.post(f"{url}/api/v1/runs", json={"flow": "Cli"}, headers=owner, timeout=20)
    assert created.status_code == 201, created.text
    # the same data directory: the command reads the embedded server's token there
    data = str(tmp_path / "data")
    alone = Printing(tmp_path / "web.out", "web", "--nats", nats, "--data-dir", data, "--port", "0")
    try:
        other = alone.wait_for(r"gateway ready: (http://\S+)").group(1)
        assert httpx.get(f"{other}/readyz", timeout=20).status_code == 200
        sequence = created.json()["sequence"]
        runs = httpx.get(
            f"{other}/api/v1/runs", params={"after": sequence}, headers=owner, timeout=20
        ).json()
        assert [run["pathspec"] for run in runs["items"]] == ["Cli/1"]
    finally:
        assert alone.stop() == 0
    assert server.stop() == 0


def test_no_http_auth_opens_the_loopback_gateway(tmp_path: Path) -> None:
    """``runstate server --no-http-auth`` serves its loopback gateway to requests without a
    token, and says so."""
    running = Printing(
        tmp_path / "out",
        "server",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-port",
        "0",
        "--no-http-auth",
    )
    try:
        url = running.wait_for(r"HTTP gateway: (http://\S+)").group(1)
        running.wait_for(r"no authentication \(--no-auth\)")
        created = httpx.post(f"{url}/api/v1/runs", json={"flow": "Open"}, timeout=20)
        assert created.status_code == 201, created.text
    finally:
        assert running.stop() == 0
    assert not (tmp_path / "data" / "gateway-token").exists()


def test_no_http_runs_the_server_without_the_gateway(tmp_path: Path) -> None:
    """``--no-http`` leaves the gateway out."""
    running = Printing(tmp_path / "out", "server", "--data-dir", str(tmp_path), "--no-http")
    try:
        running.wait_for(r"stop with Ctrl-C")
    finally:
        assert running.stop() == 0
    assert "HTTP gateway" not in (tmp_path / "out").read_text()


def test_the_command_line_loads_the_gateway_only_to_serve_it() -> None:
    """Importing the command line loads no FastAPI or uvicorn (the web extra is optional)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runstate.client.cli._main\n"
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
