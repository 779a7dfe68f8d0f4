"""Runnable examples, each a small module that shows one part of the API.

Run one from the project root (they use the in-memory adapters and finish in a moment)::

    python -m examples.gettingstarted   # steps: a run moving through statuses; a hook
    python -m examples.callback         # callbacks: a run waiting for outside input
    python -m examples.timeout          # timeouts: a run moving on after a delay
    python -m examples.connector        # connectors: runs started by another system's events
    python -m examples.schedule         # schedules: a run triggered every hour

Each module has a ``build(...)`` function that declares the workflow on whatever adapters it
is given (the tests build them on fresh in-memory adapters) and an ``async def main()``
that runs one scenario end to end and prints what happens.
"""
