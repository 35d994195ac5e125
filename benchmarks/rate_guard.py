"""The divergence guard of a design candidate's rate rule, decided on validation data only.

A transplanted learning rate (`transplant.py`: the public rate x this track's default over theirs)
over-pushes some configs that were already tuned high: on `gsm-symbolic`, delora at 1e-2 and ia3
at 5e-2 end at or below the base model. The guard, the same for every experiment: a seed's run
whose final validation score is not above the base model's validation score, and whose general-
text CE rose by more than MOVED nats (it moved the model, for the worse), has diverged; its
learning rate is divided by sqrt(10) and the run is repeated, at most `--max-cuts` times. A run
that moved nothing (AdaLoRA in 30 steps: forgetting -0.0001) learned nothing, which a lower rate
cannot mend: it keeps its record. The test split is never read, so the rule cannot tune on it.

    .venv/bin/python benchmarks/rate_guard.py submissions/gsm-symbolic [--seed 0] [--apply]

Without `--apply` it lists each run's validation score against the base's; with it, a diverged
experiment's manifest gets the lower rate (and says so in its description) and its records of
that seed are removed (the manifest changed, so they would be stale anyway; git keeps them), so
`run_each.sh` runs it again.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peftrepro.jsonio import pretty_bytes
from peftrepro.manifest import find_manifests, load_raw
from peftrepro.records import newest_per_seed
from peftrepro.tasks import get_task
from peftrepro.tasks.base import Task

CUT = math.sqrt(10)
MOVED = 0.05  # nats per token of general-text CE
MARK = "Rate guard:"


def base_valid_score(task: Task) -> float:
    prepared = task.prepare()
    batch = int(task.training_defaults.get("batch_size_eval", 8))
    return prepared.evaluate(prepared.model.eval(), "valid", batch)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tree", type=Path, help="a task folder (submissions/gsm-symbolic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apply", action="store_true")
    parser.add_argument("--max-cuts", type=int, default=2)
    args = parser.parse_args()
    task = get_task(args.tree.name)
    valid_key = "valid_" + task.score_key.removeprefix("test_")
    base = base_valid_score(task)
    print(f"base model, validation {valid_key}: {base:.4f}")
    for manifest in find_manifests([args.tree]):
        folder = manifest.parent
        runs = newest_per_seed(folder, task.score_key).get(task.version, {})
        metrics = runs.get(args.seed)
        if metrics is None:
            continue
        curve = metrics.get("valid_curve") or []
        if not curve:
            continue
        valid = curve[-1][valid_key]
        doc = load_raw(manifest)
        lr = doc["training"]["optimizer_kwargs"]["lr"]
        cuts = doc.get("description", "").count(MARK)
        change = metrics.get("forgetting", 0.0)
        if valid > base:
            verdict = "ok"
        elif change <= MOVED:
            verdict = f"learned nothing (forgetting {change:+.4f}): kept"
        else:
            verdict = "diverged" if cuts < args.max_cuts else "diverged, no cuts left"
        print(f"{folder.parent.name}/{folder.name}: lr {lr:g}, validation {valid:.4f}: {verdict}")
        if verdict != "diverged" or not args.apply:
            continue
        new_lr = float(f"{lr / CUT:.3g}")
        doc["training"]["optimizer_kwargs"]["lr"] = new_lr
        doc["description"] = (
            doc.get("description", "")
            + f" {MARK} seed {args.seed} at lr {lr:g} ended at validation {valid:.4f}, not above the"
            f" base model's {base:.4f}, so lr / sqrt(10) = {new_lr:g}."
        )
        manifest.write_bytes(pretty_bytes(doc))
        for path in (folder / "runs").glob(f"*-s{args.seed}-*.json"):
            path.unlink()
        print(f"  -> lr {new_lr:g}; {folder} runs seed {args.seed} again")


if __name__ == "__main__":
    main()
