"""The local runner: one run in this process, one record written whatever happens.

SIGINT/SIGTERM during the run raise RunCancelled in the main thread; the run unwinds and a
`cancelled` record is written. Any other exception after the manifest was accepted gives a
`failed` record with the error. SIGKILL leaves no record (and no partial file: writes are atomic).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from peftrepro.errors import PeftreproError, RunCancelled, RunFailed
from peftrepro.executors import JobResult
from peftrepro.job import SAMPLES_FILE, execute, preflight
from peftrepro.jsonio import write_new_file
from peftrepro.manifest import ResolvedManifest
from peftrepro.measure import ALLOCATOR_ENV
from peftrepro.paths import adapter_dir
from peftrepro.records import RUNS_DIR, RunResult, build_record, new_run_id, utc_now, write_record
from peftrepro.tasks import get_task


@dataclass(frozen=True)
class RunOutcome:
    status: str
    record: dict[str, Any]
    path: Path


class Cancellation:
    """While armed, SIGINT and SIGTERM raise RunCancelled in the main thread; once disarmed (while
    the record is written) they are only remembered, so a second Ctrl-C cannot lose the record."""

    def __init__(self) -> None:
        self.armed = True
        self.pending: str | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.armed:
            self.armed = False
            raise RunCancelled(name)
        self.pending = self.pending or name


@contextmanager
def trapped_signals(cancellation: Cancellation) -> Iterator[None]:
    previous = {s: signal.signal(s, cancellation.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_local(
    manifest: ResolvedManifest, *, seed: int, runs_dir: Path | None = None, progress: bool | None = None
) -> RunOutcome:
    preflight(manifest)
    runs_dir = runs_dir or manifest.folder / RUNS_DIR
    started = utc_now()
    run_id = new_run_id(seed, started)
    state: dict[str, Any] = {"environment": {}, "steps_completed": 0}
    cancellation = Cancellation()
    saved = adapter_dir(manifest.task, manifest.method, manifest.name, run_id)
    with trapped_signals(cancellation):
        try:
            metrics = execute(
                manifest, seed=seed, runner="local", progress=progress, state=state, adapter_dir=saved
            )
            if "samples_sha256" in metrics:  # next to the record, under the record's name
                place_samples(saved / SAMPLES_FILE, runs_dir / f"{run_id}.png", metrics["samples_sha256"])
            result = RunResult("success", metrics, state["environment"], None, state.get("checks"))
        except RunCancelled as c:
            result = _partial(
                state, "cancelled", {"type": "RunCancelled", "message": f"stopped by {c.signal_name}"}
            )
        except PeftreproError as e:
            result = _partial(state, "failed", {"type": type(e).__name__, "message": e.message})
        except Exception as e:  # the run itself broke: record it, show the traceback for the bug report
            traceback.print_exc(file=sys.stderr)
            result = _partial(
                state, "failed", {"type": type(e).__name__, "message": " ".join(str(e).split())[:4000]}
            )
        cancellation.armed = False
        return write_outcome(manifest, runs_dir, seed=seed, started=started, result=result, run_id=run_id)


def write_outcome(
    manifest: ResolvedManifest,
    runs_dir: Path,
    *,
    seed: int,
    started: datetime,
    result: RunResult,
    run_id: str | None = None,
) -> RunOutcome:
    """Build the run's record (finished now), write it into `runs_dir`, return the outcome. Also
    what a runner uses to say what happened when the job itself left no record."""
    record = build_record(
        manifest,
        task_version=get_task(manifest.task).version,
        run_id=run_id or new_run_id(seed, started),
        seed=seed,
        started=started,
        finished=utc_now(),
        result=result,
    )
    return RunOutcome(result.status, record, write_record(runs_dir, record))


def place_samples(source: Path, target: Path, sha256: str) -> None:
    """Copy a run's sample grid next to its record, checked against the hash the record carries."""
    data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RunFailed(f"{source}: the sample grid changed after it was hashed")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_new_file(target, data)


@contextmanager
def allocator_environment() -> Iterator[None]:
    """os.environ with ALLOCATOR_ENV while a child process starts (it inherits them), then as before."""
    saved = {k: os.environ.get(k) for k in ALLOCATOR_ENV}
    os.environ.update(ALLOCATOR_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_isolated(manifest: ResolvedManifest, *, seed: int, runs_dir: Path | None = None) -> RunOutcome:
    """`run_local` in a fresh child process (the local executor with one job): what the CLI's `run`
    and `verify` use. On the CPU tracks memory is the process's RSS, and a second run in the same
    process measured 8-14% more than the same run alone (what the first run left resident); a run
    inside a larger host process (a test session) measured +44%. The child gets the parent's task
    registration (the factory is pickled), so local stand-ins carry over, and starts with
    ALLOCATOR_ENV (see measure.py)."""
    from peftrepro.executors import Job
    from peftrepro.executors.local import LocalExecutor

    job = Job.for_manifest(manifest, seed=seed)
    [result] = LocalExecutor(1).map([job], lambda j, w: None, lambda r: None)
    return land(result, runs_dir or manifest.folder / RUNS_DIR)


def land(result: JobResult, runs_dir: Path) -> RunOutcome:
    """Write a run job's record (and its sample grid) where it belongs, on the driver: atomically,
    under a new name. A job refused before any record raises its one-line error."""
    if result.record is None:
        raise PeftreproError(result.error or f"{result.job.key}: the job returned no record")
    path = write_record(runs_dir, result.record)
    if ".png" in result.files:
        data = result.files[".png"]
        if hashlib.sha256(data).hexdigest() != result.record["metrics"].get("samples_sha256"):
            raise RunFailed(f"{path}: the sample grid that came back does not match the record's hash")
        write_new_file(path.with_suffix(".png"), data)
    return RunOutcome(result.status, result.record, path)


def _partial(state: dict[str, Any], status: str, error: dict[str, str]) -> RunResult:
    return RunResult(
        status,
        {"steps_completed": state["steps_completed"]},
        state["environment"],
        error,
        state.get("checks"),
    )
