"""One run of a task, from the command's request to its outcome.

The rules of a run live once, in ``scheduler``; three drivers step it:
``engine`` (``orchestrate run``), ``driven`` (the ``orchestrate state``
commands, one step per command) and ``forecast`` (``orchestrate plan``, a dry
look at each stage). Data flows ``Workflow -> Plan -> Scheduler <-> Engine ->
Executor -> Runner``, and every event goes to the state store and the views.

    options.py    RunRequest (what the user asked) and RunSettings (one typed record, CLI to engine)
    prepare.py    every check that needs no API; the public prepare_run / run_prepared / run_workflow
    session.py    what an earlier run left: continue it or start anew, the memo, approvals, feedback
    scheduler.py  Scheduler: pure and synchronous; ready stages (write-scope admission, if, foreach),
                  what a finished, failed or skipped stage releases, gates, audit rounds, the final status
    admission.py  write scopes that overlap never run together
    resumed.py    the scheduler restored from a recorded run (the state commands)
    engine.py     the asyncio mechanics only: ask the scheduler, start stages, timeouts, cancellation
    attempts.py   one stage: keep or run it, its tries through the Executor, retries, budgets, its gate
    executor.py   Executor Protocol (where a try runs) and LocalExecutor
    request.py    a stage's request (system prompt, user message, settings) and its fingerprint inputs
    outcomes.py   what the engine takes and gives, and the small Protocols it asks (Memory, Gates, Guard)
    fanout.py     foreach instances: naming them and folding their outcomes
    guard.py      write scopes and output contracts checked around a stage that acts
    spend.py      the run's purse: reservations against the budget
    driven.py     Driver: one state command's view of the task
    manual.py     the state commands themselves
    forecast.py   what a run would do and cost

It never prints, reads the environment or the working directory, or exits: the
CLI resolves those and passes them in.
"""
