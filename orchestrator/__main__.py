"""``python -m orchestrator`` is the same as the ``orchestrate`` command."""

from .cli import main

main()
