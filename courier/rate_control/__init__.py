"""Rate control: how fast a destination's records go out, decided once for all its workers.

What it decides
---------------
For each destination, one decision that every worker serving it applies: the **circuit**
(``failure_threshold`` unavailable attempts in a row open it; the queue then runs one probe
per ``probe_interval`` and the records wait in Temporal; the first answered probe closes it)
and the **adaptive rate** (429 answers halve the rate, answers without 429 raise it back, up
to the ceiling: the operator's ``courier limit``, else the configured ``rate_limit``). The
decision is a rate: it is applied as the server-side rate override of the destination's task
queue, which the Temporal server enforces across every worker at once.

Where each piece runs
---------------------
============== ========================================= =====================================
module         runs                                      holds
============== ========================================= =====================================
``config``     wherever the config loads                 the ``destinations[].rate_control``
                                                         section (``RateControlConfig``)
``outcomes``   destination worker, in the export         ``AttemptOutcomes``: the attempts'
               activity                                  answers counted since the last report
``client``     destination worker, one task per          ``RateControl``: reports windows,
               destination (``courier.serving``)         applies decisions to the queue
``workflow``   control worker (``DestinationState``,     the one controller per destination;
               sandboxed, replayed from its history)     also the workers' connection reports
``controller`` in the workflow; ``describe_decision``     ``RateController``, ``ControlState``,
               also in ``courier status``                ``OutcomeReport``: pure, no I/O
============== ========================================= =====================================

The layers follow: ``config``, ``outcomes``, ``controller`` and ``workflow`` are contracts,
low enough for the activities and the workflow sandbox; ``client`` talks to the server and
reads the config, so it sits with the rest of the worker's runtime (``tests/unit/test_layers``).
This ``__init__`` imports nothing, so the sandbox loading ``workflow`` runs no worker code.

The report/decision loop
------------------------
1. Each export attempt ends in ``activities.export.ExportActivity._write``, which counts it in
   the worker's ``AttemptOutcomes``: answered (written, or refused for good: the destination is
   up), unavailable (refused connection, timeout, 5xx) or throttled (429).
2. Every second ``RateControl`` takes the counts as one window and, if the controller needs
   it (below), sends it as an ``OutcomeReport`` with the update ``outcomes`` to the
   destination's ``DestinationState`` (ID ``courier-destination-state/<task queue>``). A report
   not answered in time is sent again under the same update ID until it is: a window is never
   lost and never counted twice.
3. The workflow runs ``RateController.observe`` on it and answers with the ``ControlState``.
4. The worker applies a decision once per ``version``: the queue's rate override, authored
   ``courier rate control (<worker>)``; back in normal mode, the operator's limit or none.
5. Every worker's pacer (``courier.serving.pacing``) reads the queue's effective rate every
   second (every 10 s while it is unlimited) and spaces its records at its share of it.

``courier limit`` (``courier.ops.limits``) sets the override itself and signals
``operator_limit`` to the workflow, which takes it as the ceiling from then on.

What is worth reporting
-----------------------
A report costs a workflow task on the shared server, so a healthy destination reports nothing.
Failures (unavailable, throttled) are always reported; answers are reported right after
failures (to reset the count) and while a decision is in force (to close the circuit, to raise
the rate). Whether one is in force is the controller's state, not a worker's guess: a worker
that started while the circuit was open, or whose neighbour's failures opened it, was never
answered. A worker that knows of no decision therefore asks the controller (a query, at most
every ``CONTROLLER_CHECK_S`` while it has none in force) and reports its answered probes when
it has; otherwise a restarted worker kept a healed destination's circuit open for good. The
queue's override is no witness: a worker stopped right after a decision may never have set it.

Invariants
----------
- One decision per destination, whatever the number of workers; applying it is idempotent.
- The controller is pure and deterministic (``now`` is passed in); the workflow's name
  ``DestinationState`` and its signal, update and query names never change, and every history
  in ``tests/histories/`` replays (``tests/unit/test_histories.py``).
- An adaptive rate stays below the ceiling (an open circuit probes at its own rate); an
  operator's limit is the ceiling, not a rate control decision.
- Rate control failing (no workflow worker, server unreachable, a bug) never stops a worker:
  the queue keeps the last rate applied.
- Goal, not yet held: records that fail before reaching the destination never spend its probes
  or its rate. Today a record whose mapping fails is refused with ``PermanentExportError``
  inside ``write()`` and counted as answered, so taken as a probe it closes the circuit without
  the destination having answered; and every dispatched activity spends one of the queue's
  rate tokens. It will hook in where attempts are counted: ``ExportActivity._write`` needs to
  tell "refused by the destination" from "failed before sending" (the export error saying so)
  and leave the latter out of ``AttemptOutcomes``; not spending the rate needs such records to
  fail before their activity is dispatched, in the workflow, outside this package.
"""
