"""Sandboxed Jinja for both layers of text: agent instructions and stage prompts.

- Instructions render at compile time, once per agent, from
  ``content/instructions/<template>`` (or the defaults shipped in the package)
  with the workflow, the agent, the stages it serves and the state paths.
- Stage prompts render at run time with params, the task and upstream outputs.

Everything renders in a ``SandboxedEnvironment`` with ``StrictUndefined``;
includes and extends resolve only inside the two template folders. The only
package that imports jinja2; it never writes files.

    sandbox.py   the environment and the confined loader
    context.py   the variables templates see (plain data)
    checks.py    static checks with file and line
    renderer.py  rendering, and Jinja failures turned into WorkflowErrors
"""

from __future__ import annotations

from .context import COMPILE_TIME_NAMES, PROMPT_NAMES, RUN_TIME_ONLY_NAMES, STATE_PATTERN, config_name
from .renderer import RenderedAgent, Renderer
from .sandbox import BUILTIN_PREFIX

__all__ = [
    "BUILTIN_PREFIX",
    "COMPILE_TIME_NAMES",
    "PROMPT_NAMES",
    "RUN_TIME_ONLY_NAMES",
    "STATE_PATTERN",
    "RenderedAgent",
    "Renderer",
    "config_name",
]
