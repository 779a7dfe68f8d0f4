"""The one gateway to user code: steps, callbacks, timers, timeouts, hooks, connectors.

:func:`call_user` awaits an ``async def`` and runs a plain ``def`` on a daemon worker thread.
Whatever the function raises comes out as something the engine's error handling can count:

- an ``Exception`` passes through unchanged (``NonRetryableError`` included);
- ``KeyboardInterrupt`` and ``SystemExit`` pass through: they ask the whole program to stop;
- a ``CancelledError`` passes through only when the engine cancelled the calling task
  (``stop()``, a lost role); one the function raised by itself, ``GeneratorExit`` and any
  other ``BaseException`` become :class:`StepInterruptedError`, a step error like any other
  (logged, counted, backed off, and paused by ``pause_after_err_count``);
- with a ``timeout``, a function still running then is abandoned (an ``async def`` is
  cancelled; a plain ``def`` keeps its thread, whose result is discarded) and
  :class:`StepTimeoutError` is raised.

Plain functions run on daemon threads owned by this module, not on the event loop's default
executor: a function that never returns neither blocks ``asyncio.run()``'s executor shutdown
nor interpreter exit once ``stop()`` has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

from ._errors import StepInterruptedError, StepTimeoutError
from ._run import RunStateChange

__all__ = ["call_user", "fn_name", "is_user_error", "mark_user_error", "running_threads"]

_IDLE_SECONDS = 60.0
"""A worker thread with nothing to do for this long ends."""


@functools.lru_cache(maxsize=4096)
def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def fn_name(fn: Callable[..., Any]) -> str:
    """How messages name a user function."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


async def call_user(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """Call a user function (see the module documentation for what comes out of it)."""
    try:
        is_async = _is_async(fn)
    except TypeError:  # unhashable callable
        is_async = _is_async.__wrapped__(fn)
    try:
        if is_async:
            if timeout is None:
                return await fn(*args)
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    return await fn(*args)
            except TimeoutError:
                if scope.expired():
                    raise _timed_out(fn, timeout) from None
                raise
        result = await _in_thread(fn, args, timeout)
        if inspect.isawaitable(result) and not isinstance(result, RunStateChange):
            return await result
        return result
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        mark_user_error(err)
        raise
    except asyncio.CancelledError as err:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the engine's own cancellation (stop, lost role)
        raise mark_user_error(StepInterruptedError(_interrupted(fn, err))) from err
    except BaseException as err:
        raise mark_user_error(StepInterruptedError(_interrupted(fn, err))) from err


_USER = "_workflow_user_error"


def mark_user_error(err: BaseException) -> BaseException:
    """Mark ``err`` as raised by user code (a process backs off on the workflow's clock after
    it, and in real time after an adapter's error)."""
    with contextlib.suppress(AttributeError, TypeError):
        err.__dict__[_USER] = True
    return err


def is_user_error(err: BaseException) -> bool:
    return bool(getattr(err, "__dict__", {}).get(_USER))


def _timed_out(fn: Callable[..., Any], timeout: float) -> StepTimeoutError:
    return StepTimeoutError(
        f"{fn_name(fn)} ran longer than its step_timeout of {timeout:g} s and was abandoned; "
        "make it faster, raise the step_timeout option, or split the work"
    )


def _interrupted(fn: Callable[..., Any], err: BaseException) -> str:
    return (
        f"{fn_name(fn)} raised {type(err).__name__}({err}), a BaseException that is not an "
        "Exception; it is handled as a step error (counted, retried after the backoff, paused "
        "by pause_after_err_count). Raise an Exception subclass to report a failure, or "
        "NonRetryableError to pause the run"
    )


async def _in_thread(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None) -> Any:
    loop = asyncio.get_running_loop()
    # The future carries (ok, value) and never an exception: a BaseException such as
    # GeneratorExit thrown into the awaiting coroutine chain would close it rather than
    # raise in it. It is raised here, in this frame, instead.
    fut: asyncio.Future[tuple[bool, Any]] = loop.create_future()
    _pool.submit(loop, fut, fn, args, contextvars.copy_context())
    if timeout is None:
        ok, value = await fut
    else:
        try:
            ok, value = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            if fut.cancelled():  # timed out, not the function's own TimeoutError
                raise _timed_out(fn, timeout) from None
            raise
    if ok:
        return value
    try:
        raise value
    finally:
        del value


def _deliver(fut: asyncio.Future[tuple[bool, Any]], ok: bool, value: Any) -> None:
    if not fut.done():  # else abandoned: cancelled or timed out
        fut.set_result((ok, value))


class _Threads:
    """Daemon worker threads, started on demand and ended after ``_IDLE_SECONDS`` idle.

    There is no upper bound: a bound would let a few functions that never return stall
    every other run. How many calls are in flight is bounded by the consumers instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job that no submit has claimed yet
        self.count = 0

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        ctx: contextvars.Context,
    ) -> None:
        with self._lock:
            start = self._idle == 0
            if start:
                self.count += 1
            else:
                self._idle -= 1  # this job is that thread's
        self._jobs.put((loop, fut, fn, args, ctx))
        if start:
            threading.Thread(target=self._work, name="workflow-user-code", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                loop, fut, fn, args, ctx = self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counts on this thread: end it
                        self._idle -= 1
                        self.count -= 1
                        return
                continue  # a job was claimed for a waiting thread: it is on its way
            try:
                ok, value = True, ctx.run(fn, *args)
            except BaseException as err:  # delivered to the caller, who decides
                ok, value = False, err
            try:
                loop.call_soon_threadsafe(_deliver, fut, ok, value)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
            del loop, fut, fn, args, ctx, value
            with self._lock:
                self._idle += 1


_pool = _Threads()


def running_threads() -> int:
    """How many worker threads for plain ``def`` user functions exist now (idle included)."""
    return _pool.count
