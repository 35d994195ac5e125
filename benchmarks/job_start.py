"""What a job pays before its first instruction of real work: a fresh process and its imports.

Every job (each seed of `run --seeds`, each sweep point, each verify re-run) starts in a process of
its own (executors/local.py, `spawn`), which imports torch, transformers, peft and the task's code
again. Measured in this run, N times each:
  spawn       a fresh interpreter that imports the job stack (what a job pays today);
  forkserver  a process forked from a template that imported the stack once (what a warm template
              would cost a job; the template's own start is paid once per command).

    .venv/bin/python benchmarks/job_start.py [--n 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

STACK = ["torch", "transformers", "peft", "peftrepro.executors.work", "peftrepro.tasks.arithmetic"]


def ready(conn: object) -> None:
    import importlib

    for name in STACK:
        importlib.import_module(name)
    conn.send(time.perf_counter())  # type: ignore[attr-defined]


def start_once(ctx: multiprocessing.context.BaseContext) -> float:
    parent, child = ctx.Pipe()
    t0 = time.perf_counter()
    p = ctx.Process(target=ready, args=(child,))
    p.start()
    parent.recv()
    elapsed = time.perf_counter() - t0
    p.join()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    fork = multiprocessing.get_context("forkserver")
    fork.set_forkserver_preload(STACK)
    t0 = time.perf_counter()
    start_once(fork)  # starts the template (imports the stack once)
    template = time.perf_counter() - t0
    results = {
        "spawn": [start_once(spawn) for _ in range(args.n)],
        "forkserver": [start_once(fork) for _ in range(args.n)],
    }
    for name, values in results.items():
        print(f"{name:>10}: median {statistics.median(values):.2f} s per job start (n={args.n})")
    print(f"template start (once per command): {template:.2f} s")
    ratio = statistics.median(results["forkserver"]) / statistics.median(results["spawn"])
    print(f"forkserver/spawn: {ratio:.3f}")


if __name__ == "__main__":
    main()
