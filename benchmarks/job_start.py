"""What a job pays before its first instruction of real work, and the memory it starts with.

Every job (each seed of `run --seeds`, each sweep point, each verify re-run) runs in a process of
its own. Measured in this run, N times each:
  spawn     a fresh interpreter that imports the job stack (what a job paid before the template);
  template  a process forked from the warm template (executors/template.py: what a job pays now;
            the template's own start is paid once per command).
For each: seconds from asking for the process to the stack being importable in it, and the
process's RSS at that moment. The template must not hand a job more resident memory than a fresh
process has after its imports (a run's CPU memory figures are its process's RSS).

    .venv/bin/python benchmarks/job_start.py [--n 5]
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import statistics
import time
from multiprocessing.context import BaseContext
from typing import Any

from peftrepro.executors.template import PRELOAD, job_environment, warm_context
from peftrepro.measure import rss_bytes


def ready(conn: Any, env: dict[str, str]) -> None:
    os.environ.update(env)
    for name in PRELOAD:
        importlib.import_module(name)
    conn.send((time.perf_counter(), rss_bytes()))


def start_once(ctx: BaseContext) -> tuple[float, int]:
    parent, child = ctx.Pipe()
    t0 = time.perf_counter()
    p = ctx.Process(target=ready, args=(child, job_environment()))  # type: ignore[attr-defined]
    p.start()
    _, rss = parent.recv()
    elapsed = time.perf_counter() - t0
    p.join()
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    t0 = time.perf_counter()
    warm, _ = warm_context()
    start_once(warm)
    template = time.perf_counter() - t0
    spawn = multiprocessing.get_context("spawn")
    results = {
        "spawn": [start_once(spawn) for _ in range(args.n)],
        "template": [start_once(warm) for _ in range(args.n)],
    }
    for name, values in results.items():
        seconds = statistics.median(v[0] for v in values)
        rss = statistics.median(v[1] for v in values) / 2**20
        print(f"{name:>9}: median {seconds:.2f} s per job start, RSS at start {rss:.0f} MiB (n={args.n})")
    print(f"template start (once per command): {template:.2f} s")
    t, f = results["template"], results["spawn"]
    s = statistics.median(v[0] for v in t) / statistics.median(v[0] for v in f)
    m = statistics.median(v[1] for v in t) / statistics.median(v[1] for v in f)
    print(f"template/spawn: start time {s:.3f}, RSS at start {m:.3f}")


if __name__ == "__main__":
    main()
