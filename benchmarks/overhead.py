"""Overhead of peftrepro's training loop against a bare PyTorch + peft loop.

Same model (the `arithmetic` task's SmolLM2-135M, or the tests' tiny stand-in with --tiny), same
LoRA config, same batches (the task's seeded stream), same optimizer and schedule. Each variant
runs in its own child process (so that peak RSS is its own), alternating A B A B ...; prints the
median time per training step of each, the ratio, and each variant's peak RSS. Goal: ratio <= 1.05.

    .venv/bin/python benchmarks/overhead.py [--steps 30] [--repeats 2] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.tiny

from peftrepro.measure import ALLOCATOR_ENV

LORA = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": "all-linear",
}
WARMUP_STEPS = 3  # excluded from the medians: first steps pay for allocations


def measure(variant: str, steps: int, tiny: bool) -> dict[str, float]:
    import torch

    from peftrepro import peftconfig
    from peftrepro.runconfig import OPTIMIZERS, TrainingConfig
    from peftrepro.tasks import get_task
    from peftrepro.training import (
        configure_determinism,
        lr_factor,
        seed_everything,
        train,
    )

    if tiny:
        from tests.tiny import register_tiny

        register_tiny(Path(tempfile.mkdtemp(prefix="peftrepro-tiny-")))
    task = get_task("arithmetic")
    configure_determinism(task.num_threads)
    prepared = task.prepare()
    cfg = TrainingConfig(**{**task.training_defaults, "max_steps": steps, "eval_steps": steps})
    seed_everything(0)
    model = peftconfig.attach(prepared.model, peftconfig.build(dict(LORA), "overhead"))
    device = torch.device("cpu")
    if variant == "peftrepro":
        step_times: list[float] = []
        real_step = None

        def on_step(step: int) -> None:  # the loop's own hook: time between consecutive steps
            nonlocal real_step
            now = time.perf_counter()
            if real_step is not None:
                step_times.append(now - real_step)
            real_step = now

        train(
            model,
            prepared.batches(0, cfg),
            prepared.loss,
            cfg,
            validate=lambda m: 0.0,
            valid_key=task.valid_key,
            device=device,
            progress=False,
            on_step=on_step,
        )
    else:  # the loop a user would write by hand: same batches, optimizer, schedule, clipping
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS[cfg.optimizer_type][0](params, **cfg.optimizer_kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
        batches = prepared.batches(0, cfg)  # the task's own batches: same data, same order
        step_times = []
        last = None
        model.train()
        for _ in range(steps):
            batch = next(batches)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_norm_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            out.loss.item()
            now = time.perf_counter()
            if last is not None:
                step_times.append(now - last)
            last = now
    timed = step_times[WARMUP_STEPS:]
    return {
        "step_seconds": statistics.median(timed),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--variant", choices=["peftrepro", "bare"], help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.steps, args.tiny)))
        return
    results: dict[str, list[dict[str, float]]] = {"peftrepro": [], "bare": []}
    for _ in range(args.repeats):
        for variant in ("peftrepro", "bare"):
            cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps)]
            out = subprocess.run(
                cmd + (["--tiny"] if args.tiny else []),
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **ALLOCATOR_ENV},  # as every run's process starts
            )
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    step = {v: statistics.median(r["step_seconds"] for r in rs) for v, rs in results.items()}
    peak = {v: max(r["peak_rss_bytes"] for r in rs) for v, rs in results.items()}
    for v in ("peftrepro", "bare"):
        ms, gib = step[v] * 1000, peak[v] / 2**30
        print(f"{v:9s}  {ms:8.1f} ms/step  peak RSS {gib:.2f} GiB  ({args.repeats} runs)")
    time_ratio, memory_ratio = step["peftrepro"] / step["bare"], peak["peftrepro"] / peak["bare"]
    print(f"ratio peftrepro / bare: time {time_ratio:.3f}, memory {memory_ratio:.3f}")


if __name__ == "__main__":
    main()
