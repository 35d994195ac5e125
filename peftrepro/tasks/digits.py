"""`digits`: teach a small diffusion model a digit it has never seen, and measure what it forgets.

The CPU-sized shape of the public image task (FLUX learning one cat plushy from 14 photos): a
class-conditional diffusers `UNet2DModel` is trained by a pinned recipe on scikit-learn's digits,
upscaled to 16x16, with one class held out. Its class slot for that digit was never trained. A
submission's adapter learns the digit from 20 images through that slot.

Scores come from an evaluator the generator never sees: a small CNN trained (deterministically,
by its own recipe) on real digits of all ten classes. `test_concept_score` is the share of 100
samples, drawn for the new class from fixed seeds, that the evaluator assigns to it. `drift` is
how far the samples of the nine known classes move in the evaluator's feature space between the
base model and the trained one (same seeds), as 1 - cosine similarity, averaged: 0 means
unchanged, 1 means orthogonal (features are post-ReLU, so the cosine lies in [0, 1]).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from peftrepro.errors import UsageError
from peftrepro.jsonio import canonical_sha256, sha256_file
from peftrepro.metrics import VerificationPolicy
from peftrepro.paths import cache_root
from peftrepro.runconfig import TrainingConfig
from peftrepro.tasks.base import Prepared, Probe, Task

SIZE = 16  # sklearn's 8x8 digits, bilinearly upscaled
CONCEPT = 7  # the held-out digit; chosen by measurement (see README's digits section)
N_CONCEPT_TRAIN = 20  # images of it an adapter learns from
TRAIN_TIMESTEPS = 1000
SAMPLE_STEPS = 20  # DDIM steps when generating (deterministic, eta = 0)
N_VALID, N_TEST = 40, 100  # concept samples scored
DRIFT_PER_CLASS = 8  # samples per known class for drift
VALID_SEED, TEST_SEED, DRIFT_SEED = 1_000, 2_000, 3_000
GRID_SCALE = 3

# Everything that determines the two models' bytes (with torch's build and the thread count).
BASE_RECIPE: dict[str, Any] = {
    "data": "sklearn.datasets.load_digits, 8x8 -> 16x16 bilinear, [-1, 1]",
    "held_out": CONCEPT,
    "unet": {
        "sample_size": SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "num_class_embeds": 10,
        "norm_num_groups": 8,  # 32 groups on 32 channels would normalise the class signal away
    },
    "scheduler": {"num_train_timesteps": TRAIN_TIMESTEPS},
    "steps": 2500,
    "batch_size": 64,
    "lr": 2e-3,
    "warmup_steps": 100,
    "seed": 0,
    "threads": 2,
}
EVALUATOR_RECIPE: dict[str, Any] = {
    "data": "sklearn.datasets.load_digits, all classes, 16x16; 80/20 split by seed 0",
    "net": "conv3x3(1,16)-relu-pool-conv3x3(16,32)-relu-pool-linear(512,64)-relu-linear(64,10)",
    "epochs": 15,
    "batch_size": 64,
    "lr": 1e-3,
    "seed": 0,
    "threads": 2,
}
# Pinned. RECIPE_SHA256 catches an edited recipe (the task version must then change and the pins
# be re-measured). The weights were measured on this project's reference machine (2 cores, torch
# 2.13.0+cpu), where the build repeats bit for bit; another CPU may round differently: the task
# then runs with the weights it built, says so, and records `pinned: false` beside their sha256.
RECIPE_SHA256 = "96f347ee8ff1e0fa8e7be31d54c2ac70b667305e6bdae211a334196dce8d050d"
BASE_WEIGHTS_SHA256 = "19569665495e748102828f09aa6083a88e0a4f8521fe1eee1fb54d4346a0452b"
EVALUATOR_SHA256 = "050adb449b3d54d3c5f160dd98b3815991f5f02ee59a4942dda318dfaab70c10"


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 scikit-learn digits as (N, 1, 16, 16) in [-1, 1], and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False).clamp(0, 1) * 2 - 1
    return x, torch.tensor(d.target, dtype=torch.long)


def evaluator_split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(EVALUATOR_RECIPE["seed"]))
    cut = int(n * 0.8)
    return perm[:cut], perm[cut:]


def concept_train_indices(labels: torch.Tensor) -> torch.Tensor:
    """The N_CONCEPT_TRAIN images of the held-out digit an adapter trains on, fixed by seed."""
    idx = (labels == CONCEPT).nonzero().flatten()
    pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(CONCEPT))[:N_CONCEPT_TRAIN]
    return idx[pick.sort().values]


class Evaluator(torch.nn.Module):
    """The digit classifier that scores generated samples; `features` is the drift space."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * (SIZE // 4) ** 2, 64)
        self.out = torch.nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def _diffusers() -> Any:
    """diffusers, imported when first needed (its lazy modules are opaque to type checkers)."""
    import diffusers

    return diffusers


def new_unet(cfg: dict[str, Any]) -> Any:
    return _diffusers().UNet2DModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


@functools.cache
def _ddpm() -> Any:
    """One noise schedule per process: building it costs a 1000-step table, not worth a step's time."""
    return _diffusers().DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS)


def add_noise(images: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _ddpm().add_noise(images, noise, t)


def diffusion_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Noise-prediction MSE at uniformly drawn timesteps (global RNG: seeded by the run)."""
    noise = torch.randn_like(images)
    t = torch.randint(0, TRAIN_TIMESTEPS, (len(images),), device=images.device)
    noisy = add_noise(images, noise, t)
    return F.mse_loss(model(sample=noisy, timestep=t, class_labels=labels).sample, noise)


# --- building the pinned base model and evaluator -------------------------------------------


def train_evaluator(x: torch.Tensor, y: torch.Tensor, r: dict[str, Any]) -> tuple[Evaluator, float]:
    train_idx, test_idx = evaluator_split(len(x))
    torch.manual_seed(r["seed"])
    net = Evaluator()
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    for _ in range(r["epochs"]):
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(0, len(order), r["batch_size"]):
            b = order[i : i + r["batch_size"]]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x[test_idx]).argmax(1) == y[test_idx]).float().mean())
    return net, accuracy


def train_base(x: torch.Tensor, y: torch.Tensor, r: dict[str, Any], log: Any = None) -> Any:
    torch.manual_seed(r["seed"])
    return train_on_known(new_unet(r["unet"]), diffusion_loss, x, y, r, log, "digits")


def train_on_known(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    r: dict[str, Any],
    log: Any,
    name: str,
) -> Any:
    """A base model's recipe loop: batches of the known classes only (the held-out digit never),
    AdamW with linear warmup; the global RNG seeded by the caller before the model was made."""
    known = (y != CONCEPT).nonzero().flatten()
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / r["warmup_steps"]))
    model.train()
    for step in range(r["steps"]):
        b = known[torch.randint(len(known), (r["batch_size"],))]
        loss = loss_fn(model, x[b], y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step + 1) % 500 == 0:
            log(f"{name} base model: step {step + 1}/{r['steps']}, loss {loss.item():.4f}")
    return model.eval()


def recipe_sha256(base: dict[str, Any] = BASE_RECIPE, evaluator: dict[str, Any] = EVALUATOR_RECIPE) -> str:
    return canonical_sha256({"base": base, "evaluator": evaluator})


def build(
    folder: Path,
    log: Any = None,
    base: dict[str, Any] = BASE_RECIPE,
    evaluator_recipe: dict[str, Any] = EVALUATOR_RECIPE,
) -> dict[str, Any]:
    """Train the evaluator and the base model into `folder` (written beside it, renamed into place).
    Tests pass smaller recipes; the task's cache folder is named by the pinned ones."""
    return build_models(
        folder, base, evaluator_recipe, train_base, "unet", recipe_sha256(base, evaluator_recipe), log
    )


def build_models(
    folder: Path,
    base: dict[str, Any],
    evaluator_recipe: dict[str, Any],
    train: Callable[[torch.Tensor, torch.Tensor, dict[str, Any], Any], Any],
    model_dir: str,
    recipe_sha: str,
    log: Any = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A digits track's two models, built into `folder`: the evaluator by its recipe, the base
    model by `train(x, y, base, log)` (saved with `save_pretrained` into `model_dir`), with
    `build.json` (the recipe's sha256, `info`, accuracy and seconds); written beside the folder and
    renamed into place, so a concurrent builder or an interrupted build leaves no half folder."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    previous = torch.get_num_threads()
    torch.set_num_threads(base["threads"])
    try:
        x, y = digit_images()
        t0 = time.perf_counter()
        evaluator, accuracy = train_evaluator(x, y, evaluator_recipe)
        t1 = time.perf_counter()
        model = train(x, y, base, log)
        t2 = time.perf_counter()
        save_file(
            {k: v.contiguous() for k, v in evaluator.state_dict().items()}, tmp / "evaluator.safetensors"
        )
        model.save_pretrained(tmp / model_dir)
        built = {
            "recipe_sha256": recipe_sha,
            **(info or {}),
            "evaluator_accuracy": accuracy,
            "evaluator_seconds": round(t1 - t0, 1),
            "base_seconds": round(t2 - t1, 1),
        }
        (tmp / "build.json").write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "build.json").exists():  # not a concurrent builder that won
                raise
        return built
    finally:
        torch.set_num_threads(previous)
        shutil.rmtree(tmp, ignore_errors=True)


# --- generation and scoring -----------------------------------------------------------------


@torch.inference_mode()
def generate(model: torch.nn.Module, labels: torch.Tensor, seed: int, batch_size: int) -> torch.Tensor:
    """DDIM samples (eta 0) for `labels`, starting noise fixed by `seed`: (N, 1, 16, 16) in [-1, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    noise = torch.randn(len(labels), 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    scheduler = _diffusers().DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS)
    scheduler.set_timesteps(SAMPLE_STEPS)
    out = []
    for i in range(0, len(labels), batch_size):
        x, c = noise[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        for t in scheduler.timesteps:
            x = scheduler.step(model(sample=x, timestep=t, class_labels=c).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    model.train(was_training)
    return torch.cat(out)


def drift(before: list[list[float]], after: list[list[float]]) -> float:
    """Mean of 1 - cos over paired feature vectors (in [0, 1] for non-negative features); a
    vector of zeros is as far as can be from any other (1), and equal to another zero vector (0)."""
    a, b = torch.tensor(before, dtype=torch.float64), torch.tensor(after, dtype=torch.float64)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-300)
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    return float((1 - cos.clamp(0, 1)).mean())


def known_classes() -> list[int]:
    return [c for c in range(10) if c != CONCEPT]


def drift_labels() -> torch.Tensor:
    return torch.tensor([c for c in known_classes() for _ in range(DRIFT_PER_CLASS)])


def grid_png(rows: list[torch.Tensor], path: Path) -> None:
    """Images in [-1, 1], one tensor (N, 1, H, W) per row, as a grayscale PNG (same pixels, same bytes)."""
    from PIL import Image

    pad, cell = 2, SIZE * GRID_SCALE
    width = max(len(r) for r in rows)
    canvas = np.full((pad + len(rows) * (cell + pad), pad + width * (cell + pad)), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels = ((1 - (row[:, 0] + 1) / 2) * 255).round().to(torch.uint8)  # ink dark on white
        big = pixels.repeat_interleave(GRID_SCALE, 1).repeat_interleave(GRID_SCALE, 2).numpy()
        for j, img in enumerate(big):
            y0, x0 = pad + i * (cell + pad), pad + j * (cell + pad)
            canvas[y0 : y0 + cell, x0 : x0 + cell] = img
    Image.fromarray(canvas, mode="L").save(path, format="PNG", optimize=False, compress_level=9)


def materialize_models(
    task: str,
    model_id: str,
    folder: Path,
    model_dir: str,
    pins: tuple[str, str, str] | None,
    recipe_sha: str,
    build_fn: Callable[[], Any],
    log: Any = None,
) -> dict[str, Any]:
    """A digits track's models, built into `folder` if missing, and what a record says of them.
    `pins` (recipe, base weights, evaluator sha256): an edited recipe is refused, and weights built
    here that differ from the pinned ones are used, said, and recorded as `pinned: false`. None: a
    folder built elsewhere (tests, design candidates), used as it is and never built here."""
    if pins is not None and recipe_sha != pins[0]:
        raise UsageError(
            f"the {task} recipe hashes to {recipe_sha}, not the pinned {pins[0]}: "
            "a changed recipe needs a new task version and new pins"
        )
    if not (folder / "build.json").exists():
        if pins is None:
            raise UsageError(f"{folder}: no {task} model here")
        if log is not None:
            log(f"building the {task} base model and evaluator (recipe {recipe_sha[:12]}) ...")
        build_fn()
    info = json.loads((folder / "build.json").read_text())
    weights = sha256_file(folder / model_dir / "diffusion_pytorch_model.safetensors")
    evaluator = sha256_file(folder / "evaluator.safetensors")
    pinned = pins is not None and (weights, evaluator) == pins[1:]
    if pins is not None and not pinned:
        print(
            f"note: the {task} models built here ({weights[:12]}, {evaluator[:12]}) differ from the "
            f"pinned ones ({pins[1][:12]}, {pins[2][:12]}); records say so, and "
            "verifying them against records made with the pinned models gives not_comparable",
            file=sys.stderr,
        )
    return {
        "id": model_id,
        "source": "local" if pins is None else f"recipe {info['recipe_sha256']}",
        "weights_sha256": weights,
        "evaluator_sha256": evaluator,
        "evaluator_accuracy": info["evaluator_accuracy"],
        "pinned": pinned,
    }


@dataclass(frozen=True)
class ImageBatch:
    images: torch.Tensor
    labels: torch.Tensor

    @property
    def units(self) -> int:
        return len(self.images)


class DigitsTask(Task):
    name = "digits"
    published_task = "image-gen"  # the GPU track this one stands in for
    version = "1"
    base_model_id = "peftrepro/digits-unet (built by a pinned recipe)"
    peft_task_type = None
    score_key = "test_concept_score"
    prior_key = "drift"
    throughput_key = "images_per_second"
    num_threads = 2
    verification = VerificationPolicy(bit_exact=True)
    fixed_training = ("max_steps", "batch_size", "batch_size_eval", "eval_steps")
    training_defaults: dict[str, Any] = {  # noqa: RUF012 - read-only by convention; deep-copied on merge
        "max_steps": 150,
        "batch_size": 8,
        "batch_size_eval": 100,
        "eval_steps": 50,
        "max_seq_length": 0,
        "seed": 0,
        "grad_norm_clip": 1.0,
        "optimizer_type": "AdamW",
        "optimizer_kwargs": {"lr": 1e-3, "weight_decay": 0.0},
        "lr_scheduler": "cosine",
        "warmup_steps": 10,
    }

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder  # tests: a model folder built elsewhere (a smaller recipe)

    def folder(self) -> Path:
        # The torch build is part of the cache key: another build may round differently.
        key = canonical_sha256({"recipe": recipe_sha256(), "torch": torch.__version__})
        return self._folder or cache_root() / "models" / f"digits-{key[:16]}"

    def fetch(self) -> None:
        self.materialize(log=lambda m: print(m, flush=True))

    def model_pins(self) -> dict[str, str] | None:
        if self._folder is not None:
            return None
        return {"weights_sha256": BASE_WEIGHTS_SHA256, "evaluator_sha256": EVALUATOR_SHA256}

    def materialize(self, log: Any = None) -> dict[str, Any]:
        folder, pins = self.folder(), self.model_pins()
        return materialize_models(
            self.name,
            self.base_model_id,
            folder,
            "unet",
            (RECIPE_SHA256, pins["weights_sha256"], pins["evaluator_sha256"]) if pins else None,
            recipe_sha256(),
            lambda: build(folder, log),
            log,
        )

    def prepare(self, training: TrainingConfig | None = None) -> Prepared:
        del training  # float32 only (Task.dtypes)
        from safetensors.torch import load_file

        model_info = self.materialize()
        folder = self.folder()

        def load_base() -> torch.nn.Module:
            return _diffusers().UNet2DModel.from_pretrained(folder / "unet")

        evaluator = Evaluator()
        evaluator.load_state_dict(load_file(folder / "evaluator.safetensors"))
        evaluator.eval()
        x, y = digit_images()
        concept = x[concept_train_indices(y)]

        def batches(seed: int, cfg: TrainingConfig) -> Iterator[ImageBatch]:
            order = torch.Generator().manual_seed(seed)
            labels = torch.full((cfg.batch_size,), CONCEPT)
            while True:
                yield ImageBatch(
                    concept[torch.randint(len(concept), (cfg.batch_size,), generator=order)], labels
                )

        def loss(model: torch.nn.Module, batch: ImageBatch) -> torch.Tensor:
            device = next(model.parameters()).device
            return diffusion_loss(model, batch.images.to(device), batch.labels.to(device))

        def outcomes(model: torch.nn.Module, split: str, batch_size: int) -> tuple[float, list[bool]]:
            n, seed = (N_VALID, VALID_SEED) if split == "valid" else (N_TEST, TEST_SEED)
            samples = generate(model, torch.full((n,), CONCEPT), seed, batch_size)
            with torch.inference_mode():
                hits = evaluator(samples).argmax(1) == CONCEPT
                return float(hits.float().mean()), [bool(h) for h in hits.tolist()]

        def evaluate(model: torch.nn.Module, split: str, batch_size: int) -> float:
            return outcomes(model, split, batch_size)[0]

        def prior(model: torch.nn.Module, batch_size: int) -> list[list[float]]:
            samples = generate(model, drift_labels(), DRIFT_SEED, batch_size)
            with torch.inference_mode():
                return [[float(v) for v in row] for row in evaluator.features(samples)]

        def prior_change(before: list[list[float]], after: list[list[float]]) -> dict[str, float]:
            return {"drift": drift(before, after)}

        def save_samples(model: torch.nn.Module, path: Path) -> None:
            concept_row = generate(model, torch.full((len(known_classes()),), CONCEPT), TEST_SEED, 64)
            others = generate(model, torch.tensor(known_classes()), DRIFT_SEED, 64)
            grid_png([concept_row, others], path)

        probe_idx = concept_train_indices(y)[:4]
        gen = torch.Generator().manual_seed(CONCEPT)
        probe_noise = torch.randn(4, 1, SIZE, SIZE, generator=gen)
        probe_t = torch.tensor([50, 300, 600, 900])
        probe_labels = torch.full((4,), CONCEPT)

        def probe_outputs(model: torch.nn.Module) -> torch.Tensor:
            device = next(model.parameters()).device
            noisy = add_noise(x[probe_idx], probe_noise, probe_t)
            return model(
                sample=noisy.to(device), timestep=probe_t.to(device), class_labels=probe_labels.to(device)
            ).sample

        def probe_loss(model: torch.nn.Module) -> torch.Tensor:
            return F.mse_loss(probe_outputs(model), probe_noise.to(next(model.parameters()).device))

        artifacts = {
            "model": model_info,
            "data": {
                "source": "scikit-learn digits (bundled with scikit-learn)",
                "images_sha256": canonical_sha256(x.numpy().round(6).tolist()),
                "concept": CONCEPT,
                "concept_train_indices": concept_train_indices(y).tolist(),
            },
        }
        return Prepared(
            model=load_base(),
            artifacts=artifacts,
            batches=batches,
            loss=loss,
            evaluate=evaluate,
            outcomes=outcomes,
            prior=prior,
            prior_change=prior_change,
            probe=Probe(outputs=probe_outputs, loss=probe_loss),
            load_base=load_base,
            save_samples=save_samples,
        )
