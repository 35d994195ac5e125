from __future__ import annotations

import itertools
import math
import random

import pytest

from peftrepro.measure import percentile
from peftrepro.runconfig import TrainingConfig, check_optimizer_kwargs
from peftrepro.tasks.text import Example, bucketed_batches, collate
from peftrepro.training import lr_factor


def config(**overrides) -> TrainingConfig:
    base = dict(
        max_steps=10,
        batch_size=2,
        batch_size_eval=2,
        eval_steps=5,
        max_seq_length=6,
        seed=0,
        grad_norm_clip=1.0,
        optimizer_type="AdamW",
        optimizer_kwargs={"lr": 1.0},
        lr_scheduler="cosine",
        warmup_steps=2,
    )
    return TrainingConfig(**{**base, **overrides})


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = lr_factor(config())
    assert [round(f(s), 3) for s in range(4)] == [0.5, 1.0, 1.0, round(0.5 * (1 + math.cos(math.pi / 8)), 3)]
    assert f(10) == pytest.approx(0.0)
    constant = lr_factor(config(lr_scheduler="constant", warmup_steps=0))
    assert {constant(s) for s in range(10)} == {1.0}


def test_collate_pads_right_masks_and_truncates() -> None:
    batch = collate(
        [Example([1, 2, 3], [-100, 2, 3]), Example([4, 5, 6, 7, 8, 9, 10], [-100] * 6 + [10])],
        pad_token_id=0,
        max_len=6,
    )
    assert batch.input_ids.tolist() == [[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [[-100, 2, 3, -100, -100, -100], [-100] * 6]
    assert batch.units == 9


def test_bucketing_groups_similar_lengths_and_is_seeded() -> None:
    def stream():
        rng = random.Random(1)
        while True:
            n = rng.randint(1, 6)
            yield Example([1] * n, [1] * n)

    def first(seed):
        batches = bucketed_batches(stream(), 2, 64, 0, random.Random(seed))
        return [b.input_ids.tolist() for b in itertools.islice(batches, 8)]

    assert first(0) == first(0)
    assert first(0) != first(1)  # batch order follows the seed
    for rows in first(0):
        assert len(rows) == 2 and all(len(r) == len(rows[0]) for r in rows)


def test_optimizer_kwargs_are_checked_against_the_optimizer() -> None:
    assert check_optimizer_kwargs("AdamW", {"lr": 1e-3, "betas": [0.9, 0.99]}) is None
    assert check_optimizer_kwargs("SGD", {"lr": 1e-3, "momentum": 0.9}) is None
    assert (
        check_optimizer_kwargs("SGD", {"lr": 1e-3, "betas": [0.9, 0.9]})[0]
        == "/training/optimizer_kwargs/betas"
    )
    assert check_optimizer_kwargs("AdamW", {})[0] == "/training/optimizer_kwargs/lr"


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5], 99) == 5
    assert percentile([3, 1, 2], 50) == 2
