"""``python -m orchestrate`` is the same as the ``orchestrate`` command (and ``python -m orchestrator``)."""

from orchestrator.cli import main

main()
