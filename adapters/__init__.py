"""The adapters of :mod:`workflow`: storage, streaming and role-scheduling back ends.

Each back end's public names come from one module:

- :mod:`workflow.adapters.memory`: in memory (tests, one process);
- :mod:`workflow.adapters.sql`: SQLite and PostgreSQL (the ``sql`` extra);
- :mod:`workflow.adapters.kafka`: the Kafka event streamer and connector (the ``kafka`` extra);
- :mod:`workflow.adapters.adaptertest`: conformance suites any adapter can run.
"""
