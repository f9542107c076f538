"""``python -m runstate.client.cli ARGS``: the ``runstate`` command without its console script."""

from runstate.client.cli._main import main

if __name__ == "__main__":
    main()
