"""Runnable examples, each a small module that shows one part of the API.

Run one from the project root (each finishes in a moment; ``gettingstarted`` runs on a SQLite
file, the others on the in-memory adapters)::

    python -m examples.gettingstarted   # steps: a run moving through statuses; a hook
    python -m examples.callback         # callbacks: a run waiting for outside input
    python -m examples.timeout          # timeouts: a run moving on after a delay
    python -m examples.connector        # connectors: runs started by another system's events
    python -m examples.schedule         # schedules: a run triggered every hour
    python -m examples.payout           # a retry policy: backoff, then a FAILED status
    python -m examples.deadletter       # a dead letter an operator resumes
    python -m examples.approval         # a decision awaited, escalated, then expired
    python -m examples.polling          # an external job checked with backoff until a deadline
    python -m examples.dispatch         # named events routed to their workflows
    python -m examples.payment          # idempotent charge, declined card, refund (saga)
    python -m examples.signup           # idempotent sign-up, child e-mail, dead letter, GDPR
    python -m examples.booking          # parallel reservations (children), fan-in, a saga
    python -m examples.orders           # a child's result used by its parent; a deadline

Each module declares its workflow in a ``build(...)`` function, which takes the adapters, or a
``builder(...)`` function, which returns the ``Builder``; and an ``async def main()`` runs one
scenario end to end and prints what happens. ``main(adapters=...)`` (all but
``gettingstarted``'s) takes the function that makes its adapters on its clock
(:mod:`examples.adapters`; memory unless told otherwise). The tests run every example on a
``FakeClock`` on memory and on SQLite. ``payment``, ``signup``, ``booking`` and ``orders``
show composition (child workflows, fan-in, sagas: docs/composition.md) and share
:mod:`examples.driving` (moving the clock to each retry, a run's history as text); their
``build(adapters, ...)`` builds parent and child workflows on one set of adapters.
"""
