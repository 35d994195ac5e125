"""The local executor: up to N jobs at a time, each in a fresh child process of this one.

A child runs its job and leaves the result in a private work folder (a pickle, written last: a
transport, not a record); the driver reads it when the child exits and its caller writes the
record. A child that exits without one gets a record made by the driver: `cancelled` if a signal
had arrived, else `failed` with its exit code.

SIGINT and SIGTERM reaching the driver are forwarded to every running child (which ends its run
with a `cancelled` record: runners/local.py) and no further job starts. Children die with the
process that started them (Linux's parent-death signal): a killed Ray worker leaves no orphan run.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import Any

from peftrepro.errors import PeftreproError
from peftrepro.executors import Job, JobResult, OnDone, OnStart, signals_to, unrecorded
from peftrepro.records import RunError
from peftrepro.runners import get_runner
from peftrepro.runners.local import allocator_environment
from peftrepro.sweep import point_line, run_sweep
from peftrepro.tasks import register

RESULT_FILE = "result.pickle"


def perform(job: Job, workdir: Path) -> JobResult:
    """Run one job in this process (the executors give each job a fresh one)."""
    register(job.task, job.task_factory)
    manifest = job.materialize(workdir)
    where = socket.gethostname()
    if job.kind == "sweep":
        assert job.sweep is not None
        record = run_sweep(
            manifest,
            job.sweep["lrs"],
            seed=job.seed,
            extend=job.sweep["extend"],
            previous=job.sweep["previous"],
            on_point=lambda p: print(point_line(job.rel, p), flush=True),
        )
        return JobResult(job, "success", sweep=record, where=where)
    output = get_runner(job.runner, **job.runner_options)(manifest, seed=job.seed)
    return JobResult(job, output.status, run=output, where=where)


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an orphaned child finishes its job unheard
        pass


def _child(job: Job, workdir: str) -> None:
    _die_with_parent()
    try:
        result = perform(job, Path(workdir))
    except PeftreproError as e:  # refused before any record: bad input, said in one line
        result = JobResult(job, "refused", error=e.message)
    except KeyboardInterrupt:  # a sweep stopped by Ctrl-C writes nothing
        result = JobResult(job, "cancelled", error="stopped by SIGINT")
    # The result exists: a late signal must not lose it on its way to the driver.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tmp = Path(workdir) / (RESULT_FILE + ".part")
    tmp.write_bytes(pickle.dumps(result))
    tmp.rename(Path(workdir) / RESULT_FILE)


@dataclass
class _Running:
    job: Job
    process: Any
    workdir: Path


class LocalExecutor:
    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, jobs)

    def map(self, jobs: Sequence[Job], on_start: OnStart, on_done: OnDone) -> list[JobResult]:
        ctx = multiprocessing.get_context("spawn")
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
                    workdir = Path(tempfile.mkdtemp(prefix="peftrepro-job-"))
                    process = ctx.Process(target=_child, args=(job, str(workdir)), name="peftrepro-job")
                    with allocator_environment():
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
