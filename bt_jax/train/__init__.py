"""Barlow Twins training: the pure per-device steps and their compilation (``step``), the
loss, optimizers and gradient reducers (``losses``, ``optim``, ``reducers``, ``powersgd``),
the state (``state``), the inputs (``inputs``), the evaluations the loop schedules
(``evaluators``) and the host loop (``loop``). Nothing outside train/ and benchmark/
imports it."""
