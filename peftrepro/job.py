"""One run of one resolved manifest with one seed, in this process: the steps every runner shares.

fingerprint -> load pinned task -> base measurements -> seed -> attach adapter -> train ->
evaluate -> save adapter -> metrics. Returns metrics (and the sample grid); the runner builds the
record and the driver writes it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftrepro import checks, peftconfig, stats
from peftrepro.console import stage
from peftrepro.environment import fingerprint, with_artifacts
from peftrepro.errors import RunFailed, UsageError
from peftrepro.jsonio import canonical_sha256, pretty_bytes, read_json, replace_file
from peftrepro.manifest import ResolvedManifest
from peftrepro.measure import adapter_files, device_for_run, release_freed_memory
from peftrepro.paths import cache_root
from peftrepro.tasks import Prepared, Task, get_task
from peftrepro.training import TrainResult, configure_determinism, seed_everything, train

SAMPLES_FILE = "samples.png"  # in the adapter folder; its bytes travel with the record


ALLOW_CPU_ENV = "PEFTREPRO_ALLOW_CPU"  # run a GPU track on the CPU anyway (tests, with stand-in models)


def preflight(manifest: ResolvedManifest) -> None:
    """Refuse what cannot run here before a record exists (a refusal, not a failed run): a GPU
    track on a machine without one (a 3B model on the CPU for days), a package the settings need."""
    task = get_task(manifest.task)
    if task.accelerator == "cuda" and not torch.cuda.is_available() and not os.environ.get(ALLOW_CPU_ENV):
        raise UsageError(
            f"task {task.name!r} needs a CUDA GPU and none is visible here (run it with --runner docker on "
            f"a GPU machine; {ALLOW_CPU_ENV}=1 runs it on the CPU anyway)"
        )
    task.preflight(manifest.training)


def base_measurements(
    task: Task, prepared: Prepared, batch_size: int, *, reuse: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test score and prior snapshot (general-text CE, drift features) of the base model, cached
    by everything that determines them; and what the record says about them: the cache key and
    whether this run reused them (`reuse=False`, as `verify` asks: measured again, and the record's
    base figures are then compared with the claim's like any other metric).

    They are a property of (task version, model bytes, data bytes, torch build, thread count) and
    cost ~30 s per run on the CPU track; a cold cache (any fresh machine) re-measures them.
    """
    key = canonical_sha256(
        {
            "task": task.name,
            "version": task.version,
            "artifacts": prepared.artifacts,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device_for_run()),
            "batch_size": batch_size,
        }
    )
    path = cache_root() / "base-measurements" / f"{key}.json"
    if reuse and path.exists():
        try:
            cached = read_json(path)
            if isinstance(cached, dict) and set(cached) == {"test_score", "prior"}:
                return cached, {"key": key, "reused": True}
        except (OSError, ValueError):
            pass  # unreadable cache: measure again and overwrite
    values = {
        "test_score": prepared.evaluate(prepared.model, "test", batch_size),
        "prior": prepared.prior(prepared.model, batch_size),
    }
    replace_file(path, pretty_bytes(values))
    return values, {"key": key, "reused": False}


@dataclass
class Trained:
    """A trained adapter and what the run knows by then."""

    task: Task
    prepared: Prepared
    model: torch.nn.Module  # a PeftModel, or the whole model for full fine-tuning
    result: TrainResult
    trainable: int
    total: int
    base: dict[str, Any]
    device: torch.device


def train_adapter(
    manifest: ResolvedManifest,
    *,
    seed: int,
    runner: str,
    state: dict[str, Any],
    progress: bool | None = None,
    measure_base: bool = True,
    fresh_base: bool = False,
) -> Trained:
    """The part of a run every use shares: fingerprint, load, base measurements, structural checks,
    seed, attach, train (validating every eval_steps). `state` is filled as it goes (environment,
    checks, steps), so that a failed or cancelled run still records what is known."""
    task = get_task(manifest.task)
    cfg = manifest.training
    configure_determinism(task.num_threads)
    device = device_for_run()
    state["environment"] = fingerprint(
        runner=runner, seed=seed, manifest_sha256=manifest.sha256, artifacts={}
    )
    with stage("load"):
        prepared = task.prepare(cfg)
    state["environment"] = with_artifacts(state["environment"], prepared.artifacts)
    model = prepared.model.to(device)
    with stage("base measurements"):
        base: dict[str, Any] = {}
        if measure_base:
            base, state["base_measurements"] = base_measurements(
                task, prepared, cfg.batch_size_eval, reuse=not fresh_base
            )
    if manifest.peft_config is None:  # full fine-tuning: nothing to attach, so only the round trip applies
        peft_cfg, state["checks"] = None, {}
    else:
        peft_cfg = manifest.peft_config_object()
        file = str(manifest.path)
        with stage("checks"):
            # Refused before anything is allocated: no match, too slow to attach, too many parameters.
            peftconfig.check_attach(model, peft_cfg, file, cfg.autocast_adapter_dtype)
            # On a copy, with the RNG state restored: the run below is the same with or without them.
            found = peftconfig.within(
                peftconfig.CHECKS_LIMIT_S,
                "the structural checks",
                file,
                lambda: checks.run_checks(model, peft_cfg, prepared.probe),
            )
        state["checks"] = checks.as_record(found)
        if not all(r.ok for r in found):
            raise checks.failed(str(manifest.path), manifest.method, found)

    seed_everything(seed)  # the one place seeds are set: adapter init and data order both follow from here
    if peft_cfg is None:
        model.requires_grad_(True)
        peft_model = model
    else:
        peft_model = peftconfig.attach_checked(
            model, peft_cfg, str(manifest.path), autocast_adapter_dtype=cfg.autocast_adapter_dtype
        )
        trainable, _ = peftconfig.count_params(peft_model)
        peftconfig.check_trainable(trainable, sum(p.numel() for p in prepared.model.parameters()), file)
        if cfg.init_kv_cache_prefix is not None:  # prefix tuning started from the base model's cache
            from peft import initialize_kv_prefix_from_text

            tokenizer = prepared.extra.get("tokenizer")
            if tokenizer is None:
                where = f"{file}: /training/init_kv_cache_prefix"
                raise UsageError(f"{where}: task {manifest.task!r} has no tokenizer to encode it with")
            initialize_kv_prefix_from_text(
                peft_model,
                tokenizer,
                text=cfg.init_kv_cache_prefix,
                use_chat_template=False,
            )
    release_freed_memory()
    with stage("train"):
        result = train(
            peft_model,
            prepared.batches(seed, cfg),
            prepared.loss,
            cfg,
            validate=lambda m: prepared.evaluate(m, "valid", cfg.batch_size_eval),
            valid_key=task.valid_key,
            device=device,
            is_adalora=peft_cfg is not None and peft_cfg.peft_type == "ADALORA",
            progress=progress,
            on_step=lambda step: state.__setitem__("steps_completed", step),
            empty_cache_every=prepared.extra.get("empty_cache_every"),
        )
    # Counted after training: an optimizer may freeze part of the adapter (LoRA-FA freezes lora_A).
    trainable, total = peftconfig.count_params(peft_model)
    return Trained(task, prepared, peft_model, result, trainable, total, base, device)


def execute(
    manifest: ResolvedManifest,
    *,
    seed: int,
    runner: str,
    adapter_dir: Path,
    state: dict[str, Any],
    progress: bool | None = None,
    fresh_base: bool = False,
) -> tuple[dict[str, Any], bytes | None]:
    """Run it; return the success metrics and, for image tasks, the sample grid's bytes (see
    train_adapter for `state`)."""
    t_start = time.perf_counter()
    t = train_adapter(
        manifest, seed=seed, runner=runner, state=state, progress=progress, fresh_base=fresh_base
    )
    cfg, score_key, result = manifest.training, t.task.score_key, t.result
    with stage("evaluate"):
        outcomes: dict[str, Any] = {}
        if t.prepared.outcomes is not None:
            test_score, items = t.prepared.outcomes(t.model, "test", cfg.batch_size_eval)
            outcomes["test_outcomes"] = stats.encode(items)
        else:
            test_score = t.prepared.evaluate(t.model, "test", cfg.batch_size_eval)
    with stage("forgetting"):
        prior = t.prepared.prior_change(t.base["prior"], t.prepared.prior(t.model, cfg.batch_size_eval))
    with stage("save"):
        adapter_bytes, adapter_sha = save_adapter(t.model, adapter_dir)
    samples, grid = {}, None
    if t.prepared.save_samples is not None:  # image tasks: a grid the record names by hash
        t.prepared.save_samples(t.model, adapter_dir / SAMPLES_FILE)
        grid = (adapter_dir / SAMPLES_FILE).read_bytes()
        samples["samples_sha256"] = hashlib.sha256(grid).hexdigest()
    # The recorded round trip is the trained adapter's: the very bytes adapter_sha256 names.
    with stage("round trip"):
        trip = checks.guarded(
            "round_trip",
            lambda: checks.check_round_trip(
                t.model, t.prepared.probe, lambda: t.prepared.load_base().to(t.device), saved=adapter_dir
            ),
        )
    state["checks"]["round_trip"] = trip.as_record()
    if not trip.ok:
        raise RunFailed(f"{manifest.path}: the trained adapter failed its round trip: {trip.detail}")
    assert result.memory is not None
    metrics = {
        score_key: test_score,
        "base_" + score_key: t.base["test_score"],
        **outcomes,
        "valid_curve": result.valid_curve,
        **prior,
        "train_loss_final": result.train_loss_final,
        "trainable_params": t.trainable,
        "total_params": t.total,
        "adapter_bytes": adapter_bytes,
        "adapter_sha256": adapter_sha,
        **samples,
        "peak_memory_bytes": result.memory.peak_bytes,
        "memory_avg_bytes": result.memory.avg_bytes,
        "memory_p99_bytes": result.memory.p99_bytes,
        "train_seconds": round(result.train_seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        t.task.throughput_key: round(result.units / result.train_seconds, 1) if result.train_seconds else 0.0,
        "steps_completed": result.steps,
    }
    return metrics, grid


def save_adapter(model: torch.nn.Module, folder: Path) -> tuple[int, str]:
    """Save the adapter (or, for full fine-tuning, the whole model); (bytes, sha256) of its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))  # type: ignore[operator]
    return adapter_files(folder)
