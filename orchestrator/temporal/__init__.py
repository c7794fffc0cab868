"""Runs on Temporal: durable across machines, with workers anywhere (the ``orchestrate[temporal]`` extra).

The only package that imports ``temporalio``, and only imported when a command
is given ``--temporal`` (or is ``orchestrate worker``), so nothing else pays for
it. Its modules:

- ``ticket``: what a run is started with, and its workflow id and queue names;
- ``wire``: the JSON values that cross between workflow and activities;
- ``workflow``: ``RunWorkflow``, the engine and scheduler of a local run with
  tries as activities and the checkout's questions as activities on its home;
- ``home``: the worker that holds the checkout, and the activities it answers;
- ``tries``: one try of a stage as an activity, on any worker, heartbeating;
- ``worker``: a worker process (the shared queue, and a checkout's home queue);
- ``client``: connect, submit or attach, follow, and signal a run.
"""
