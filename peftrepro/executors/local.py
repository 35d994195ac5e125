"""The local executor: up to N jobs at a time, each in a process of its own, forked from a warm
template that has the job stack imported (executors/template.py).

A child runs its job and leaves the result in a private work folder (a pickle, written last: a
transport, not a record); the driver reads it when the child exits and its caller writes the
record. A child that exits without one gets a record made by the driver: `cancelled` if a signal
had arrived, else `failed` with its exit code.

SIGINT and SIGTERM reaching the driver are forwarded to every running child (which ends its run
with a `cancelled` record: runners/local.py) and no further job starts. Children die with the
driver that asked for them (Linux's parent-death signal, armed by child.py against the template,
which exits with the driver): a killed driver or Ray worker leaves no orphan run.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import Any

from peftrepro import child
from peftrepro.executors import Job, JobResult, OnDone, OnStart, signals_to, unrecorded
from peftrepro.executors.template import job_environment, warm_context
from peftrepro.executors.work import RESULT_FILE
from peftrepro.paths import work_dir
from peftrepro.records import RunError
from peftrepro.runners.local import allocator_environment


@dataclass
class _Running:
    job: Job
    process: Any
    workdir: Path


class LocalExecutor:
    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, jobs)

    def map(self, jobs: Sequence[Job], on_start: OnStart, on_done: OnDone) -> list[JobResult]:
        fresh = multiprocessing.get_context("spawn")
        pending = list(reversed(jobs))
        running: dict[Any, _Running] = {}  # by sentinel
        signals: list[str] = []
        results: list[JobResult] = []

        def forward(signum: int, frame: FrameType | None) -> None:
            signals.append(signal.Signals(signum).name)
            for r in running.values():
                if r.process.pid is not None:
                    os.kill(r.process.pid, signum)

        with signals_to(forward):
            while pending or running:
                while pending and not signals and len(running) < self.jobs:
                    job = pending.pop()
                    workdir = work_dir("job")  # removed below; a killed driver's by sweep_orphans
                    ctx, template = warm_context() if job.start == "template" else (fresh, None)
                    env = job_environment(job.start)
                    args = (pickle.dumps(job), str(workdir), os.getpid(), template, env)
                    process = ctx.Process(target=child.start, args=args, name="peftrepro-job")  # type: ignore[attr-defined]
                    with allocator_environment():  # a fresh interpreter reads them at its start
                        process.start()
                    running[process.sentinel] = _Running(job, process, workdir)
                    on_start(job, socket.gethostname())
                if not running:
                    break
                try:
                    # A timeout, so that an interrupt simulated without a signal (Ray's cancel, on a
                    # worker) reaches the handler: Python runs handlers between bytecodes only.
                    ready = wait(list(running), timeout=0.5)
                except KeyboardInterrupt:  # not the main thread: no handler of ours, forward it
                    forward(signal.SIGINT, None)
                    continue
                for sentinel in ready:
                    r = running.pop(sentinel)
                    r.process.join()
                    result = self._collect(r, signals)
                    results.append(result)
                    if result.manifest_fault:
                        pending = [j for j in pending if j.manifest != r.job.manifest]
                    on_done(result)
        return results

    @staticmethod
    def _collect(r: _Running, signals: list[str]) -> JobResult:
        try:
            done = r.workdir / RESULT_FILE
            if done.is_file():
                result: JobResult = pickle.loads(done.read_bytes())
                return result
            if signals:
                error = RunError("RunCancelled", f"stopped by {signals[0]}")
                return unrecorded(r.job, "cancelled", error, runner="local")
            message = f"the job's process exited with code {r.process.exitcode} and no record"
            return unrecorded(r.job, "failed", RunError("ChildExited", message), runner="local")
        finally:
            shutil.rmtree(r.workdir, ignore_errors=True)
