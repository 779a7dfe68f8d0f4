"""Worker processes of the tests die with the test process that started them."""

from __future__ import annotations

import ctypes
import os
import signal


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent is gone, so that a test that fails or
    times out never leaves a worker running (and eating CPU) behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the prctl
        os._exit(3)
