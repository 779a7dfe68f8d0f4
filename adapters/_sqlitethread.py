"""SQLite's own threads: for each database file an engine uses, one thread owns the connection
that writes and one the connection that reads the statements on every transition's path.

Why: SQLite's calls block, so they cannot run on the event loop. Through aiosqlite and
SQLAlchemy's pool every statement cost a pool check-out (a greenlet switch), a hand-off to
the connection's thread and one back (a queue, a thread switch, a self-pipe write, an epoll
wake-up: each a system call, slow on a VM). Here a whole batch is one job: a group of writes
in one transaction (:class:`adapters._sqlite.GroupWriter`), or one read of every run a
consumer's events are about, costs one hand-off to the thread and one back, however many
statements it runs.

A thread opens its connection at its first job (set up as the pool's are:
:func:`adapters._sqlite.set_up`), ends after :data:`IDLE_EXIT` seconds without work (closing
it), and starts again at the next job; ``close()`` (the engine's ``dispose()``) ends it at
once. Jobs from any event loop are served in the order they arrive; each job's result or
exception goes back to the loop of its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import _sqlite

__all__ = ["IDLE_EXIT", "SQLiteThread"]

R = TypeVar("R")

IDLE_EXIT = 30.0
"""Seconds a thread waits for work before it closes its connection and ends."""

CLOSE_TIMEOUT = 10.0
"""Seconds :meth:`SQLiteThread.close` waits for the thread to finish its jobs and close."""

Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class SQLiteThread:
    """One thread and its connection to ``path`` (see the module docstring).
    ``on_open_error(err)`` may raise a clearer error for a file that cannot be opened."""

    def __init__(
        self,
        path: str,
        synchronous: str,
        name: str,
        on_open_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.name = name
        self._on_open_error = on_open_error
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[sqlite3.Connection], R]) -> asyncio.Future[R]:
        """Run ``fn(conn)`` in the thread; the future of its result or exception. Once
        submitted, a job runs even if its caller is cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        with self._lock:
            self._jobs.put((fn, loop, fut))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve,
                    args=(self._jobs,),
                    name=f"workflow-sqlite-{self.name}",
                    daemon=True,
                )
                self._thread.start()
        return fut

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End the thread once the jobs already submitted are done, and wait (up to
        ``timeout`` seconds) until it has closed its connection: then the database file is
        whole (SQLite moves the WAL into it when its last connection closes), as after
        ``dispose()`` of a pool. A later :meth:`submit` starts a new thread (with a queue of
        its own)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
                self._jobs = queue.SimpleQueue()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _serve(self, jobs: queue.SimpleQueue[Job | None]) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                try:
                    job = jobs.get(timeout=IDLE_EXIT)
                except queue.Empty:
                    with self._lock:  # submit puts under the lock: no job slips in now
                        if jobs.empty():
                            if self._thread is threading.current_thread():
                                self._thread = None
                            return
                    continue
                if job is None:
                    return
                fn, loop, fut = job
                try:
                    if conn is None:
                        conn = self._open()
                    result, ok = fn(conn), True
                except BaseException as err:
                    result, ok = err, False
                    if conn is not None and conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                    loop.call_soon_threadsafe(_settle, fut, ok, result)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            _sqlite.set_up(conn, self.synchronous)
        except Exception as err:
            if self._on_open_error is not None:
                self._on_open_error(err)
            raise
        return conn


def _settle(fut: asyncio.Future[Any], ok: bool, result: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(result)
    elif isinstance(result, Exception):
        fut.set_exception(result)
    else:  # KeyboardInterrupt, SystemExit... in the thread: the caller gets a clear error
        fut.set_exception(RuntimeError(f"SQLite thread job interrupted: {result!r}"))
