"""`image-gen`: the public PEFT method comparison's image track, made re-checkable (one GPU, hours).

DreamBooth-style concept learning with FLUX.2-klein-base-4B on a cat plushy: 20 photos, each with
its own instance prompt ("sks cat ..."), split 14/2/4 by the public harness's `np.random.seed(0)`
shuffle. The transformer is adapted with flow matching (noise - latents as the target, uniform
timesteps, no loss weighting), text embeddings and VAE latents computed once; AdamW lr 1e-4,
weight decay 1e-4, no schedule, batch 2, 750 steps, validation every 100 steps.

- `test_concept_score`: mean DINOv2 cosine similarity between the images generated from the 4
  test prompts and the 4 held-out photos (20 inference steps, guidance 3.5, fixed seeds).
- `drift`: what the adapter does to everything else: images of 10 unrelated prompts ("the Mona
  Lisa but she looks angry", ...) with the adapter vs the base model, same seeds; 1 - the mean
  DINOv2 cosine between the pairs. 0 is unchanged.
- A grid of the 5 sample prompts is saved beside every record.

The pipeline class and every hub repository are task parameters (`ImageGenTask(sources,
pipeline=...)`), so a smaller FLUX.2-klein checkpoint runs on a smaller GPU and tests run a tiny
stand-in pipeline through the same code. Only the FLUX.2-klein pipeline family is wired in: the
training step uses its latent packing and text encoder layers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftrepro.errors import UsageError
from peftrepro.jsonio import canonical_sha256
from peftrepro.measure import device_for_run
from peftrepro.metrics import VerificationPolicy
from peftrepro.runconfig import TrainingConfig
from peftrepro.tasks.base import Prepared, Probe, Task, quiet_model_loading
from peftrepro.tasks.hub import Pinned, hub_load_errors, load_pinned_dataset

# Revisions from the public comparison's result files (../shared/reference/README.md). DINOv2's is
# not published there: a run records the commit the hub resolved (`config._commit_hash`).
MODEL = Pinned("black-forest-labs/FLUX.2-klein-base-4B", "a3b4f4849157f664bdbc776fd7453c2783562f4d")
DATASET = Pinned("peft-internal-testing/cat-image-dataset", "37df3244ae3aa36e85178b6cf946338137fc3068")
DINO = Pinned("facebook/dinov2-base", None)
PIPELINES = ("Flux2KleinPipeline",)  # the pipeline families whose training step is wired in here
EVAL_SEED = 100_000  # the public harness: seed + 100_000 for evaluation images

INSTANCE_PROMPTS = (
    "sks cat sitting on a chair in front of a box of chocolates",
    "sks cat playing on the Steam Deck",
    "sks cat wearing a necklace while sitting in a box on a sofa",
    "a box with four donuts in front of sks cat",
    "sks cat wearing a pink veil with flowers on it and a dagger made out of yellow cardboard",
    "sks cat between two pillows, with one pillow showing a polar bear and the other a fox",
    "sks cat with an espresso reading the newspaper",
    "a close up of a hand petting sks cat on the head",
    "sks cat opens a white door",
    'sks cat with a VIP "all access" pass',
    'sks cat in front of a monitor showing the video game "RimWorld"',
    "sks cat reads a newspaper about cannabis",
    'sks cat reading the newspaper with the title "DIE BOX"',
    "sks cat being fed sushi",
    "sks cat in front of a box of tomatoes",
    "a gingerbread house in front of sks cat",
    "sks cat is wearing a Wednesday Addams costume",
    "sks cat looks skeptical as he reads a magazine depicting a black cat",
    "sks cat wearing a striped scarf",
    "sleepy sks cat lying in bed covered by a blue blanket",
)
SAMPLE_PROMPTS = (
    "a photo of sks cat",
    "a color drawing of sks cat",
    "sks cat at the beach",
    "a photo of sks dog",
    "a photo of an orange cat",
)
DRIFT_PROMPTS = (
    "a photo of cat",
    "a color drawing of cat",
    "cat sitting in a bathtub",
    "cat looks into a mirror",
    "a photo of cat next to a tree",
    "the Mona Lisa but she looks angry",
    "a dog holding a sign that says hello world",
    "a photo of the Eiffel tower at night",
    "an astronaut riding a horse",
    "3d design concept of a chair that looks like an avocado",
)


# FLUX.2-klein-base-4B's transformer config at MODEL.revision (architecture only): `validate`
# attaches manifests to it on the meta device. Its 3,875,544,576 parameters are the public LoRA
# result's num_total_params minus num_trainable_params (tests/test_imagegen.py checks it).
FLUX2_KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": [32, 32, 32, 32],
    "rope_theta": 2000,
    "guidance_embeds": False,
}


@dataclass(frozen=True)
class Settings:
    """What the task fixes for every submission (the public `default_training_params.json`)."""

    resolution: int = 512
    repeats: int = 1000
    valid_size: int = 2
    test_size: int = 4
    num_inference_steps: int = 20
    guidance_scale: float = 3.5
    text_encoder_out_layers: tuple[int, ...] = (10, 20, 30)
    dino_image_size: int = 224
    use_gc: bool = True
    empty_cache_every: int = 25
    instance_prompts: tuple[str, ...] = INSTANCE_PROMPTS
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    drift_prompts: tuple[str, ...] = DRIFT_PROMPTS


@dataclass(frozen=True)
class Sources:
    model: Pinned = MODEL
    dataset: Pinned = DATASET
    dino: Pinned = DINO


@dataclass(frozen=True)
class ImageBatch:
    """A training batch with its noise and timesteps already drawn (from the run's seeded stream)."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    text_ids: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    units: int = field(default=0)


class ImageGenTask(Task):
    name = "image-gen"
    version = "1"
    base_model_id = MODEL.id
    peft_task_type = None  # a diffusers transformer: peft's generic PeftModel
    score_key = "test_concept_score"
    prior_key = "drift"
    throughput_key = "images_per_second"
    published_task: str | None = "image-gen"
    accelerator = "cuda"
    num_threads = 8
    dtypes = ("bfloat16", "float32", "float16")
    # Four test images: one image more or less alike moves the mean by ~0.05; to be narrowed once
    # GPU re-runs have been measured.
    verification = VerificationPolicy(
        bit_exact=False, score_band=0.05, nondeterministic=("adapter_sha256", "samples_sha256")
    )
    training_defaults: dict[str, Any] = {  # noqa: RUF012 - read-only by convention
        "max_steps": 750,
        "batch_size": 2,
        "batch_size_eval": 1,
        "eval_steps": 100,
        "max_seq_length": 512,  # the text encoder's max_sequence_length
        "seed": 0,
        "grad_norm_clip": 1.0,
        "optimizer_type": "AdamW",
        "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 1e-4},
        "lr_scheduler": "constant",
        "warmup_steps": 0,
    }

    def __init__(
        self,
        sources: Sources | None = None,
        pipeline: str = PIPELINES[0],
        settings: Settings | None = None,
    ) -> None:
        if pipeline not in PIPELINES:
            raise UsageError(f"pipeline {pipeline!r} is not wired in; supported: {', '.join(PIPELINES)}")
        self.sources, self.pipeline, self.settings = sources or Sources(), pipeline, settings or Settings()

    def skeleton(self) -> torch.nn.Module:
        """The transformer's architecture on the meta device: no weights, no download."""
        import diffusers

        src = self.sources.model
        if src == MODEL:
            config = FLUX2_KLEIN_4B_TRANSFORMER
        else:
            config = diffusers.Flux2Transformer2DModel.load_config(
                src.id, subfolder="transformer", revision=src.revision
            )
        with torch.device("meta"):
            return diffusers.Flux2Transformer2DModel.from_config(config)

    def prepare(self, training: TrainingConfig | None = None) -> Prepared:
        with hub_load_errors(self.name, "FLUX.2-klein"):
            return self._prepare(training)

    def _prepare(self, training: TrainingConfig | None) -> Prepared:
        import diffusers
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        quiet_model_loading()
        diffusers.utils.logging.disable_progress_bar()
        s, src = self.settings, self.sources
        dtype = getattr(torch, (training.dtype if training else None) or self.dtypes[0])
        max_len = training.max_seq_length if training else self.training_defaults["max_seq_length"]
        device = device_for_run()
        cls = getattr(diffusers, self.pipeline)

        def load_pipeline() -> Any:
            pipe = cls.from_pretrained(src.model.id, revision=src.model.revision, dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            return pipe

        pipe = load_pipeline()
        images, prompts = _load_photos(src.dataset, s.instance_prompts)
        order = np.random.RandomState(0).permutation(len(images))  # the public harness's split
        n_train = len(images) - s.valid_size - s.test_size
        if n_train < 1:
            raise UsageError(
                f"{src.dataset.id}: {len(images)} photos, need more than {s.valid_size + s.test_size}"
            )
        split = {
            "train": order[:n_train],
            "valid": order[n_train : n_train + s.valid_size],
            "test": order[n_train + s.valid_size :],
        }
        train_pixels = torch.stack([_to_pixels(images[i], s.resolution) for i in split["train"]])
        with torch.no_grad():
            embeds, text_ids = _encode_prompts(pipe, [prompts[i] for i in split["train"]], max_len, s, device)
            latents = _encode_latents(pipe, train_pixels.to(dtype), device)
        dino_processor, dino = _load_dino(src.dino, s.dino_image_size, device)
        references = {
            k: _embed(dino_processor, dino, [images[i] for i in v]) for k, v in split.items() if k != "train"
        }
        scheduler = pipe.scheduler
        num_train_timesteps = scheduler.config.num_train_timesteps

        def batches(seed: int, cfg: TrainingConfig) -> Iterator[ImageBatch]:
            # The public harness: a seeded stream of epochs (random permutations of the 14 photos),
            # one noise draw and one uniform timestep per image from the same generator.
            gen = torch.Generator().manual_seed(seed)
            while True:
                order = torch.randperm(len(latents), generator=gen)
                for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
                    idx = order[i : i + cfg.batch_size]
                    lat = latents[idx]
                    u = torch.rand(len(idx), generator=gen)
                    steps = scheduler.timesteps[
                        (u * num_train_timesteps).long().clamp(max=len(scheduler.timesteps) - 1)
                    ]
                    sigmas = _sigmas_for(scheduler, steps).to(lat.dtype).view(-1, *([1] * (lat.ndim - 1)))
                    noise = torch.randn(lat.shape, generator=gen, dtype=torch.float32).to(lat.dtype)
                    yield ImageBatch(lat, embeds[idx], text_ids[idx], noise, steps, sigmas, units=len(idx))

        def loss(model: torch.nn.Module, b: ImageBatch) -> torch.Tensor:
            dev = next(model.parameters()).device
            lat, noise, sigmas = b.latents.to(dev), b.noise.to(dev), b.sigmas.to(dev)
            ids = pipe._prepare_latent_ids(lat).to(dev)
            packed = pipe._pack_latents((1.0 - sigmas) * lat + sigmas * noise)
            pred = _transformer_forward(
                model, packed, b.timesteps.to(dev), b.prompt_embeds.to(dev), b.text_ids.to(dev), ids, s
            )
            pred = pipe._unpack_latents_with_ids(pred[:, : packed.size(1)], ids)
            weighting = compute_loss_weighting_for_sd3("none", sigmas=sigmas)
            err = (weighting.float() * (pred.float() - (noise - lat).float()) ** 2).reshape(lat.shape[0], -1)
            return err.mean(1).mean()

        def generate(model: torch.nn.Module, prompts_: list[str], seed: int) -> list[Any]:
            with _pipeline_on(pipe, model, device):
                out = []
                for i, prompt in enumerate(prompts_):
                    gen = torch.Generator(device=device).manual_seed(seed + i)
                    out += pipe(
                        prompt=[prompt],
                        num_inference_steps=s.num_inference_steps,
                        guidance_scale=s.guidance_scale,
                        height=s.resolution,
                        width=s.resolution,
                        max_sequence_length=max_len,
                        text_encoder_out_layers=s.text_encoder_out_layers,
                        generator=gen,
                        output_type="pil",
                    ).images
            return out

        def outcomes(model: torch.nn.Module, which: str, batch_size: int) -> tuple[float, list[float]]:
            del batch_size  # one image per call, as the public harness (batch_size_eval 1)
            made = _embed(
                dino_processor, dino, generate(model, [prompts[i] for i in split[which]], EVAL_SEED)
            )
            similarity = (made * references[which]).sum(-1)
            return float(similarity.mean()), [float(v) for v in similarity.tolist()]

        def evaluate(model: torch.nn.Module, which: str, batch_size: int) -> float:
            return outcomes(model, which, batch_size)[0]

        def prior(model: torch.nn.Module, batch_size: int) -> list[list[float]]:
            del batch_size
            return _embed(dino_processor, dino, generate(model, list(s.drift_prompts), EVAL_SEED)).tolist()

        def drift(before: list[list[float]], after: list[list[float]]) -> dict[str, float]:
            cos = (torch.tensor(before) * torch.tensor(after)).sum(-1)
            return {"drift": float((1.0 - cos.mean()).clamp(0.0, 1.0))}

        def save_samples(model: torch.nn.Module, path: Path) -> None:
            _grid(generate(model, list(s.sample_prompts), EVAL_SEED)).save(path, format="PNG", optimize=False)

        model = pipe.transformer
        if s.use_gc and device.type == "cuda":
            model.enable_gradient_checkpointing()
        probe_batch = next(batches(0, _probe_config(self.training_defaults)))

        def probe_outputs(m: torch.nn.Module) -> torch.Tensor:
            dev = next(m.parameters()).device
            lat = probe_batch.latents.to(dev)
            ids = pipe._prepare_latent_ids(lat).to(dev)
            packed = pipe._pack_latents(lat)
            steps = torch.full((lat.shape[0],), 500.0, device=dev)
            return _transformer_forward(
                m, packed, steps, probe_batch.prompt_embeds.to(dev), probe_batch.text_ids.to(dev), ids, s
            ).float()

        artifacts = {
            "model": {
                **src.model.describe(),
                "pipeline": self.pipeline,
                "dtype": str(dtype).removeprefix("torch."),
            },
            "data": {
                "photos": {**src.dataset.describe(), "rows": len(images), "sha256": _photos_sha256(images)},
                "split": {k: [int(i) for i in v] for k, v in split.items()},
                "prompts_sha256": canonical_sha256(
                    [list(s.instance_prompts), list(s.sample_prompts), list(s.drift_prompts)]
                ),
                "dino": {**src.dino.describe(), "resolved": getattr(dino.config, "_commit_hash", None)},
            },
        }
        return Prepared(
            model=model,
            artifacts=artifacts,
            batches=batches,
            loss=loss,
            evaluate=evaluate,
            outcomes=outcomes,
            prior=prior,
            prior_change=drift,
            probe=Probe(outputs=probe_outputs, loss=lambda m: loss(m, probe_batch)),
            load_base=lambda: type(model).from_pretrained(  # the transformer alone, not the pipeline
                src.model.id, subfolder="transformer", revision=src.model.revision, dtype=dtype
            ),
            save_samples=save_samples,
            extra={"empty_cache_every": s.empty_cache_every},
        )


def _probe_config(defaults: dict[str, Any]) -> Any:
    return TrainingConfig(**{**defaults, "batch_size": 1})


def _load_photos(p: Pinned, prompts: tuple[str, ...]) -> tuple[list[Any], list[str]]:
    ds = load_pinned_dataset(p, "train")
    if "image" not in ds.column_names:
        raise UsageError(f"{p.id}: no 'image' column (columns: {', '.join(ds.column_names)})")
    if len(ds) != len(prompts):
        raise UsageError(f"{p.id}: {len(ds)} photos for {len(prompts)} instance prompts; need one each")
    return [img.convert("RGB") for img in ds["image"]], list(prompts)


def _photos_sha256(images: list[Any]) -> str:
    """The decoded photos' pixels, in dataset order: what the run trained and was scored on."""
    digest = hashlib.sha256()
    for img in images:
        digest.update(f"{img.size[0]}x{img.size[1]}:".encode())
        digest.update(np.asarray(img).tobytes())
    return digest.hexdigest()


def _to_pixels(image: Any, resolution: int) -> torch.Tensor:
    """Resize the shorter side to `resolution` (bilinear), centre-crop, scale to [-1, 1], CHW."""
    from PIL import Image

    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize(
        (max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.Resampling.BILINEAR
    )
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr * 2.0 - 1.0


def _encode_prompts(
    pipe: Any, prompts: list[str], max_len: int, s: Settings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings once, with the text encoder moved to the accelerator and back."""
    pipe.text_encoder.to(device)
    try:
        pairs = [
            pipe.encode_prompt(
                prompt=p, max_sequence_length=max_len, text_encoder_out_layers=s.text_encoder_out_layers
            )
            for p in prompts
        ]
    finally:
        pipe.text_encoder.to("cpu")
    return torch.cat([e for e, _ in pairs]).cpu(), torch.cat([i for _, i in pairs]).cpu()


def _encode_latents(pipe: Any, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """VAE latents (mode), patchified and normalised by the VAE's batch-norm statistics."""
    vae = pipe.vae.to(device)
    try:
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        latents = pipe._patchify_latents(vae.encode(pixels.to(device)).latent_dist.mode())
        return ((latents - mean) / std).cpu()
    finally:
        pipe.vae.to("cpu")


def _sigmas_for(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    index = [int((scheduler.timesteps == t).nonzero()[0]) for t in timesteps]
    return scheduler.sigmas[index].flatten()


def _transformer_forward(
    model: torch.nn.Module,
    packed: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    img_ids: torch.Tensor,
    s: Settings,
) -> torch.Tensor:
    config: Any = getattr(model, "config", None)
    guidance = None
    if getattr(config, "guidance_embeds", False):
        guidance = torch.full((packed.shape[0],), s.guidance_scale, device=packed.device)
    return model(
        hidden_states=packed,
        timestep=timesteps / 1000,
        guidance=guidance,
        encoder_hidden_states=prompt_embeds,
        txt_ids=text_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]


@contextmanager
def _pipeline_on(pipe: Any, model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Generation with `model` as the pipeline's transformer, its text encoder and VAE on the
    accelerator for the duration (kept on the CPU during training, as the public harness)."""
    saved, was_training = pipe.transformer, model.training
    model.eval()
    pipe.transformer = model
    pipe.text_encoder.to(device)
    pipe.vae.to(device)
    try:
        with torch.no_grad():
            yield
    finally:
        pipe.text_encoder.to("cpu")
        pipe.vae.to("cpu")
        pipe.transformer = saved
        model.train(was_training)


def _load_dino(p: Pinned, size: int, device: torch.device) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(p.id, revision=p.revision)
    processor.size = {"shortest_edge": size}
    processor.crop_size = {"height": size, "width": size}
    model = AutoModel.from_pretrained(p.id, revision=p.revision).to(device).eval()
    return processor, model


@torch.inference_mode()
def _embed(processor: Any, model: torch.nn.Module, images: list[Any]) -> torch.Tensor:
    """DINOv2's pooled CLS embedding of each image, L2-normalised (cosine = dot product)."""
    device = next(model.parameters()).device
    inputs = processor(images=images, return_tensors="pt").to(device)
    pooled = model(**inputs).pooler_output.float()
    return torch.nn.functional.normalize(pooled, dim=-1).cpu()


def _grid(images: list[Any]) -> Any:
    from PIL import Image

    w, h = images[0].size
    grid = Image.new("RGB", (w * len(images), h))
    for i, img in enumerate(images):
        grid.paste(img, (i * w, 0))
    return grid
