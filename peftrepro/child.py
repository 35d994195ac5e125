"""The first instructions of a job's process, forked from the warm template (executors/template.py).

A job's process must die with the driver that asked for it. Its parent is the template, which
exits when the driver is gone (multiprocessing's forkserver reads EOF on a pipe every client
holds open); so the job process arms Linux's parent-death signal against the template, then closes
its own copy of that pipe (or the template would wait for the job, and the job for the template),
then checks the template and the driver are both still there: either may have died before the
signal was armed. Only then does it take the driver's environment and unpickle the job.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if `parent` is already gone."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: an orphaned child finishes its job unheard
        return
    if os.getppid() != parent:
        os._exit(1)


def release_template() -> None:
    """Close this process's end of the template's alive pipe: the template then exits with the
    driver alone, not once every job it forked has ended."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(job: bytes, workdir: str, driver: int, template: int | None, env: dict[str, str]) -> None:
    """The job process's target: arm, then unpickle the job and run it (executors/work.py).
    `template` is None for a job in a fresh interpreter (spawned by the driver itself)."""
    if template is None:
        die_with_parent(driver)
    else:
        die_with_parent(template)
        release_template()
        if not alive(driver):
            os._exit(1)
    os.environ.clear()
    os.environ.update(env)
    from peftrepro.executors.work import run_child

    run_child(pickle.loads(job), workdir)
