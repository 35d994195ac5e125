"""The first instructions of a job's process (executors/local.py starts it with `spawn`).

A job's process must die with the process that started it. Linux's parent-death signal does that,
but only once armed, and importing torch, peft and transformers takes seconds: armed after them, a
parent killed meanwhile left an orphan training with no one to hear it. So this module imports
nothing heavy, arms the signal first, checks the parent is still there (it may have died before
the signal was armed), and only then unpickles the job, which imports the rest.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if `parent` is already gone."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: an orphaned child finishes its job unheard
        return
    if os.getppid() != parent:
        os._exit(1)


def start(job: bytes, workdir: str, parent: int) -> None:
    """The job process's target: arm, then unpickle the job and run it (executors/work.py)."""
    die_with_parent(parent)
    from peftrepro.executors.work import run_child

    run_child(pickle.loads(job), workdir)
