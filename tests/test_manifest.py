from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftrepro.errors import ManifestError
from peftrepro.manifest import deep_merge, manifest_sha256, resolve
from peftrepro.methods import FAMILIES, LORA_VARIANTS, UNSUPPORTED_VARIANTS
from peftrepro.tasks import get_task
from peftrepro.validate import validate_paths
from tests.conftest import DELETE, LORA_MANIFEST


def error_of(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        resolve(path)
    return info.value


def test_resolve_merges_task_defaults_deeply(write_manifest) -> None:
    path = write_manifest({"training": {"optimizer_kwargs": {"lr": 1e-3}, "max_steps": 7}})
    m = resolve(path)
    defaults = get_task("arithmetic").training_defaults
    assert m.training.optimizer_kwargs == {**defaults["optimizer_kwargs"], "lr": 1e-3}
    assert m.training.max_steps == 7
    assert m.training.batch_size == defaults["batch_size"]
    assert m.peft_config["task_type"] == "CAUSAL_LM"  # filled from the task


def test_deep_merge_keeps_nested_defaults_and_does_not_mutate() -> None:
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": 1}
    out = deep_merge(base, {"a": {"y": {"q": 3}}, "c": [1]})
    assert out == {"a": {"x": 1, "y": {"p": 1, "q": 3}}, "b": 1, "c": [1]}
    assert base == {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": 1}
    assert deep_merge(base, {"a": 5})["a"] == 5  # a scalar override replaces a dict


def test_hash_ignores_key_order_and_whitespace(write_manifest, tmp_path: Path) -> None:
    path = write_manifest()
    a = resolve(path).sha256
    reordered = dict(reversed(list(json.loads(path.read_text()).items())))
    path.write_text(json.dumps(reordered, indent=7))
    assert resolve(path).sha256 == a
    assert a == manifest_sha256(LORA_MANIFEST)
    path.write_text(json.dumps({**LORA_MANIFEST, "title": "changed"}))
    assert resolve(path).sha256 != a


def test_hash_is_pinned_for_a_fixed_document() -> None:
    # Canonical form: sorted keys, compact separators, UTF-8; a change here would orphan every record.
    assert manifest_sha256({"b": 1, "a": [1.5, "é"]}) == (
        "b3aa7c2c75e6eda68896ca65edd78b023f766c052f625885b86d88bfa1f1a585"
    )


@pytest.mark.parametrize(
    ("changes", "pointer", "fragment"),
    [
        ({"method": "dora"}, "/peft_config/use_dora", "requires use_dora = true"),
        ({"method": "loha"}, "/peft_config/peft_type", "runs LOHA, got LORA"),
        ({"method": "nosuchmethod"}, "/method", "unknown method family"),
        ({"task": "nosuchtask"}, "/task", "unknown task"),
        ({"training": {"momentum": 0.9}}, "/training/momentum", "unknown field"),
        (
            {"training": {"optimizer_kwargs": {"momentum": 0.9}}},
            "/training/optimizer_kwargs/momentum",
            "AdamW does not take 'momentum'",
        ),
        (
            {"peft_config": {"peft_type": "LORA", "r": 4, "not_a_field": 1}},
            "/peft_config/not_a_field",
            "has no field",
        ),
        ({"peft_config": {"peft_type": "LORA", "revision": "main"}}, "/peft_config/revision", "not accepted"),
        (
            {"peft_config": {"peft_type": "LORA", "init_lora_weights": "eva"}},
            "/peft_config/init_lora_weights",
            "not supported",
        ),
        (
            {"peft_config": {"peft_type": "LORA", "base_model_name_or_path": "gpt2"}},
            "/peft_config/base_model_name_or_path",
            "the task's base model is",
        ),
        (
            {"peft_config": {"peft_type": "LORA", "task_type": "SEQ_CLS"}},
            "/peft_config/task_type",
            "needs CAUSAL_LM",
        ),
        ({"peft_config": {"peft_type": "XLORA"}}, "/peft_config/peft_type", "not supported"),
        ({"peft_config": {"peft_type": "LORA", "bias": "../../etc"}}, "/peft_config/bias", "file paths"),
        ({"description": DELETE}, "/description", "required field is missing"),
        ({"peft_config": None}, "/peft_config", "full fine-tuning is"),
        ({"supersedes": "lora/tiny"}, "/supersedes", "names this submission itself"),
        ({"supersedes": "../../etc"}, "/supersedes", "match"),
        ({"method": "full-finetuning"}, "/method", "every other family needs a PEFT config"),
        ({"training": {"optimizer_type": "lora-fa"}}, "/training/optimizer_type", "method family 'lora-fa'"),
        ({"method": "lora-fa"}, "/training/optimizer_type", 'requires optimizer_type = "lora-fa"'),
        (
            {"method": "lora-fa", "training": {"optimizer_type": "lora-fa", "optimizer_kwargs": {"r": 16}}},
            "/training/optimizer_kwargs/r",
            "must equal peft_config.r (4)",
        ),
    ],
)
def test_policy_errors_name_the_field(write_manifest, changes, pointer, fragment) -> None:
    e = error_of(write_manifest(changes))
    assert e.pointer == pointer, e.message
    assert fragment in e.expected, e.message
    assert "\n" not in e.message


def test_folder_must_match_task_method_name(write_manifest) -> None:
    e = error_of(write_manifest(at=("arithmetic", "lora", "other")))
    assert e.pointer == "" and "task/method/name must match the folders" in e.expected
    e = error_of(write_manifest(at=("arithmetic", "dora", "tiny")))
    assert "must be at <submissions>/arithmetic/lora/tiny/manifest.json" in e.message


def test_method_families_map_variants_to_flags(write_manifest) -> None:
    assert FAMILIES["dora"].peft_type == FAMILIES["rslora"].peft_type == "LORA"
    assert FAMILIES["prefix-tuning"].peft_type == "PREFIX_TUNING"
    assert "xlora" not in FAMILIES
    ok = write_manifest({"method": "dora", "peft_config": {**LORA_MANIFEST["peft_config"], "use_dora": True}})
    assert resolve(ok).method == "dora"
    e = error_of(write_manifest({"peft_config": {**LORA_MANIFEST["peft_config"], "use_rslora": True}}))
    assert e.pointer == "/peft_config/use_rslora"


@pytest.mark.parametrize(
    "family, fields",
    [
        ("kasa", {"kasa_config": {"beta": 1e-4, "gamma": 1e-3}}),
        ("kasa", {"kasa_config": {}}),  # peft builds the sub-config with its defaults: KaSA is on
        ("mica", {"init_lora_weights": "mica"}),
        ("bd-lora", {"use_bdlora": {"target_modules_bd_a": ["v_proj"], "nblocks": 2}}),
        ("dora", {"use_dora": True}),
    ],
)
def test_a_lora_variant_peft_registers_has_its_own_family(write_manifest, family, fields) -> None:
    """The public comparison files KaSA, MiCA and BD-LoRA under `lora`; here "the best lora row" is
    plain LoRA: a variant's config is refused in `lora`, naming its family, and accepted there."""
    peft_config = {**LORA_MANIFEST["peft_config"], **fields}
    e = error_of(write_manifest({"peft_config": peft_config}))
    [key] = fields
    assert e.pointer == f"/peft_config/{key}"
    assert f"belongs in the method family {family!r}" in e.expected
    assert resolve(write_manifest({"method": family, "peft_config": peft_config})).method == family
    # ... and its family without the variant turned on is refused too
    e = error_of(write_manifest({"method": family}))
    assert e.pointer == f"/peft_config/{key}" and f"method family {family!r} requires {key}" in e.expected


def test_two_variants_at_once_or_an_unsupported_one_are_refused(write_manifest) -> None:
    both = {**LORA_MANIFEST["peft_config"], "use_dora": True, "init_lora_weights": "mica"}
    e = error_of(write_manifest({"method": "dora", "peft_config": both}))
    assert "LoRA variant dora+mica: it belongs in no family" in e.expected
    arrow = {**LORA_MANIFEST["peft_config"], "arrow_config": {"top_k": 2}}
    e = error_of(write_manifest({"peft_config": arrow}))
    assert e.pointer == "/peft_config/arrow_config" and "arrow is not supported" in e.expected


def test_every_variant_peft_registers_is_a_family_or_refused_with_a_reason() -> None:
    """A peft upgrade that registers a new LoRA variant gets a family (or a stated refusal) without a
    code change here, read from peft's own metadata; this pins the ones known today."""
    assert {"dora", "kasa", "mica", "bd-lora"} <= set(LORA_VARIANTS)
    for name in LORA_VARIANTS:
        assert (name in FAMILIES) != (name in UNSUPPORTED_VARIANTS), name


def test_validate_attaches_and_counts_trainable_params(write_manifest) -> None:
    [result] = validate_paths([write_manifest().parent])
    assert result.ok, result.error
    # q_proj and v_proj, 2 layers, hidden 64, r=4: 2 layers * 2 modules * (64*4 + 4*64)
    assert result.trainable_params == 2 * 2 * (64 * 4 + 4 * 64)
    assert result.total_params is not None and result.total_params > result.trainable_params


def test_validate_reports_configs_that_do_not_attach(write_manifest) -> None:
    path = write_manifest({"peft_config": {"peft_type": "LORA", "target_modules": ["no_such_module"]}})
    [result] = validate_paths([path])
    assert result.error is not None
    assert result.error.pointer == "/peft_config"
    assert "does not attach" in result.error.message


def test_validate_walks_a_tree_and_skips_runs(write_manifest, tmp_path: Path) -> None:
    write_manifest()
    write_manifest({"name": "second"})
    runs = tmp_path / "submissions" / "arithmetic" / "lora" / "tiny" / "runs"
    runs.mkdir()
    (runs / "manifest.json").write_text("{}")  # not a manifest location: ignored
    results = validate_paths([tmp_path / "submissions"], attach=False)
    assert [r.path.parent.name for r in results] == ["second", "tiny"]
    assert all(r.ok for r in results)
