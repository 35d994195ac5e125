"""The local runner: one run in this process, one record returned whatever happens.

SIGINT/SIGTERM during the run raise RunCancelled in the main thread; the run unwinds and a
`cancelled` record comes back. Any other exception after the manifest was accepted gives a
`failed` record with the error. The runner writes no record: the driver does (records.py), once.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any

from peftrepro.errors import CheckFailed, ManifestError, PeftreproError, RunCancelled
from peftrepro.job import execute, preflight
from peftrepro.manifest import ResolvedManifest
from peftrepro.measure import ALLOCATOR_ENV
from peftrepro.paths import adapter_dir, sweep_orphans, work_dir
from peftrepro.records import RunError, RunOutput, RunRecord, build_record, new_run_id, submission_of, utc_now
from peftrepro.tasks import get_task


class Cancellation:
    """While armed, SIGINT and SIGTERM raise RunCancelled in the main thread; once disarmed (while
    the record is built and handed back) they are only remembered, so a second Ctrl-C cannot lose it."""

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
    manifest: ResolvedManifest, *, seed: int, progress: bool | None = None, fresh_base: bool = False
) -> RunOutput:
    """Run `manifest` with `seed` here; the record (success, failed or cancelled) and its samples.
    `fresh_base`: measure the base model again instead of reusing the cache (verify's re-runs).
    Raises PeftreproError only for what is refused before a record exists (preflight)."""
    preflight(manifest)
    started = utc_now()
    run_id = new_run_id(seed, started)
    state: dict[str, Any] = {"environment": {}, "steps_completed": 0}
    cancellation = Cancellation()
    sweep_orphans()
    # Saved into a work folder of this process, moved into place only on success: a failed,
    # cancelled or killed run leaves no half-written adapter (sweep_orphans takes a killed one's).
    staging = work_dir("adapter")
    samples, fault = None, False
    with trapped_signals(cancellation):
        try:
            metrics, samples = execute(
                manifest,
                seed=seed,
                runner="local",
                progress=progress,
                state=state,
                adapter_dir=staging,
                fresh_base=fresh_base,
            )
            status, error = "success", None
        except RunCancelled as c:
            status, error = "cancelled", RunError("RunCancelled", f"stopped by {c.signal_name}")
        except ManifestError:
            shutil.rmtree(staging, ignore_errors=True)
            raise  # the config itself is refused (does not attach, too costly): bad input, no record
        except PeftreproError as e:
            fault = isinstance(e, CheckFailed)
            status, error = "failed", RunError(type(e).__name__, e.message)
        except Exception as e:  # the run itself broke: record it, show the traceback for the bug report
            traceback.print_exc(file=sys.stderr)
            status, error = "failed", RunError(type(e).__name__, " ".join(str(e).split())[:4000])
        cancellation.armed = False
        if status == "success":
            saved = adapter_dir(manifest.task, manifest.method, manifest.name, run_id)
            saved.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(saved)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        if status != "success":
            metrics = {"steps_completed": state["steps_completed"]}
        record = unwritten_record(
            manifest,
            seed=seed,
            started=started,
            run_id=run_id,
            status=status,
            metrics=metrics,
            environment=state["environment"],
            error=error,
            checks=state.get("checks"),
            base_measurements=state.get("base_measurements"),
        )
        return RunOutput(record, samples if status == "success" else None, fault)


def unwritten_record(
    manifest: ResolvedManifest,
    *,
    seed: int,
    started: datetime,
    status: str,
    metrics: dict[str, Any],
    environment: dict[str, Any],
    error: RunError | None,
    run_id: str | None = None,
    checks: dict[str, Any] | None = None,
    base_measurements: dict[str, Any] | None = None,
) -> RunRecord:
    """The run's record, finished now (also what the docker runner makes when its container
    handed out none)."""
    return build_record(
        submission_of(manifest, get_task(manifest.task).version),
        manifest.resolved_config(),
        run_id=run_id or new_run_id(seed, started),
        seed=seed,
        started=started,
        finished=utc_now(),
        status=status,
        metrics=metrics,
        environment=environment,
        error=error,
        checks=checks,
        base_measurements=base_measurements,
    )


@contextmanager
def allocator_environment() -> Iterator[None]:
    """os.environ with ALLOCATOR_ENV while a child process starts (it inherits them), then as before."""
    with environment_with(ALLOCATOR_ENV):
        yield


@contextmanager
def environment_with(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` while processes that inherit them start, then as before."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
