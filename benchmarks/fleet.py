"""The executors at small scale: 16 tiny jobs, local with 1 and 2 processes, and Ray on this machine.

Each job is a real run (the tests' tiny stand-in of the `arithmetic` model, one thread, 30 steps)
in a fresh process, as every executor runs it. Prints the wall time of each executor, the ratios,
and Ray's overhead per job against the local executor at the same parallelism; checks that the
three sets of records measured the same (scores, curve, adapter bytes).

    .venv/bin/python benchmarks/fleet.py [--jobs 16] [--steps 30]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.tiny

from peftrepro.executors import Job, JobResult
from peftrepro.executors.batch import ExecutorChoice, land
from peftrepro.executors.ray_fleet import RayExecutor
from peftrepro.manifest import resolve
from peftrepro.tasks import register
from peftrepro.tasks.arithmetic import GGUFSource, LocalDirSource

SAME = ("test_accuracy", "forgetting", "valid_curve", "train_loss_final", "adapter_sha256")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    from tests.ray_cluster import private_cluster
    from tests.tiny import OneThreadArithmeticTask, build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="peftrepro-fleet-"))
    os.environ["PEFTREPRO_CACHE"] = str(root / "cache")
    model = build_tiny_model(root / "tiny")
    register(
        "arithmetic", functools.partial(OneThreadArithmeticTask, LocalDirSource(model, GGUFSource.model_id))
    )
    folder = root / "submissions" / "arithmetic" / "lora" / "tiny"
    folder.mkdir(parents=True)
    manifest = {
        "schema_version": 1,
        "task": "arithmetic",
        "method": "lora",
        "name": "tiny",
        "title": "LoRA on the tiny stand-in",
        "authors": ["benchmarks"],
        "description": "The fleet benchmark's job: a short run on the tests' tiny stand-in model.",
        "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": args.steps, "eval_steps": args.steps, "batch_size": 4, "warmup_steps": 1},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    resolved = resolve(folder / "manifest.json")
    jobs = [Job.for_manifest(resolved, seed=s) for s in range(args.jobs)]
    # warm the base-model cache
    ExecutorChoice("local").make().map(jobs[:1], lambda j, w: None, lambda r: None)

    port = 46000 + os.getpid() % 1000
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    walls: dict[str, float] = {}
    records: dict[str, dict[int, dict]] = {}
    t0 = time.perf_counter()
    with private_cluster(port, os.cpu_count() or 1, root, env) as address:
        ray_start = time.perf_counter() - t0
        for label, executor in (
            ("local, 1 process", ExecutorChoice("local", jobs=1).make()),
            ("local, 2 processes", ExecutorChoice("local", jobs=2).make()),
            ("ray, this machine", ExecutorChoice("ray", address=address).make()),
            # The same jobs twice more from one connection (one Ray job): the first pass starts Ray's
            # worker processes and their job templates, the second finds them warm, so it is the
            # per-job cost once a cluster's workers have imported the job stack.
            ("ray, one connection", RayExecutor(address, keep_connected=True)),
            ("ray, warm workers", RayExecutor(address, keep_connected=True)),
        ):
            runs = root / "runs" / label.replace(" ", "").replace(",", "-")
            got: dict[int, dict] = {}

            where: set[str] = set()

            def keep(
                result: JobResult, runs: Path = runs, got: dict[int, dict] = got, where: set[str] = where
            ) -> None:
                assert result.run is not None, result.error
                land(result.run, runs)
                got[result.job.seed] = result.run.record.to_json()
                where.add(result.where)

            t0 = time.perf_counter()
            executor.map(jobs, lambda j, w: None, keep)
            walls[label] = time.perf_counter() - t0
            records[label] = got
            statuses = sorted({r["status"] for r in got.values()})
            print(f"{label}: {len(got)} jobs in {walls[label]:.1f} s ({' '.join(statuses)})", flush=True)
            inside = sum(r["metrics"].get("total_seconds", 0) for r in got.values()) / max(1, len(got))
            print(f"  the run itself (record's total_seconds): {inside:.1f} s per job")
            if label.startswith("ray"):
                print(f"  on {len(where)} Ray worker process(es)")
            failed = [r["error"] for r in got.values() if r["status"] != "success"]
            if failed:
                print(f"  first error: {failed[0]}")
        import ray as ray_module

        ray_module.shutdown()  # the kept connection, before its cluster stops

    base = records["local, 1 process"]
    same = all(
        sorted(r) == sorted(base)
        and all(r[s]["metrics"][k] == base[s]["metrics"][k] for s in base for k in SAME)
        for r in records.values()
    )
    one, two, ray = walls["local, 1 process"], walls["local, 2 processes"], walls["ray, this machine"]
    warm = walls["ray, warm workers"]
    per_job = sum(b["metrics"]["total_seconds"] for b in base.values()) / len(base)
    print()
    print(f"machine: {os.cpu_count()} CPUs; {args.jobs} jobs of {args.steps} steps ({per_job:.1f} s each)")
    print(f"local 2 processes / local 1 process: {two / one:.2f} (wall)")
    print(f"ray / local 2 processes:             {ray / two:.2f} (wall)")
    print(f"ray / local 1 process:               {ray / one:.2f} (wall)")
    print(f"ray overhead per job at 2 at a time: {(ray - two) * 2 / args.jobs:+.2f} s")
    warm_overhead = (warm - two) * 2 / args.jobs
    print(f"... with warm workers:               {warm_overhead:+.2f} s (ray/local {warm / two:.2f})")
    print(f"ray cluster start (not in the above): {ray_start:.1f} s")
    print(f"records measured the same under all three: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
