"""The warm template every local job process is forked from (multiprocessing's forkserver).

A fresh interpreter that imports torch, transformers, peft and the tasks costs a job ~4.8 s; a
process forked from a template that imported them once costs ~0.03 s (benchmarks/job_start.py).
Isolation stays: one run per process, and the template only imports (no model, no tensor op, no
thread pool, no CUDA context), so a job's process starts with what a spawned one has once its
imports are done: job_start.py measures both processes' RSS at that point.

Some variables are read once, at process start (glibc's malloc settings: ALLOCATOR_ENV) or at
import (huggingface_hub's and tqdm's): the template starts with the driver's environment plus
ALLOCATOR_ENV, and is restarted when the driver's environment has changed since, except for
peftrepro's own variables, which are read where they are used. Each job also gets the driver's
environment at its start (child.py); multiprocessing passes the working directory and sys.path.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from typing import Any

from peftrepro.environment import JOB_START_ENV
from peftrepro.measure import ALLOCATOR_ENV
from peftrepro.runners.local import allocator_environment

# What a job's process would import first; `work` imports the runners and every task, and with
# them torch, transformers and peft.
PRELOAD = ["peftrepro.child", "peftrepro.executors.work"]

_started_with: dict[str, str] | None = None


def job_environment(start: str = "template") -> dict[str, str]:
    """The environment a job runs with: the driver's, plus the allocator settings, and how the job's
    process started (the record reports it: environment.job_start)."""
    env = {**os.environ, **ALLOCATOR_ENV}
    env.pop(JOB_START_ENV, None)
    return {**env, JOB_START_ENV: start} if start == "template" else env


def _read_at_start(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("PEFTREPRO_")}


def warm_context() -> tuple[BaseContext, int | None]:
    """The forkserver context, its template running with this environment, and its pid (a job's
    process arms its parent-death signal against it: child.py)."""
    global _started_with
    # multiprocessing keeps one server per process; its stop and pid are not public API, and
    # tests/test_hostile.py covers what this relies on (a restart, the pid as the job's parent).
    server: Any = forkserver._forkserver
    env = job_environment()
    if server._forkserver_pid is not None and _read_at_start(env) != _started_with:
        server._stop()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    with allocator_environment():
        server.ensure_running()
    _started_with = _read_at_start(env)
    return ctx, int(server._forkserver_pid)
