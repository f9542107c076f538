"""The garbage-collector policy of processes dedicated to a replica (run in a child process:
the policy is process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent(
    """
    import gc, weakref
    import anyio
    from runstate.projections._gc import keep_heap_frozen, tune_gc_for_projection

    class Node:
        pass

    freed = []

    async def main():
        tune_gc_for_projection()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: keep_heap_frozen(interval=0.01, full_every=0.5))
            # a reference cycle alive while survivors are frozen, then dropped
            a, b = Node(), Node()
            a.other, b.other = b, a
            weakref.finalize(a, freed.append, "cycle")
            await anyio.sleep(0.1)
            frozen_while_alive = gc.get_freeze_count()
            del a, b
            gc.collect()  # young and old collections alike leave frozen objects alone
            kept_by_freeze = not freed
            await anyio.sleep(0.8)  # a full collection comes round
            tg.cancel_scope.cancel()
        print(frozen_while_alive > 0, kept_by_freeze, freed == ["cycle"], gc.get_threshold())

    anyio.run(main)
    """
)


def test_survivors_are_frozen_and_cycles_freed_by_the_periodic_full_collection() -> None:
    """keep_heap_frozen moves survivors out of the generations, so collections skip them, and
    its periodic full collection still frees a reference cycle that was alive at a freeze."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["True", "True", "True", "(5000,", "1000,", "10)"]
