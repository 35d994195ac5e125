"""`metamathqa`: the public PEFT method comparison's LLM track, made re-checkable (one GPU, hours).

Llama-3.2-3B trained on MetaMathQA, scored by exact match on the GSM8K test set (1,319 problems),
with the public comparison's defaults (`default_training_params.json`): bfloat16, 768 tokens,
batch 4, 5000 steps, validation every 250 steps on 50 GSM8K training problems, AdamW lr 1e-4 with
weight decay 0.1, cosine with 10% warmup, greedy generation of at most 300 new tokens (800 in all),
the prompt "Question: {query} Think step by step.\\nAnswer:". Model and datasets are loaded from the
hub at pinned revisions (`Pinned`); tests pass local folders through the same loaders.

Where this differs from the public harness, on purpose:
- `forgetting` is the mean *next-token* cross-entropy on the general-text set, after minus before.
  The public harness scores each logit against the token at its own position (no shift), which
  measures how well the model copies its input rather than how well it predicts text; that figure
  is recorded too, as `forgetting_same_position`, to compare with their published numbers.
- Validation runs at every `eval_steps` and at the last step, like every peftrepro task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, DivisionByZero, InvalidOperation
from typing import Any

import numpy as np
import torch

from peftrepro.errors import UsageError
from peftrepro.jsonio import canonical_sha256
from peftrepro.metrics import VerificationPolicy
from peftrepro.runconfig import TrainingConfig
from peftrepro.tasks.base import Prepared, Probe, Task, quiet_model_loading
from peftrepro.tasks.hub import Pinned, hub_load_errors, load_pinned_dataset
from peftrepro.tasks.text import TextBatch

# Revisions from the public comparison's result files (../shared/reference/README.md).
MODEL = Pinned("meta-llama/Llama-3.2-3B", "13afe5124825b4f3751f836b40dafda64c1ed062")
METAMATH = Pinned("meta-math/MetaMathQA", "aa4f34d3d2d3231299b5b03d9b3e5a20da45aa18")
GSM8K = Pinned("openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866", "main")
# The public harness streams the first 100 rows of finewiki at whatever `main` is; no revision of
# it is published. Until one is pinned here, a run records the revision the hub resolved (below),
# so two records over different text sets never verify against each other silently.
GENERAL_TEXT = Pinned("HuggingFaceFW/finewiki", None)
GENERAL_ROWS = 100
GENERAL_MAX_TOKENS = 768

CHAR_LIMIT = 1300  # the public harness drops MetaMathQA pairs longer than this (93.8% remain)
VALID_SIZE = 50
BUCKET_FACTOR = 20  # batches per length bucket, as the public harness
EMPTY_CACHE_EVERY = 10  # steps; the public harness empties the CUDA cache this often (memory figures)
QUERY_TEMPLATE = "Question: {query} Think step by step.\nAnswer:"
GENERATION = {"max_length": 800, "max_new_tokens": 300}
ANSWER_DELIMITERS = (
    "The answer is: ",
    "The answer is ",
    "The final answer is: ",
    "The final answer is ",
    "#### ",
)


# Llama-3.2-3B's config.json at MODEL.revision (the architecture only, no weights): `validate`
# attaches a manifest to this skeleton on the meta device, so a GPU-track manifest is checked on
# any machine without downloading 6 GB. Its size, 3,212,749,824 parameters, is the public result
# files' num_total_params minus num_trainable_params (tests/test_metamathqa.py checks it).
LLAMA_3_2_3B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "num_attention_heads": 24,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "vocab_size": 128256,
}


@dataclass(frozen=True)
class Sources:
    model: Pinned = MODEL
    metamath: Pinned = METAMATH
    gsm8k: Pinned = GSM8K
    general: Pinned = GENERAL_TEXT


def parse_answer(text: str) -> str | None:
    """The text after the last answer delimiter, up to the end of its line, without . ! ? $ %."""
    text = text.strip().rstrip(".!?")
    for delimiter in ANSWER_DELIMITERS:
        if delimiter in text:
            break
    else:
        return None
    text = text.rpartition(delimiter)[-1].strip().split("\n", 1)[0]
    return text.strip(" .!?$%")


def to_number(s: str | None) -> float | None:
    """'13', '65.33', '20/14' -> a float; anything else None."""
    if s is None:
        return None
    s = s.strip()
    try:
        if "/" in s:
            num, _, den = s.partition("/")
            if "/" in den or Decimal(den.strip()) == 0:
                return None
            return float(Decimal(num.strip()) / Decimal(den.strip()))
        return float(Decimal(s))
    except (DivisionByZero, InvalidOperation, ValueError):
        return None


def is_correct(prediction: str, response: str) -> bool:
    """Exact match as the public comparison judges it: numbers by value, other answers as text."""
    truth, guess = parse_answer(response), parse_answer(prediction)
    if truth is None:
        raise ValueError(f"reference answer without a delimiter: {response[-80:]!r}")
    if guess is None:
        return False
    t, g = to_number(truth), to_number(guess)
    return (t if t is not None else truth) == (g if g is not None else guess)


def accuracy(predictions: list[str], responses: list[str]) -> float:
    return sum(map(is_correct, predictions, responses)) / len(responses)


def generation_limit(prompt_width: int) -> int:
    """The public harness's rule: at most max_new_tokens, and never past max_length in all."""
    return min(GENERATION["max_new_tokens"] + prompt_width, GENERATION["max_length"])


def _dtype_kwargs(dtype: str) -> dict[str, Any]:
    if dtype in ("int8", "int4"):
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise UsageError(f"dtype {dtype} needs bitsandbytes: pip install bitsandbytes") from None
        flag = {"int8": "load_in_8bit", "int4": "load_in_4bit"}[dtype]
        return {"quantization_config": BitsAndBytesConfig(**{flag: True})}
    return {"dtype": getattr(torch, dtype)}


def math_loss(model: torch.nn.Module, batch: TextBatch) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        labels=batch.labels.to(device),
        num_items_in_batch=int(batch.attention_mask.sum()),
    )
    return out.loss


class MetaMathQATask(Task):
    name = "metamathqa"
    version = "1"
    base_model_id = MODEL.id
    peft_task_type = "CAUSAL_LM"
    score_key = "test_accuracy"
    published_task: str | None = "metamathqa"
    accelerator = "cuda"
    num_threads = 8  # CPU threads for data and host work; results are not bit-exact on GPUs anyway
    dtypes = ("bfloat16", "float32", "float16", "int8", "int4")
    # Run-to-run spread on GPUs: kernels are not bit-exact, so scores get a band. 0.02 on 1,319
    # problems is ~26 answers; to be narrowed once re-runs of the corpus have been measured.
    verification = VerificationPolicy(
        bit_exact=False, score_band=0.02, nondeterministic=("adapter_sha256", "samples_sha256")
    )
    training_defaults: dict[str, Any] = {  # noqa: RUF012 - read-only by convention
        "max_steps": 5000,
        "batch_size": 4,
        "batch_size_eval": 50,
        "eval_steps": 250,
        "max_seq_length": 768,
        "seed": 0,
        "grad_norm_clip": 1.0,
        "optimizer_type": "AdamW",
        "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 0.1},
        "lr_scheduler": "cosine",
        "warmup_steps": 500,  # the public harness: 10% of max_steps
    }

    def __init__(self, sources: Sources | None = None, valid_size: int = VALID_SIZE) -> None:
        self.sources = sources or Sources()
        self.valid_size = valid_size

    def preflight(self, training: TrainingConfig) -> None:
        if training.dtype in ("int8", "int4"):
            _dtype_kwargs(training.dtype)  # raises the one-line "needs bitsandbytes" when it is missing

    def skeleton(self) -> torch.nn.Module:
        """The base model's architecture on the meta device: no weights, no download."""
        from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

        src = self.sources.model
        if src == MODEL:
            config = LlamaConfig(**LLAMA_3_2_3B)
        else:
            config = AutoConfig.from_pretrained(src.id, revision=src.revision)
        with torch.device("meta"):
            return LlamaForCausalLM(config)

    def prepare(self, training: TrainingConfig | None = None) -> Prepared:
        with hub_load_errors(self.name, "Llama-3.2-3B"):
            return self._prepare(training)

    def _prepare(self, training: TrainingConfig | None) -> Prepared:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_model_loading()
        src = self.sources
        dtype = (training.dtype if training else None) or self.dtypes[0]
        max_len = training.max_seq_length if training else self.training_defaults["max_seq_length"]
        tok = AutoTokenizer.from_pretrained(src.model.id, revision=src.model.revision)
        tok.model_max_length = max_len
        if not tok.pad_token:
            tok.pad_token = tok.eos_token
        pad = tok.pad_token_id

        def load_base() -> torch.nn.Module:
            return AutoModelForCausalLM.from_pretrained(
                src.model.id, revision=src.model.revision, **_dtype_kwargs(dtype)
            )

        model = load_base()
        metamath = load_pinned_dataset(src.metamath, "train")
        keep = [
            i
            for i, (q, r) in enumerate(zip(metamath["query"], metamath["response"], strict=True))
            if len(f"{q} {r}") <= CHAR_LIMIT
        ]
        metamath = metamath.select(keep)
        gsm_train = load_pinned_dataset(src.gsm8k, "train")
        gsm_test = load_pinned_dataset(src.gsm8k, "test")
        order = np.random.RandomState(0).permutation(len(gsm_train))  # the public harness's valid pick
        valid = gsm_train.select(order[: self.valid_size])
        evals = {
            "valid": (list(valid["question"]), list(valid["answer"])),
            "test": (list(gsm_test["question"]), list(gsm_test["answer"])),
        }
        general = [
            row["text"]
            for row in load_pinned_dataset(src.general, "train", streaming=True).take(GENERAL_ROWS)
        ]

        train_ids = tok(
            [
                QUERY_TEMPLATE.format(query=q) + r
                for q, r in zip(metamath["query"], metamath["response"], strict=True)
            ]
        ).input_ids
        train_ids = [ids[:max_len] for ids in train_ids]

        def batches(seed: int, cfg: TrainingConfig) -> Iterator[TextBatch]:
            # The public harness's order: the dataset as published, cut into buckets of 20 batches,
            # each sorted longest first. The seed changes the adapter's initialisation, not the data.
            del seed
            while True:
                for start in range(0, len(train_ids), cfg.batch_size * BUCKET_FACTOR):
                    bucket = sorted(
                        train_ids[start : start + cfg.batch_size * BUCKET_FACTOR], key=len, reverse=True
                    )
                    for i in range(0, len(bucket), cfg.batch_size):
                        yield _collate(bucket[i : i + cfg.batch_size], pad)

        def outcomes(m: torch.nn.Module, split: str, batch_size: int) -> tuple[float, list[bool]]:
            questions, answers = evals[split]
            items = [bool(c) for c in map(is_correct, _generate(m, tok, questions, batch_size), answers)]
            return sum(items) / len(items), items

        def evaluate(m: torch.nn.Module, split: str, batch_size: int) -> float:
            return outcomes(m, split, batch_size)[0]

        def general_ce(m: torch.nn.Module, batch_size: int) -> dict[str, float]:
            del batch_size  # the public harness uses the training batch size here, to keep memory down
            return _general_ce(m, tok, general, self.training_defaults["batch_size"])

        def forgetting(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
            return {
                "forgetting": after["next_token"] - before["next_token"],
                "general_ce_before": before["next_token"],
                "general_ce_after": after["next_token"],
                "forgetting_same_position": after["same_position"] - before["same_position"],
            }

        artifacts = {
            "model": {**src.model.describe(), "dtype": dtype},
            "data": {
                "train": {**src.metamath.describe(), "rows": len(metamath), "char_limit": CHAR_LIMIT},
                "eval": {**src.gsm8k.describe(), "valid": self.valid_size, "test": len(gsm_test)},
                "general_text": {**src.general.describe(), "rows": len(general)},
                "general_text_sha256": canonical_sha256(general),
                "eval_sha256": canonical_sha256(evals),
            },
        }
        probe_rows = [ids[:64] for ids in train_ids[:4]]
        return Prepared(
            model=model,
            artifacts=artifacts,
            batches=batches,
            loss=math_loss,
            evaluate=evaluate,
            outcomes=outcomes,
            prior=general_ce,
            prior_change=forgetting,
            probe=_probe(probe_rows, pad),
            load_base=load_base,
            extra={"tokenizer": tok, "empty_cache_every": EMPTY_CACHE_EVERY},
        )


def _collate(rows: list[list[int]], pad: int) -> TextBatch:
    """Right padding; labels keep the first padding position (EOS doubles as padding), as theirs."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.clone()
    for i, r in enumerate(rows):
        labels[i, len(r) + 1 :] = -100
    return TextBatch(input_ids=ids, attention_mask=mask, labels=labels)


def _probe(rows: list[list[int]], pad: int) -> Probe:
    batch = _collate(rows, pad)

    def on(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        return {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}

    return Probe(
        outputs=lambda model: model(**on(model)).logits.float(),
        loss=lambda model: model(**on(model), labels=batch.labels.to(next(model.parameters()).device)).loss,
    )


@torch.inference_mode()
def _generate(model: torch.nn.Module, tok: Any, questions: list[str], batch_size: int) -> list[str]:
    """Greedy completions, prompt included (the public harness parses the whole decoded text)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out_texts: list[str] = []
    for i in range(0, len(questions), batch_size):
        prompts = [QUERY_TEMPLATE.format(query=q) for q in questions[i : i + batch_size]]
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
        width = enc["input_ids"].shape[1]
        out = model.generate(  # type: ignore[operator]
            **enc, max_length=generation_limit(width), do_sample=False, pad_token_id=tok.eos_token_id
        )
        out_texts += tok.batch_decode(out, skip_special_tokens=True)
    model.train(was_training)
    return out_texts


@torch.inference_mode()
def _general_ce(model: torch.nn.Module, tok: Any, texts: list[str], batch_size: int) -> dict[str, float]:
    """Mean cross-entropy per token over the texts (each cut to 768 tokens): next-token (ours), and
    each logit against the token at its own position (the public harness's, for comparison)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, same, same_count = 0.0, 0, 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tok(
            texts[i : i + batch_size],
            truncation=True,
            max_length=GENERAL_MAX_TOKENS,
            return_tensors="pt",
            padding=True,
            padding_side="left",
        ).to(device)
        logits = model(**enc).logits.float()
        labels = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            reduction="sum",
            ignore_index=-100,
        ).item()
        count += int((labels != -100).sum())
        here = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        same += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), here.reshape(-1), reduction="sum", ignore_index=-100
        ).item()
        same_count += int((here != -100).sum())
    model.train(was_training)
    return {"next_token": total / count, "same_position": same / same_count}
