"""The local dashboard, ``orchestrate ui`` (the ``orchestrate[ui]`` extra).

``pages`` reads a project's state folders and draws them (tasks, a task's
graph, timeline, outputs, attempts, transcripts, audit rounds, gates);
``app`` serves them with live updates and decisions on gates, safe by
default. Imported only by ``orchestrate ui``.
"""
