"""A task's run state: what ``docs/ai/<task>/`` holds, and the only code that knows its layout.

    model.py       RunState, StageState, ...: what state.json holds, versioned by SCHEMA_VERSION
    reducer.py     apply_event: the one pure function from events to state
    repository.py  StateRepository Protocol; FileRepository owns the folder's layout, reads state and events,
                   and repairs a torn last line of the event log
    store.py       StateStore: the event listener that writes events, outputs, state.json and the report
    memo.py        skip-unchanged: whether a stage keeps its earlier output, read through the repository
    approvals.py   people's decisions on gates (approvals/<stage>.json)
    lock.py        one writer per task (.lock), and whether a recorded run's process is still alive
    report.py      workflow-state.md, rendered from the state for people and agents

It never prints or decides what runs: the run side (``orchestrator.run``) does.
"""
