"""Smoke test of the GPU tracks on a CUDA device, with tiny stand-in models (no hub, no network).

Runs one short LoRA training of `metamathqa` and of `image-gen` through `peftrepro run` (the same
loaders, loop, evaluation and record as a real run) and checks what only a GPU exercises: the
records say CUDA, the bfloat16 base model was used, and the accelerator memory figures are
non-zero and ordered (average <= p99 <= peak, all below the device's memory). Then `peftrepro
verify` of a published claim for the same manifest (another GPU's memory, this run's score): the
verification is written, bound to the claim, memory not compared, the score judged in its band.

    .venv/bin/python benchmarks/gpu_smoke.py          # needs a CUDA device
    .venv/bin/python benchmarks/gpu_smoke.py --cpu    # the same checks on the CPU (memory is RSS)

Exit 0 when every check holds, 1 when one fails, 2 when there is no CUDA device (without --cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MANIFESTS = {
    "metamathqa": {
        "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": 6,
            "eval_steps": 3,
            "batch_size": 2,
            "batch_size_eval": 4,
            "warmup_steps": 1,
        },
    },
    "image-gen": {
        "peft_config": {
            "peft_type": "LORA",
            "r": 4,
            "lora_alpha": 4,
            "target_modules": ["to_q", "to_k", "to_v"],
        },
        "training": {"max_steps": 6, "eval_steps": 3, "max_seq_length": 32},
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU when there is no CUDA device.")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        if not args.cpu:
            print("no CUDA device here: nothing to smoke-test (--cpu runs the same checks on the CPU)")
            return 2
        os.environ["PEFTREPRO_ALLOW_CPU"] = "1"
    from click.testing import CliRunner

    from peftrepro.cli import main as cli
    from tests.tiny import register_tiny_imagegen, register_tiny_metamathqa

    device = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    print(f"device: {device.name + f' ({device.total_memory / 2**30:.1f} GiB)' if device else 'cpu'}")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PEFTREPRO_CACHE"] = str(Path(tmp) / "cache")
        register_tiny_metamathqa(Path(tmp) / "tiny-metamathqa")
        register_tiny_imagegen(Path(tmp) / "tiny-imagegen")
        for task, spec in MANIFESTS.items():
            folder = Path(tmp) / "submissions" / task / "lora" / "smoke"
            folder.mkdir(parents=True)
            doc = {
                "schema_version": 1,
                "task": task,
                "method": "lora",
                "name": "smoke",
                "title": f"GPU smoke test of {task}",
                "authors": ["benchmarks/gpu_smoke.py"],
                "description": "A few LoRA steps on the tiny stand-in models, to exercise the CUDA paths.",
                **spec,
            }
            (folder / "manifest.json").write_text(json.dumps(doc))
            t0 = time.perf_counter()
            result = CliRunner().invoke(cli, ["run", str(folder)])
            wall = time.perf_counter() - t0
            records = sorted((folder / "runs").glob("*.json"))
            if result.exit_code != 0 or not records:
                failures.append(f"{task}: run failed (exit {result.exit_code}): {result.output[-500:]}")
                continue
            record = json.loads(records[-1].read_text())
            m, env = record["metrics"], record["environment"]
            peak, avg, p99 = m["peak_memory_bytes"], m["memory_avg_bytes"], m["memory_p99_bytes"]
            score = m.get("test_accuracy", m.get("test_concept_score"))
            print(
                f"{task}: {record['status']} in {wall:.1f} s; score {score:.3f}, "
                f"memory avg {avg / 2**20:.1f} MiB, p99 {p99 / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB; "
                f"train {m['train_seconds']:.2f} s; accelerator {env.get('accelerator', {}).get('kind')}; "
                f"dtype {env['artifacts']['model']['dtype']}"
            )
            checks = {
                "status success": record["status"] == "success",
                "memory figures non-zero": min(peak, avg, p99) > 0,
                "avg <= p99 <= peak": avg <= p99 <= peak,
                "bfloat16 base model": env["artifacts"]["model"]["dtype"] == "bfloat16",
            }
            if device is not None:
                checks["record says cuda"] = env.get("accelerator", {}).get("kind") == "cuda"
                checks["peak below the device's memory"] = peak < device.total_memory
            failures += [f"{task}: {name}" for name, ok in checks.items() if not ok]
            failures += [f"{task}: {f}" for f in verify_published_claim(cli, folder, record)]
    for failure in failures:
        print(f"FAILED {failure}")
    print("all checks hold" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def verify_published_claim(cli: Any, folder: Path, record: dict[str, Any]) -> list[str]:
    """`peftrepro verify` on a published claim: a claim as `peftrepro import` writes one, with this
    run's own score and parameter count and another GPU's memory, re-run on seed 0 and judged."""
    from click.testing import CliRunner

    from peftrepro.jsonio import pretty_bytes
    from peftrepro.manifest import resolve
    from tests.golden_tree import published_claim

    m = record["metrics"]
    score_key = "test_accuracy" if "test_accuracy" in m else "test_concept_score"
    claim = published_claim(resolve(folder / "manifest.json"), "lora--smoke")
    claim["metrics"] = {
        score_key: m[score_key],
        "trainable_params": m["trainable_params"],
        "peak_memory_bytes": 20 * 2**30,
    }
    (folder / "claims").mkdir()
    (folder / "claims" / f"{claim['claim_id']}.json").write_bytes(pretty_bytes(claim))
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, ["verify", str(folder), "--seed", "0"])
    found = sorted((folder / "verifications" / "published").glob("*.json"))
    if result.exit_code not in (0, 1) or not found:
        return [f"verify of a published claim: exit {result.exit_code}: {result.output[-500:]}"]
    v = json.loads(found[-1].read_text())
    by = {c["metric"]: c for c in v["comparisons"]}
    print(
        f"  verify of a published claim in {time.perf_counter() - t0:.1f} s: {v['verdict']}; "
        + "; ".join(f"{k} {c['outcome']} ({c['detail']})" for k, c in by.items())
    )
    checks = {
        "verification bound to the claim": v["published"]["claim_id"] == claim["claim_id"],
        "trainable params match": by["trainable_params"]["outcome"] == "match",
        "memory of another GPU not compared": by["peak_memory_bytes"]["outcome"] == "not_comparable",
        "score judged in a band": by[score_key]["tolerance"] == "score" and "band" in by[score_key]["detail"],
    }
    return [f"verify: {name}" for name, ok in checks.items() if not ok]


if __name__ == "__main__":
    sys.exit(main())
