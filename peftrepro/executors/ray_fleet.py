"""The Ray executor: each job a Ray task on an existing cluster, not a scheduler of our own.

- Resources: a GPU track's job asks for one GPU (`num_gpus=1`), a CPU track's for its task's pinned
  thread count in CPUs; Ray places it on a node that has them, or queues it.
- On the worker the job runs through the local executor: a fresh process, the runner it names
  (local, or docker on that node), a private work folder. The record comes back as the task's
  return value and is written on the driver, atomically, as it arrives.
- A worker or node lost mid-job (killed, preempted, out of memory) is retried by Ray up to
  `retries` more times; after that the driver writes a `failed` record that says so. A job that
  fails on its own (a NaN, a failed check) is not retried: its `failed` record is the result.
- Ctrl-C (or SIGTERM) on the driver cancels every outstanding task: queued ones never start,
  running ones get SIGINT and end with their `cancelled` record, returned like any other.

A small actor (`ray_tracker.Tracker`, light to start) hears each job start (host, worker pid,
attempt): progress lines, the attempt count of a lost job, and whether a cancelled job had started.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType
from typing import Any

from peftrepro.errors import UsageError
from peftrepro.executors import Job, JobResult, OnDone, OnStart, signals_to, unrecorded
from peftrepro.executors.local import LocalExecutor
from peftrepro.ray_tracker import Tracker
from peftrepro.records import RunError
from peftrepro.runners.local import environment_with

RAY_MISSING = "the ray executor needs Ray, which is not installed: pip install 'peftrepro[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


# Ray starts its workers at niceness 15 (its `worker_niceness`): beside any process at 0 (the
# driver, raylet, another user's work) a job then gets a few percent of a core, 10-30x slower in
# measured runs here, and its runtime figures measure the neighbours. Clusters should start with
# RAY_worker_niceness=0 (as `--address local` does); a worker still niced tries to undo it.
NICENESS_ENV = "RAY_worker_niceness"


def unniced() -> str | None:
    """Put this process back at niceness 0; None when it is there, else why it stays (one line)."""
    was = os.nice(0)
    if was <= 0:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except PermissionError:
        return (
            f"this Ray worker runs at niceness {was} and may not lower it: its jobs lose the CPU to any "
            f"process beside them; start the cluster with {NICENESS_ENV}=0 (`{NICENESS_ENV}=0 ray start ...`)"
        )
    return None


def _on_worker(job: Job, tracker: Any) -> JobResult:
    where = f"{socket.gethostname()} (worker pid {os.getpid()})"
    warning = unniced()
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    # Not waited on: a task blocked in ray.get lends its CPUs to the next task (oversubscription).
    tracker.started.remote(job.key, where)
    results = LocalExecutor(1).map([job], lambda j, w: None, lambda r: None)
    if not results:  # cancelled between the start above and the child's start
        return unrecorded(job, "cancelled", RunError("RunCancelled", "stopped by SIGINT"), runner=job.runner)
    return replace(results[0], where=where)


def reachable(address: str) -> None:
    """A `host:port` or `ray://host:port` that refuses connections is said at once (Ray itself
    retries for minutes before it gives up)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # auto, local: Ray finds (or starts) the cluster itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise UsageError(
            f"no Ray cluster at --address {address}: {e.strerror or e} (start one with `ray start "
            "--head`, or use --address local for a throw-away instance on this machine)"
        ) from None


def connect(ray: Any, address: str) -> None:
    """`auto`: the cluster this machine belongs to (`ray start`); `ray://host:port`: a remote
    one through Ray Client; `local`: a throw-away instance sized to this machine."""
    import logging

    if ray.is_initialized():
        return
    reachable(address)
    # The throw-away instance's raylet reads it at its start: workers at the driver's priority.
    unniced_workers = {NICENESS_ENV: os.environ.get(NICENESS_ENV, "0")} if address == "local" else {}
    try:
        with environment_with(unniced_workers):
            ray.init(
                address=None if address == "local" else address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                include_dashboard=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"no Ray cluster at --address {address}: {first} (start one with `ray start --head`, "
            "or use --address local for a throw-away instance on this machine)"
        ) from None


def check_feasible(ray: Any, jobs: Sequence[Job]) -> None:
    """Refuse, before anything is queued, a job that no node of the cluster can hold: Ray would
    keep it pending forever (a cluster that adds nodes on demand is not planned for here)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for job in jobs:
        need = {"CPU": job.cpus, "GPU": 1 if job.needs_gpu else 0}
        if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            largest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
            raise UsageError(
                f"{job.key}: no node of the Ray cluster has {need['CPU']} CPU(s) and {need['GPU']} GPU(s) "
                f"free to give (the largest has {largest[0]:g} CPUs, {largest[1]:g} GPUs)"
            )


class RayExecutor:
    def __init__(self, address: str = "auto", retries: int = 2, keep_connected: bool = False) -> None:
        self.address = address
        self.retries = retries
        # A driver that maps several batches keeps its connection, and with it Ray's worker
        # processes and their job templates (a new connection is a new Ray job: new workers).
        self.keep_connected = keep_connected

    def map(self, jobs: Sequence[Job], on_start: OnStart, on_done: OnDone) -> list[JobResult]:
        ray = _import_ray()
        connect(ray, self.address)
        try:
            check_feasible(ray, jobs)
            return self._map(ray, jobs, on_start, on_done)
        finally:
            if not self.keep_connected:
                ray.shutdown()  # disconnects this driver; a cluster it joined keeps running

    def _map(self, ray: Any, jobs: Sequence[Job], on_start: OnStart, on_done: OnDone) -> list[JobResult]:
        tracker = ray.remote(num_cpus=0)(Tracker).remote()
        remote = ray.remote(_on_worker)
        by_key = {job.key: job for job in jobs}
        refs = {
            remote.options(
                num_cpus=job.cpus,
                num_gpus=1 if job.needs_gpu else 0,
                max_retries=self.retries,
                retry_exceptions=False,
                name=job.key,
            ).remote(job, tracker): job
            for job in jobs
        }
        starts: dict[str, list[str]] = {}
        seen = 0
        signals: list[str] = []
        cancelled = 0  # how many times the outstanding tasks were cancelled (twice: forced)

        def stop(signum: int, frame: FrameType | None) -> None:
            signals.append(signal.Signals(signum).name)

        results: list[JobResult] = []
        with signals_to(stop):
            while refs:
                if len(signals) > cancelled:  # first signal: SIGINT to running jobs; second: kill them
                    cancelled += 1
                    for ref in refs:
                        ray.cancel(ref, force=cancelled > 1)
                done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5, fetch_local=False)
                for key, where in ray.get(tracker.since.remote(seen)):
                    seen += 1
                    starts.setdefault(key, []).append(where)
                    attempt = len(starts[key])
                    on_start(by_key[key], where + (f", attempt {attempt}" if attempt > 1 else ""))
                for ref in done:
                    job = refs.pop(ref)
                    result = self._settle(ray, ref, job, starts.get(job.key, []), signals)
                    if result is None:
                        continue
                    results.append(result)
                    if result.manifest_fault:
                        for other, queued in refs.items():
                            if queued.manifest == job.manifest and queued.key not in starts:
                                ray.cancel(other)
                    on_done(result)
        return results

    @staticmethod
    def _settle(ray: Any, ref: Any, job: Job, starts: list[str], signals: list[str]) -> JobResult | None:
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        attempts = max(1, len(starts))
        try:
            result: JobResult = ray.get(ref)
            return replace(result, attempts=attempts)
        except TaskCancelledError:
            if not starts:
                return None  # cancelled while queued: it never ran, nothing to record
            why = f"stopped by {signals[0] if signals else 'SIGINT'}"
            return unrecorded(job, "cancelled", RunError("RunCancelled", why), runner=job.runner)
        except RayTaskError as e:  # our own code raised on the worker: a bug, recorded as one
            message = " ".join(str(e.cause if e.cause is not None else e).split())[:4000]
            return unrecorded(job, "failed", RunError("WorkerError", message), runner=job.runner)
        except RayError as e:  # the worker or its node was lost on every attempt
            first = (str(e).strip().splitlines() or [""])[0][:300]
            message = (
                f"the Ray worker running it was lost on each of {attempts} attempt(s) "
                f"({type(e).__name__}: {first})"
            )
            lost = RunError("WorkerLost", message)
            return unrecorded(job, "failed", lost, runner=job.runner, attempts=attempts)
