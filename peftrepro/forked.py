"""Half of a CPU-bound job in a fork of this process, the result sent back pickled through a pipe.

Used where the leaderboard's render is pure Python over data already in memory (reading every other
submission folder; drawing the plots while the pages are written). A process pool's result thread
fought the work for the GIL and gained nothing; a bare fork and one pipe do not. Never forks while
another non-daemon thread runs (a lock it holds would stay held in the child; daemon helpers such as
tqdm's monitor are chores the work never waits on), and a child that dies only costs the time: the
caller computes its part itself.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any


def can_fork() -> bool:
    busy = any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate())
    return hasattr(os, "fork") and not busy


def start(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run `fn` in a forked child now; the returned function waits for the child and gives `fn`'s
    result, or runs `fn` here if the child failed. Without a safe fork, `fn` runs when joined."""
    if not can_fork():
        return fn
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        code = 1
        try:
            os.close(read_end)
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)

    def join() -> Any:
        try:
            with os.fdopen(read_end, "rb") as inp:
                sent = inp.read()
        finally:
            with contextlib.suppress(OSError):
                os.close(read_end)  # already closed when read; otherwise the child's write fails, it exits
            _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            with contextlib.suppress(pickle.UnpicklingError, EOFError):
                return pickle.loads(sent)
        return fn()  # the child died or sent garbage: do its part here

    return join
