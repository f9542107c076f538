"""``python -m runstate.client.cli._bench``: the command standalone, a replica, a load, the
http benchmark's gateway and client processes, or one half of a paired benchmark."""

from __future__ import annotations

import sys

from runstate.client.cli._bench._command import bench, run_benchmark
from runstate.client.cli._bench._harness import _replica_main
from runstate.client.cli._bench._http_load import gateway_main, sse_main, writers_main
from runstate.client.cli._bench._interleave import half_main
from runstate.client.cli._bench._projection import _load_main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_replica":
        _replica_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        _load_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_gateway":
        gateway_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_sse":
        sse_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_writers":
        writers_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_half":
        half_main(sys.argv[2:], run_benchmark)
    else:
        bench(prog_name="runstate bench")
