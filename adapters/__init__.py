"""Adapters: storage, streaming and role-scheduling back ends for :mod:`workflow`.

In memory (tests, one process): :mod:`adapters.memstreamer`, :mod:`adapters.memrecordstore`,
:mod:`adapters.memtimeoutstore`, :mod:`adapters.memrolescheduler`. Conformance suites that any
adapter can run: :mod:`adapters.adaptertest`.
"""
