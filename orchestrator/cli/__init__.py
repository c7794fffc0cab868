"""The ``orchestrate`` command line: parse arguments, call one library function, print.

The only package that imports click, reads the working directory or prints.
``base`` holds the group and ``main``; each other module adds the commands of
one area to the group when it is imported.
"""

from __future__ import annotations

from . import authoring, running, state, temporal, ui, workflow
from .base import cli, main

__all__ = ["cli", "main"]

del authoring, running, state, temporal, ui, workflow  # imported for the commands they register
