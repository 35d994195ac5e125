"""What a job's process does once child.py has armed it: run the job here, leave the result for
the driver (a pickle, written last: a transport, not a record).
"""

from __future__ import annotations

import pickle
import signal
import socket
from pathlib import Path

from peftrepro.errors import PeftreproError
from peftrepro.executors import Job, JobResult
from peftrepro.runners import get_runner
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
            seeds=job.sweep["seeds"],
            extend=job.sweep["extend"],
            previous=job.sweep["previous"],
            on_point=lambda p: print(point_line(job.rel, p), flush=True),
        )
        return JobResult(job, "success", sweep=record, where=where)
    output = get_runner(job.runner, **job.runner_options)(manifest, seed=job.seed, fresh_base=job.fresh_base)
    return JobResult(job, output.status, run=output, where=where)


def run_child(job: Job, workdir: str) -> None:
    """Run the job in this (child) process and leave its result in `workdir` (child.py arms the
    parent-death signal first)."""
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
