"""``python -m orchestrate``: the command by its own name. The library is ``orchestrator``."""
