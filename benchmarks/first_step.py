"""The size of an adapter's update at init and after ONE optimizer step, against the learning rate.

Why DeLoRA, FourierFT and random-init prefix tuning are degenerate on the `arithmetic` track (their
lines in benchmarks/corpus.py's WHY_DEGENERATE):
- peft's DeLoRA starts from B = 0 and normalises B's columns, so any first step sets the update to
  its full strength lambda, whatever the rate;
- peft's FourierFT with init_weights false (the public comparison's setting) starts from a random
  spectrum: at scaling 300 the untrained adapter already moves the layer, and the loss with it;
- peft's prefix tuning without init_weights draws its keys and values from N(0, 1) at every layer,
  far from the model's own: the untrained prefix alone raises the loss, which init_weights "zero"
  (the public comparison's zero_init row) does not.
LoRA, for contrast, is zero at init and grows with the rate. Prints |dW|/|W| of one layer at init
and after the step (for prefixes: the prefix's key and value norms against the model's own), and
the training loss of the batch before and after the step.

    .venv/bin/python benchmarks/first_step.py
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from peftrepro.manifest import ResolvedManifest, resolve
from peftrepro.peftconfig import attach, build
from peftrepro.sweep import with_lr
from peftrepro.tasks import get_task
from peftrepro.training import configure_determinism, make_optimizer, seed_everything

ROOT = Path(__file__).resolve().parent.parent
LAYER = 10  # any layer shows it; the ratio is per layer


def one_step(
    prepared, batch, manifest: ResolvedManifest, lr: float, module: str
) -> tuple[float, float, float, float]:
    """The run's own pieces (attach, the manifest's optimizer at `lr`), one step, then measure:
    (|dW|/|W| at init, |dW|/|W| after, batch loss before, batch loss after)."""
    seed_everything(0)
    model = attach(prepared.load_base(), build(manifest.peft_config or {}, str(manifest.path)))
    opt = make_optimizer(model, with_lr(manifest, lr).training)
    layer = model.base_model.model.model.layers[LAYER].get_submodule(module)

    def ratio() -> float:
        with torch.no_grad():
            return (layer.get_delta_weight("default").norm() / layer.base_layer.weight.norm()).item()

    at_init = ratio()
    loss = prepared.loss(model, batch)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = prepared.loss(model, batch).item()
    return at_init, ratio(), loss.item(), after


def prefix_step(prepared, batch, manifest: ResolvedManifest, lr: float) -> tuple[float, float, float, float]:
    """Prefix tuning has no dW: (the norm of one head's key and of its value in layer LAYER's prefix at
    init, the batch loss before and after one step at `lr`)."""
    seed_everything(0)
    model = attach(prepared.load_base(), build(manifest.peft_config or {}, str(manifest.path)))
    cfg = model.peft_config["default"]
    table = model.prompt_encoder["default"].embedding.weight.detach()  # one row per virtual token
    kv = table.reshape(cfg.num_virtual_tokens, cfg.num_layers, 2, cfg.num_attention_heads, -1)[:, LAYER]
    k, v = (kv[:, i].norm(dim=-1).mean().item() for i in (0, 1))
    opt = make_optimizer(model, with_lr(manifest, lr).training)
    loss = prepared.loss(model, batch)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return k, v, loss.item(), prepared.loss(model, batch).item()


def base_pass(prepared, batch) -> tuple[float, float, float]:
    """The base model's batch loss, and the mean norm of one head's key and value vector in layer
    LAYER over the batch (one forward pass)."""
    model, seen = prepared.load_base(), {}
    attn = model.model.layers[LAYER].self_attn
    hooks = [
        getattr(attn, f"{n}_proj").register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out))
        for n in ("k", "v")
    ]
    with torch.no_grad():
        loss = prepared.loss(model, batch).item()
    for h in hooks:
        h.remove()
    dim = model.config.head_dim
    k, v = (seen[n].reshape(-1, dim).norm(dim=-1).mean().item() for n in ("k", "v"))
    return loss, k, v


def main() -> None:
    task = get_task("arithmetic")
    configure_determinism(task.num_threads)
    prepared = task.prepare()
    sub = ROOT / "submissions/arithmetic"
    batch = next(prepared.batches(0, resolve(sub / "lora/default/manifest.json").training))
    print(f"one AdamW step on the first training batch (seed 0); |dW|/|W| of one module of layer {LAYER}")
    cases = (
        ("delora/r8", "mlp.down_proj", (1e-5, 1e-4, 1e-3)),
        ("fourierft/n1000", "self_attn.q_proj", (1e-4, 1e-3, 1e-2)),
        ("lora/default", "mlp.down_proj", (1e-4, 1e-3)),
    )
    for name, module, lrs in cases:
        manifest = resolve(sub / name / "manifest.json")
        for lr in lrs:
            at_init, ratio, before, after = one_step(prepared, batch, manifest, lr, module)
            print(
                f"{name:15} {module:16} lr {lr:<6g} |dW|/|W| {at_init:.3g} at init, {ratio:.3g} after"
                f"   batch loss {before:.3f} -> {after:.3f}"
            )
    base, k, v = base_pass(prepared, batch)
    print(
        f"base model: batch loss {base:.3f}; layer {LAYER}'s own key / value per head: norm {k:.2f} / {v:.2f}"
    )
    prefix = resolve(sub / "prefix-tuning/t20/manifest.json")
    for label, init in (("random init", None), ('init_weights "zero"', "zero")):
        config = dict(prefix.peft_config or {}, **({"init_weights": init} if init else {}))
        manifest = replace(prefix, peft_config=config)
        for lr in (1e-3, 1e-2, 1e-1):
            k, v, before, after = prefix_step(prepared, batch, manifest, lr)
            print(
                f"prefix-tuning/t20 {label:19} lr {lr:<6g} prefix key / value per head at init: norm "
                f"{k:.2f} / {v:.2f}   batch loss {before:.3f} -> {after:.3f}"
            )


if __name__ == "__main__":
    main()
