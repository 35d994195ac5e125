"""What a task is: the interface every task implements, and the prepared pieces it hands the runner.

Below the task modules and the registry (`tasks/__init__.py`): a task imports this and the leaf
modules (run configuration, measurement, JSON), never the manifest, the runners or the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftrepro.metrics import VerificationPolicy
from peftrepro.runconfig import TrainingConfig
from peftrepro.training import Batch


@dataclass(frozen=True)
class Probe:
    """A fixed small batch for the structural checks (`checks.py`): the same inputs on every call."""

    outputs: Callable[[torch.nn.Module], torch.Tensor]  # forward pass -> the output tensor compared
    loss: Callable[[torch.nn.Module], torch.Tensor]  # a training loss on the same batch
    # PEFT types whose fresh adapter is an identity on this model only up to float rounding, though
    # exact on others (measured; the value says what was seen): checked within tolerance, not bit for bit.
    identity_rounding: dict[str, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """A task ready to run: base model loaded, data generated, artifact hashes known.

    `prior` and `prior_change` measure what training costs the model elsewhere: `prior` takes a
    JSON-able snapshot (the base model's is cached), `prior_change(before, after)` gives the
    metrics (text: `forgetting` from general-text CE; images: `drift` of the other classes).
    """

    model: torch.nn.Module
    artifacts: dict[str, Any]  # what was actually loaded: {"model": {...}, "data": {...}}
    batches: Callable[[int, TrainingConfig], Iterator[Batch]]  # (seed, training config) -> endless
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]  # (model, batch) -> training loss
    evaluate: Callable[[torch.nn.Module, str, int], float]  # (model, "valid"|"test", batch) -> score
    prior: Callable[[torch.nn.Module, int], Any]  # (model, batch) -> snapshot
    prior_change: Callable[[Any, Any], dict[str, float]]  # (before, after) -> metrics
    probe: Probe
    load_base: Callable[[], torch.nn.Module]  # a fresh copy of the base model, as loaded from the cache
    # Image tasks: write a PNG grid of the model's samples to the path; returns nothing.
    save_samples: Callable[[torch.nn.Module, Path], None] | None = None
    # The same score with its per-item outcomes, in the split's fixed order (bools, or a float per
    # sample; their mean is the score): the record's `test_outcomes`. None: a task without them.
    outcomes: Callable[[torch.nn.Module, str, int], tuple[float, list[bool] | list[float]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    name: str
    version: str  # bump when data, evaluation or defaults change: old records become stale
    base_model_id: str
    peft_task_type: str | None  # None: a plain torch model (peft's generic PeftModel)
    score_key: str  # the headline metric's key in METRICS ("test_..."; validation is "valid_...")
    prior_key: str = "forgetting"  # the cost-elsewhere metric the leaderboard shows beside the score
    throughput_key: str = "tokens_per_second"  # what Batch.units per training second is called
    num_threads: int  # pinned: CPU results are bit-exact only for a fixed thread count
    training_defaults: dict[str, Any]
    verification: VerificationPolicy
    # The leaderboard's default Pareto axes: the headline score (higher) against a cost (lower).
    pareto_cost_key: str = "peak_memory_bytes"
    # The task whose published results (claims/, `peftrepro import`) this one is read against: a
    # GPU track against its own, a CPU stand-in against the GPU track it stands in for.
    published_task: str | None = None
    # The method families the track's design was chosen on (its calibration set). The page then
    # reports the agreement on them and on every other family apart: the second is out of sample.
    calibration_families: frozenset[str] = frozenset()

    @property
    def corpus_seeds(self) -> tuple[int, ...]:
        """The seeds a leaderboard row is run on (`run --seeds`): five where a run is cheap (CPU
        tracks), three on GPU tracks."""
        return tuple(range(5 if self.accelerator == "cpu" else 3))

    # The row every other is compared with, pairwise on the same seeds and test items (stats.py).
    reference_row: str | None = "lora/default"
    accelerator: str = "cpu"  # "cpu": runs and is verified anywhere (CI included); "cuda": needs a GPU
    dtypes: tuple[str, ...] = ("float32",)  # what `training.dtype` may say; the first is the default
    # The budget every submission of the task shares: `peftrepro ci` refuses a manifest that changes it.
    fixed_training: tuple[str, ...] = (
        "max_steps",
        "batch_size",
        "batch_size_eval",
        "eval_steps",
        "max_seq_length",
    )

    @abstractmethod
    def prepare(self, training: TrainingConfig | None = None) -> Prepared:
        """Load (and cache) the pinned base model and data; verify their hashes. `training` is the
        run's resolved settings (its `dtype` picks how the base model is loaded); None: defaults."""

    def preflight(self, training: TrainingConfig) -> None:
        """Refuse (UsageError) what cannot run here before a record exists: a missing package for
        the manifest's settings, say. The default accepts everything."""
        del training

    def skeleton(self) -> torch.nn.Module | None:
        """The base model's architecture without weights (meta device), where loading the weights
        is not cheap (GPU tracks): `validate` attaches manifests to it. None: load the real model."""
        return None

    def model_pins(self) -> dict[str, str] | None:
        """Where a task builds its models by a recipe that is pinned by hash but may build other
        bytes on another CPU: the pinned values of the record's `environment.artifacts.model`. A
        record made with other models measures other models, and the page ignores it. None: the
        task refuses other bytes at load (a downloaded file), or it is a local stand-in."""
        return None

    def fetch(self) -> None:
        """Download or build the pinned assets into the cache (the one step allowed the network).
        The default loads everything once, which leaves the cache warm."""
        self.prepare()

    @property
    def valid_key(self) -> str:
        return "valid_" + self.score_key.removeprefix("test_")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "base_model": self.base_model_id}


def quiet_model_loading() -> None:
    """Model loading prints per-tensor progress bars and advisory warnings; runs report their own progress."""
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
