"""The size of an adapter's update after ONE optimizer step, against the learning rate.

Why DeLoRA is degenerate on the `arithmetic` track (its line in benchmarks/corpus.py's
WHY_DEGENERATE): peft's DeLoRA starts from B = 0 and normalises B's columns, so any first step sets
the update to its full strength lambda, whatever the rate. LoRA, for contrast, grows with the rate.
Prints |dW|/|W| of one layer and the training loss of the batch before and after the step.

    .venv/bin/python benchmarks/first_step.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from peftrepro.manifest import ResolvedManifest, resolve
from peftrepro.peftconfig import attach, build
from peftrepro.sweep import with_lr
from peftrepro.tasks import get_task
from peftrepro.training import configure_determinism, make_optimizer, seed_everything

ROOT = Path(__file__).resolve().parent.parent
LAYER = 10  # any layer shows it; the ratio is per layer


def one_step(prepared, batch, manifest: ResolvedManifest, lr: float) -> tuple[float, float, float]:
    """The run's own pieces (attach, the manifest's optimizer at `lr`), one step, then measure."""
    seed_everything(0)
    model = attach(prepared.load_base(), build(manifest.peft_config or {}, str(manifest.path)))
    opt = make_optimizer(model, with_lr(manifest, lr).training)
    loss = prepared.loss(model, batch)
    loss.backward()
    opt.step()
    layer = model.base_model.model.model.layers[LAYER].mlp.down_proj
    with torch.no_grad():
        ratio = (layer.get_delta_weight("default").norm() / layer.base_layer.weight.norm()).item()
        after = prepared.loss(model, batch).item()
    return ratio, loss.item(), after


def main() -> None:
    task = get_task("arithmetic")
    configure_determinism(task.num_threads)
    prepared = task.prepare()
    sub = ROOT / "submissions/arithmetic"
    batch = next(prepared.batches(0, resolve(sub / "lora/default/manifest.json").training))
    print(f"one AdamW step on the first training batch (seed 0); |dW|/|W| of layer {LAYER}'s down_proj")
    for name, lrs in (("delora/r8", (1e-5, 1e-4, 1e-3)), ("lora/default", (1e-4, 1e-3))):
        manifest = resolve(sub / name / "manifest.json")
        for lr in lrs:
            ratio, before, after = one_step(prepared, batch, manifest, lr)
            print(f"{name:13} lr {lr:<6g} |dW|/|W| {ratio:.3g}   batch loss {before:.3f} -> {after:.3f}")


if __name__ == "__main__":
    main()
