"""Batches as the commands ask for them: plan the jobs of `run` and `sweep`, hand them to an
executor, and write what comes back. This is the driver's one writer of run records and sweep
files (verifications: verify.py, through records.py); runners and executors write nothing.

Each function returns the command's exit code and prints through `Echo` (the CLI's stdout and
stderr), so a command is: parse, call one function, exit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftrepro.console import Echo
from peftrepro.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_RUN_FAILED, UsageError
from peftrepro.executors import CORPUS, Executor, Job, JobResult
from peftrepro.executors.local import LocalExecutor
from peftrepro.executors.ray_fleet import RayExecutor
from peftrepro.manifest import ResolvedManifest, find_manifests, resolve
from peftrepro.metrics import prior_format
from peftrepro.records import RUNS_DIR, RunOutput, RunRecord, folder_problem, write_record
from peftrepro.runners import RUNNER_KINDS, default_kind
from peftrepro.sweep import apply_lr, load_previous, point_line, write_sweep
from peftrepro.tasks import get_task

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorChoice:
    """--executor and its options, as the commands take them."""

    name: str = "local"
    jobs: int = 1
    address: str = "auto"
    retries: int = 2

    def make(self) -> Executor:
        if self.name == "ray" and self.jobs != 1:
            raise UsageError("--jobs is for --executor local; Ray places jobs by the resources they ask for")
        if self.name == "local":
            return LocalExecutor(self.jobs)
        if self.name == "ray":
            return RayExecutor(self.address or "auto", retries=self.retries)
        raise UsageError(f"executor {self.name!r} is not available; available: {', '.join(EXECUTORS)}")

    def where(self, host: str) -> str:
        return f" on {host}" if self.name == "ray" else ""


def severity(code: int) -> int:
    """Which exit code a batch reports: bad input, then cancelled, then a failed run."""
    return {EXIT_BAD_INPUT: 3, EXIT_CANCELLED: 2, EXIT_RUN_FAILED: 1}.get(code, 0)


def _resolved(paths: Iterable[Path], verb: str) -> list[ResolvedManifest]:
    if not paths:
        raise UsageError(f"name the submissions to {verb} (manifest files, submission folders or trees)")
    manifests = [resolve(p) for p in find_manifests(paths)]
    if not manifests:
        raise UsageError("no manifest.json found under " + ", ".join(map(str, paths)))
    return manifests


def land(output: RunOutput, runs_dir: Path) -> Path:
    """Write one run's record (and its sample grid) where it belongs: the one write of a record."""
    return write_record(runs_dir, output)


def summary_line(record: RunRecord) -> str:
    m, sub = record.metrics, record.submission
    head = f"{sub.label} seed {record.seed}: {record.status}"
    if record.status != "success":
        message = record.error.message if record.error else ""
        return f"{head} after {m.get('steps_completed', 0)} steps ({message})"
    t = get_task(sub.task)
    score, prior = t.score_key, t.prior_key
    return (
        f"{head}; {score} {m[score]:.3f} (base {m['base_' + score]:.3f}), "
        f"{prior} {m[prior]:{prior_format(prior, 4)}}, {m['trainable_params']:,} trainable params, "
        f"train {m['train_seconds']:.1f} s of {m['total_seconds']:.1f} s, "
        f"peak memory {m['peak_memory_bytes'] / 2**30:.2f} GiB"
    )


def run_submissions(
    paths: tuple[Path, ...],
    *,
    seeds: list[int] | str | None,
    runs_dir: Path | None,
    runner: str | None,
    runner_options: dict[str, Any],
    executor: ExecutorChoice,
    echo: Echo,
) -> int:
    """`peftrepro run`: every manifest checked before any run starts, one job per (manifest, seed)
    (None: the manifest's own seed), each record written as its job comes back."""
    manifests = {m.path: m for m in _resolved(paths, "run")}.values()
    kind = runner or default_kind()
    if kind not in RUNNER_KINDS:
        raise UsageError(f"runner {kind!r} is not available; available: {', '.join(RUNNER_KINDS)}")
    folder_of: dict[str, Path] = {}
    planned = []
    for m in manifests:
        chosen = list(get_task(m.task).corpus_seeds) if seeds == CORPUS else seeds
        for s in chosen if isinstance(chosen, list) else [m.training.seed]:
            job = Job.for_manifest(m, seed=s, runner=kind, runner_options=runner_options)
            if job.key in folder_of:
                raise UsageError(f"{job.rel} is named twice ({folder_of[job.key]}, {m.folder})")
            folder_of[job.key] = m.folder
            planned.append(job)
    for folder in {runs_dir or f / RUNS_DIR for f in folder_of.values()}:  # refused before any run
        if problem := folder_problem(folder):
            raise UsageError(problem)
    codes: list[int] = []

    def start(job: Job, where: str) -> None:
        echo.err(f"running {job.key} (manifest {job.submission.manifest_sha256[:12]}){executor.where(where)}")

    def done(result: JobResult) -> None:
        if result.run is None:  # refused before any record
            echo.err(f"error: {result.error}")
            codes.append(EXIT_BAD_INPUT)
            return
        path = land(result.run, runs_dir or folder_of[result.job.key] / RUNS_DIR)
        attempts = f" (attempts: {result.attempts})" if result.attempts > 1 else ""
        echo.out(summary_line(result.run.record) + attempts)
        echo.out(f"record: {path}")
        if result.manifest_fault:  # the manifest's whatever the seed: its others are skipped
            echo.err(f"error: {result.run.record.error.message if result.run.record.error else ''}")
            codes.append(EXIT_BAD_INPUT)
        elif result.status == "cancelled":
            codes.append(EXIT_CANCELLED)
        elif result.status == "failed":
            codes.append(EXIT_RUN_FAILED)

    finished = executor.make().map(planned, start, done)
    if len(planned) > 1:
        echo.out(f"{len(finished)} of {len(planned)} runs recorded")
    if len(finished) < len(planned) and not codes:
        codes.append(EXIT_CANCELLED)
    return max(codes, key=severity, default=0)


def sweep_submissions(
    paths: tuple[Path, ...],
    *,
    lrs: list[float],
    seeds: list[int],
    extend: int,
    apply: bool,
    executor: ExecutorChoice,
    echo: Echo,
) -> int:
    """`peftrepro sweep`: one job per submission; each sweep.json written as its job comes back."""
    manifests: dict[str, ResolvedManifest] = {}
    planned = []
    for m in _resolved(paths, "sweep"):
        spec = {"lrs": lrs, "seeds": seeds, "extend": extend, "previous": load_previous(m.folder)}
        job = Job.for_manifest(m, seed=seeds[0], sweep=spec)
        if job.key in manifests:
            raise UsageError(f"{job.rel} is named twice ({manifests[job.key].folder}, {m.folder})")
        manifests[job.key] = m
        planned.append(job)
    codes: list[int] = []

    def start(job: Job, where: str) -> None:
        rates = ", ".join(f"{x:g}" for x in lrs)
        echo.err(f"sweeping {job.rel} over lr {rates}{executor.where(where)}")

    def done(result: JobResult) -> None:
        codes.extend(_sweep_done(result, manifests[result.job.key], apply, echo))

    finished = executor.make().map(planned, start, done)
    if len(finished) < len(planned) and not codes:
        codes.append(EXIT_CANCELLED)
    return max(codes, key=severity, default=0)


def _sweep_done(result: JobResult, manifest: ResolvedManifest, apply: bool, echo: Echo) -> list[int]:
    label = result.job.rel
    if result.status == "refused":
        echo.err(f"error: {result.error}")
        return [EXIT_BAD_INPUT]
    record = result.sweep
    if record is None:  # cancelled (or its process died): nothing written
        echo.err(f"{label}: {result.error or result.status}: no sweep written")
        return [EXIT_CANCELLED if result.status == "cancelled" else EXIT_RUN_FAILED]
    for point in record["points"]:
        echo.out(point_line(label, point))
    out = write_sweep(manifest.folder, record)
    chosen = record["chosen_lr"]
    if chosen is None:
        echo.err(
            f"{label}: no rate can be chosen: at every rate a seed failed, ended with a non-finite loss "
            f"or scored at or below the base model ({record.get('base_valid')}); see {out}"
        )
        return [EXIT_RUN_FAILED]
    edge = " (still at the edge of the rates tried: widen the grid)" if record["at_grid_edge"] else ""
    if record["reused_lrs"]:
        reused = ", ".join(f"{x:g}" for x in record["reused_lrs"])
        echo.out(f"{label}: reused from the previous sweep.json: lr {reused}")
    echo.out(f"{label}: chosen lr {chosen:g}{edge} -> {out}")
    if apply and apply_lr(manifest, chosen):
        echo.out(f"{manifest.path}: training.optimizer_kwargs.lr = {chosen:g}")
    elif apply:
        echo.out(f"{manifest.path}: already uses lr {chosen:g}; unchanged")
    return []


def run_in_child(
    manifest: ResolvedManifest, *, seed: int, runs_dir: Path | None = None
) -> tuple[RunOutput, Path]:
    """One local run of `manifest` in a fresh child process, its record written: what tests and
    `ci` use. On the CPU tracks memory is the process's RSS, and a second run in the same process
    measured 8-14% more than the same run alone; a run inside a larger host process (a test
    session) measured +44%. The child gets the parent's task registration (the factory is
    pickled), so local stand-ins carry over."""
    job = Job.for_manifest(manifest, seed=seed)
    [result] = LocalExecutor(1).map([job], lambda j, w: None, lambda r: None)
    if result.run is None:
        raise UsageError(result.error or f"{job.key}: the job returned no record")
    return result.run, land(result.run, runs_dir or manifest.folder / RUNS_DIR)
