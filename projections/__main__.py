"""``python -m runstate.projections --nats URL --store PATH``: run one projector replica.

The ``runstate projector`` command is the usual way; this entry point has no
dependency on the client package (tests and minimal deployments use it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from runstate.engine._logging import configure_logging
from runstate.engine._settings import Settings
from runstate.engine.errors import RunstateError
from runstate.projections._replica import Replica


async def _main(
    url: str,
    store: Path,
    name: str,
    rebuild: bool,
    heartbeat_timeout: float | None,
    feed_from: int | None,
) -> None:
    interval = min(5.0, heartbeat_timeout / 4) if heartbeat_timeout is not None else None
    settings = Settings.from_env(
        nats_url=url, heartbeat_timeout=heartbeat_timeout, heartbeat_interval=interval
    )
    async with Replica(
        settings, store=store, name=name, rebuild=rebuild, dedicated=True, feed_from=feed_from
    ):
        await anyio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runstate.projections", description=__doc__)
    parser.add_argument("--nats", required=True, help="NATS URL")
    parser.add_argument("--store", required=True, type=Path, help="SQLite file of this replica")
    parser.add_argument("--name", default="projector")
    parser.add_argument("--rebuild", action="store_true", help="fold again from sequence 1")
    parser.add_argument("--heartbeat-timeout", type=float, default=None)
    parser.add_argument(
        "--feed-from",
        type=int,
        default=None,
        help="events behind from which a catch-up goes through a feeder process (50,000)",
    )
    args = parser.parse_args()
    configure_logging()  # an entry point: RUNSTATE_LOG_LEVEL, else info
    try:
        anyio.run(
            _main,
            args.nats,
            args.store,
            args.name,
            args.rebuild,
            args.heartbeat_timeout,
            args.feed_from,
        )
    except KeyboardInterrupt:
        pass
    except RunstateError as exc:  # e.g. StoreInUse: say what is wrong, not where
        sys.exit(f"error: {exc.message}")


if __name__ == "__main__":
    main()
