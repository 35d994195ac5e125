"""forked.start: a fork computes, the parent gets the result; a child that dies costs only time."""

from __future__ import annotations

import os
import threading

from peftrepro import forked


def test_the_result_comes_from_the_child() -> None:
    parent = os.getpid()
    join = forked.start(lambda: os.getpid())
    child = join()
    assert isinstance(child, int) and child != parent


def test_a_child_that_dies_leaves_the_work_to_the_parent() -> None:
    parent = os.getpid()

    def work() -> str:
        if os.getpid() != parent:
            os._exit(3)  # killed mid-work, nothing sent
        return "done here"

    assert forked.start(work)() == "done here"


def test_no_fork_while_another_thread_runs() -> None:
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)
    busy.start()
    try:
        parent = os.getpid()
        assert not forked.can_fork()
        assert forked.start(lambda: os.getpid())() == parent
    finally:
        stop.set()
        busy.join()
