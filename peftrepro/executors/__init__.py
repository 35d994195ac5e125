"""Executors: where a batch of jobs runs. A job is one run (a manifest and a seed: what `run` does,
and what `verify` re-runs) or one submission's learning-rate sweep.

Every job runs the same way wherever it lands: in a fresh process (memory figures carry nothing of
another job), from the manifest's bytes that travel with it, through the runner it names (local or
docker). Its result (the record, and its sample grid) comes back to the driver, which is the only
place records are written (executors/batch.py): atomically, as each job finishes, so the same
manifests and seeds give the same records whatever executed them.

- `local` (executors/local.py): up to N jobs at a time, each a child process of this one;
- `ray` (executors/ray_fleet.py): each job a Ray task asking for the resources its task needs,
  run on a worker node by the same local code.
`executors/batch.py` picks one (`get_executor`), plans the jobs of a command and writes the results.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peftrepro.manifest import MANIFEST_FILE, ResolvedManifest, resolve
from peftrepro.records import (
    RunError,
    RunOutput,
    SubmissionRef,
    build_record,
    new_run_id,
    submission_of,
    utc_now,
)
from peftrepro.tasks import get_task, task_factory

CORPUS = "corpus"  # `run --seeds` with no value: each task's corpus seeds (Task.corpus_seeds)


@dataclass(frozen=True)
class Job:
    """What one job needs, self-contained: it may execute on another machine."""

    key: str  # unique in its batch, shown in progress lines: "task/method/name seed N"
    rel: str  # "task/method/name": where the manifest sits in a submissions tree
    origin: str  # the manifest's path on the driver: used in place where it exists with these bytes
    manifest: bytes  # the manifest file, byte for byte
    submission: SubmissionRef  # what its record names: task (and version), method, name, manifest sha256
    resolved_config: dict[str, Any]  # what its record says it ran
    seed: int
    task_factory: Callable[[], Any]  # the task's registration, pickled along (local stand-ins carry over)
    needs_gpu: bool
    cpus: int  # CPU tracks: the task's pinned thread count; GPU tracks: 1 (the GPU is what is scarce)
    runner: str = "local"
    runner_options: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None  # {"lrs", "extend", "previous"} for a sweep job
    fresh_base: bool = False  # measure the base model again, not from the cache (verify's re-runs)
    # "template": forked from the warm template (executors/template.py); "fresh": a new interpreter,
    # as a claim made that way is re-run (its CPU memory figures depend on it: environment.job_start).
    start: str = "template"

    @classmethod
    def for_manifest(
        cls,
        manifest: ResolvedManifest,
        *,
        seed: int,
        runner: str = "local",
        runner_options: dict[str, Any] | None = None,
        sweep: dict[str, Any] | None = None,
    ) -> Job:
        task = get_task(manifest.task)
        return cls(
            key=f"{manifest.task}/{manifest.method}/{manifest.name} seed {seed}",
            rel=f"{manifest.task}/{manifest.method}/{manifest.name}",
            origin=str(manifest.path),
            manifest=manifest.source,
            submission=submission_of(manifest, task.version),
            resolved_config=manifest.resolved_config(),
            seed=seed,
            task_factory=task_factory(manifest.task),
            needs_gpu=task.accelerator == "cuda",
            cpus=1 if task.accelerator == "cuda" else task.num_threads,
            runner=runner,
            runner_options={k: v for k, v in (runner_options or {}).items() if v is not None},
            sweep=sweep,
        )

    @property
    def kind(self) -> str:
        return "run" if self.sweep is None else "sweep"

    @property
    def task(self) -> str:
        return self.rel.split("/")[0]

    def materialize(self, root: Path) -> ResolvedManifest:
        """The manifest, resolved: at its origin when this machine has it unchanged (messages then
        name the file the user knows), else written into a submissions tree under `root`. This
        process must have the job's task registered."""
        origin = Path(self.origin)
        if origin.is_file() and origin.read_bytes() == self.manifest:
            return resolve(origin)
        path = root / "submissions" / self.rel / MANIFEST_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.manifest)
        return resolve(path)


@dataclass(frozen=True)
class JobResult:
    """What came back. `status` is the record's (success | failed | cancelled), or `refused` when
    the job's input was refused before any record existed (`error` says why, in one line)."""

    job: Job
    status: str
    run: RunOutput | None = None  # a run job's record and sample grid
    sweep: dict[str, Any] | None = None  # a sweep job's record; None when it did not finish
    error: str | None = None
    attempts: int = 1
    where: str = ""  # the host (and worker) that ran it, for progress lines

    @property
    def manifest_fault(self) -> bool:
        """The run stopped on the manifest's own fault (a failed structural check): its other seeds
        would stop the same way, so they need not run."""
        return self.run is not None and self.run.manifest_fault


def unrecorded(job: Job, status: str, error: RunError, *, runner: str, attempts: int = 1) -> JobResult:
    """The driver's record of a run job that ended without one (its process or worker died, or it
    was stopped before it could hand one back): what is known, nothing measured."""
    if job.kind != "run":
        return JobResult(job, status, error=error.message, attempts=attempts)
    now = utc_now()
    record = build_record(
        job.submission,
        job.resolved_config,
        run_id=new_run_id(job.seed, now),
        seed=job.seed,
        started=now,
        finished=now,
        status=status,
        metrics={"steps_completed": 0},
        environment={"runner": runner},
        error=error,
    )
    return JobResult(job, status, RunOutput(record), error=error.message, attempts=attempts)


@contextmanager
def signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` while a batch runs, then back to what they were. Only
    the main thread may set handlers; elsewhere the executors treat a KeyboardInterrupt alike."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


OnStart = Callable[[Job, str], None]  # (job, where it started: host, attempt)
OnDone = Callable[[JobResult], None]


class Executor(Protocol):
    def map(self, jobs: Sequence[Job], on_start: OnStart, on_done: OnDone) -> list[JobResult]:
        """Run the jobs; call on_done with each result as it arrives; return them all. On SIGINT or
        SIGTERM no job starts any more, running ones end with a `cancelled` result, and map returns
        what came back (jobs never started are absent)."""
        ...
