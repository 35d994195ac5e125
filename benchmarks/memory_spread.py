"""How much the CPU memory figures of one and the same run move between fresh processes, with
glibc's default allocator settings and with the ones every run uses (measure.ALLOCATOR_ENV).

Each process runs the `arithmetic` LoRA submission's first --steps training steps (seed 0, the
same batches every time) and reports the MemorySampler's average and peak RSS and the step time.
Processes alternate default / pinned. Prints each setting's spread, (max - min) / median, and
the pinned / default step-time ratio. The verifier's CPU memory band rests on these figures.

    .venv/bin/python benchmarks/memory_spread.py [--steps 12] [--repeats 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peftrepro.measure import ALLOCATOR_ENV  # noqa: E402

MANIFEST = ROOT / "submissions/arithmetic/lora/default/manifest.json"


def measure(steps: int) -> dict[str, float]:
    from peftrepro import job
    from peftrepro.manifest import resolve

    m = resolve(MANIFEST)
    m = dataclasses.replace(m, training=dataclasses.replace(m.training, max_steps=steps, eval_steps=10**6))
    trained = job.train_adapter(m, seed=0, runner="local", state={}, progress=False, measure_base=False)
    memory = trained.result.memory
    assert memory is not None
    return {
        "avg": memory.avg_bytes,
        "peak": memory.peak_bytes,
        "step_seconds": trained.result.train_seconds / trained.result.steps,
    }


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.steps)))
        return
    base_env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    settings = {"default": base_env, "pinned": {**base_env, **ALLOCATOR_ENV}}
    found: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, env in settings.items():
            cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
            found[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for name, rows in found.items():
        avg, peak = [r["avg"] for r in rows], [r["peak"] for r in rows]
        print(
            f"{name:8s} avg RSS {min(avg) / 2**30:.3f}-{max(avg) / 2**30:.3f} GiB (spread {spread(avg):.1%})"
            f"  peak {min(peak) / 2**30:.3f}-{max(peak) / 2**30:.3f} GiB (spread {spread(peak):.1%})"
            f"  {statistics.median(r['step_seconds'] for r in rows) * 1000:.0f} ms/step  ({len(rows)} runs)"
        )
    ratio = statistics.median(r["step_seconds"] for r in found["pinned"]) / statistics.median(
        r["step_seconds"] for r in found["default"]
    )
    print(f"step time pinned / default: {ratio:.3f}")


if __name__ == "__main__":
    main()
