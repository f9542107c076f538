"""What connecting says when the URL, the files or the credentials are wrong, on real servers."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import nkeys
import pytest

from runstate.client import ConfigurationError, connect
from runstate.engine._server import NatsServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "nats://a:4222,https://b:4222"])
async def test_a_url_of_another_scheme_says_the_scheme_is_wrong(url: str) -> None:
    """``http://...`` is refused before connecting, naming the scheme and what to give."""
    with pytest.raises(ConfigurationError, match=r"not a NATS URL: the scheme http(s)?://"):
        async with connect(url):
            pass


@pytest.mark.parametrize("option", ["credentials", "tls_ca"])
async def test_a_missing_credentials_or_tls_file_is_named(tmp_path: Path, option: str) -> None:
    """A credentials or TLS file that does not exist is named in the error, nothing sent."""
    missing = tmp_path / "nowhere.file"
    with pytest.raises(ConfigurationError, match=f"{missing} does not exist"):
        async with connect("nats://127.0.0.1:1", **{option: missing}):  # type: ignore[arg-type]
            pass


async def test_a_wrong_password_is_refused_at_once_as_final(tmp_path: Path) -> None:
    """An authorization violation is final: one ConfigurationError, not a budget of retries."""
    server = NatsServer(tmp_path / "nats", extra_args=["--user", "alice", "--pass", "right"])
    server.start()
    try:
        url = server.url.replace("nats://", "nats://alice:wrong@")
        with anyio.fail_after(15):  # the retry budget is 30 s: a retry loop would not end here
            with pytest.raises(ConfigurationError, match="refused the credentials"):
                async with connect(url, projector=False):
                    pass
    finally:
        server.stop()


_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------
"""


async def test_a_credentials_file_works_out_of_the_box(nats_url: str, tmp_path: Path) -> None:
    """A credentials file needs nkeys to sign; it is a dependency, so connecting just works."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    creds = tmp_path / "user.creds"
    creds.write_text(_CREDS.format(jwt="eyJ0eXAiOiJKV1QifQ.e30.c2ln", seed=seed))
    async with connect(nats_url, credentials=creds, projector=False) as client:
        assert await client.log.stream_last_sequence() == 0
