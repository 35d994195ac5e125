"""Batches and loss for the text tasks: token sequences, right-padded, loss on the answer tokens."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from peftrepro.runconfig import TrainingConfig

BUCKET_BATCHES = 8  # length bucketing sorts this many batches' worth of examples at a time


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids, and labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TextBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def units(self) -> int:
        """Training tokens, padding excluded: what tokens_per_second counts."""
        return int(self.attention_mask.sum())


def collate(examples: list[Example], pad_token_id: int, max_len: int) -> TextBatch:
    rows = [(e.input_ids[:max_len], e.labels[:max_len]) for e in examples]
    width = max(len(ids) for ids, _ in rows)
    return TextBatch(
        input_ids=torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids, _ in rows]),
        attention_mask=torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        labels=torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows]),
    )


def bucketed_batches(
    examples: Iterator[Example], batch_size: int, max_len: int, pad_token_id: int, rng: random.Random
) -> Iterator[TextBatch]:
    """Take BUCKET_BATCHES batches' worth of examples, sort by length, cut, shuffle the batches:
    little padding, no length-ordered curriculum."""
    while True:
        pool = [next(examples) for _ in range(batch_size * BUCKET_BATCHES)]
        pool.sort(key=lambda e: len(e.input_ids))
        chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield collate(chunk, pad_token_id, max_len)


def lm_loss(model: torch.nn.Module, batch: TextBatch) -> torch.Tensor:
    """The causal LM's own loss on the labelled tokens."""
    device = next(model.parameters()).device
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        labels=batch.labels.to(device),
    )
    return out.loss


def sampled_batches(
    pool: list[tuple[list[int], list[int]]], pad_token_id: int
) -> Callable[[int, TrainingConfig], Iterator[TextBatch]]:
    """A text task's `Prepared.batches`: (prompt, answer) token pairs drawn with replacement by a
    seeded RNG, loss on the answer tokens, length-bucketed."""

    def examples(rng: random.Random) -> Iterator[Example]:
        while True:
            prompt, answer = pool[rng.randrange(len(pool))]
            yield Example(prompt + answer, [-100] * len(prompt) + answer)

    def batches(seed: int, cfg: TrainingConfig) -> Iterator[TextBatch]:
        drawn = examples(random.Random(seed))
        return bucketed_batches(drawn, cfg.batch_size, cfg.max_seq_length, pad_token_id, random.Random(seed))

    return batches


def forgetting(before: float, after: float) -> dict[str, float]:
    """A text task's `Prepared.prior_change`: general-text CE after training minus before."""
    return {"forgetting": after - before, "general_ce_before": before, "general_ce_after": after}
