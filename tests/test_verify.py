"""`peftrepro verify` and the tamper cases, on the tiny stand-in (seconds per re-run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro import schemas, stats
from peftrepro.cli import main
from peftrepro.collect import load_submission
from peftrepro.jsonio import pretty_bytes, read_json
from peftrepro.records import list_records
from tests.synthetic import TESTER, throwaway_key, trust


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


# An honest record per manifest (bytes) and seeds, made by a real run once per module: most tests
# here doctor a copy of the same tiny seed-0 record and re-run it, so each re-runs, none re-trains.
_HONEST: dict[tuple[bytes, str], list[tuple[str, bytes]]] = {}


def run_seeds(manifest: Path, seeds: str = "0") -> list[Path]:
    key, first = (manifest.read_bytes(), seeds), not list_records(manifest.parent)
    if first and key in _HONEST:
        (manifest.parent / "runs").mkdir(exist_ok=True)
        for name, data in _HONEST[key]:
            (manifest.parent / "runs" / name).write_bytes(data)
        return list_records(manifest.parent)
    code, out = cli("run", str(manifest), "--seeds", seeds)  # a later run makes a newer record
    assert code == 0, out
    if first:
        _HONEST[key] = [(p.name, p.read_bytes()) for p in list_records(manifest.parent)]
    return list_records(manifest.parent)


def edit_json(path: Path, change) -> None:
    doc = read_json(path)
    change(doc)
    path.write_bytes(pretty_bytes(doc))


def verifications(folder: Path) -> list[Path]:
    return sorted((folder / "verifications").glob("*.json"))


def test_honest_record_is_reproduced_bit_for_bit(write_manifest, tmp_path: Path) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    trust(tmp_path / "submissions")
    code, out = cli("verify", str(manifest.parent), "--sign-with", str(throwaway_key()))
    assert code == 0, out
    assert "signed: " in out
    assert "verdict: REPRODUCED" in out and "1 reproduced, 0 not_reproduced, 0 not_comparable" in out
    [vfile] = verifications(manifest.parent)
    v = read_json(vfile)
    schemas.check(v, schemas.VERIFICATION, str(vfile))
    schemas.check(v["rerun"], schemas.RUN_RECORD, str(vfile))
    claimed = read_json(record)
    assert v["rerun"]["metrics"]["adapter_sha256"] == claimed["metrics"]["adapter_sha256"]
    assert v["claim"]["run_id"] == claimed["run_id"]
    outcomes = {c["metric"]: c["outcome"] for c in v["comparisons"]}
    assert outcomes["test_accuracy"] == outcomes["adapter_sha256"] == outcomes["resolved_config"] == "match"
    assert outcomes["train_seconds"] == "informational"
    assert outcomes["peak_memory_bytes"] == "match"  # same machine class, within 10%
    [stored] = load_submission(manifest.parent).verifications.values()
    assert stored.signer == TESTER  # the leaderboard will count it


def test_an_unsigned_verification_is_written_and_says_it_does_not_count(write_manifest) -> None:
    manifest = write_manifest()
    run_seeds(manifest)
    code, out = cli("verify", str(manifest.parent), "--sign-with", "/no/such/key")
    assert code == 2 and "no such key file" in out and not verifications(manifest.parent)
    code, out = cli("verify", str(manifest.parent))
    assert code == 0 and "unsigned: it counts on the leaderboard once a verifier" in out
    [stored] = load_submission(manifest.parent).verifications.values()
    assert stored.signer is None and stored.signature.why == "unsigned"


def one_more_correct(outcomes: dict) -> dict:
    """A score and outcomes doctored together (one wrong item marked right): a record that reads
    as consistent, and that only a re-run can refute."""
    items = [bool(x) for x in stats.decode(outcomes)]
    items[items.index(False)] = True
    return {"test_accuracy": sum(items) / len(items), "test_outcomes": stats.encode(items)}


def test_a_score_doctored_without_its_outcomes_is_refused_before_any_rerun(write_manifest) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    edit_json(record, lambda doc: doc["metrics"].__setitem__("test_accuracy", 1.0))
    code, out = cli("verify", str(manifest.parent))
    assert code == 2 and "test_outcomes: their mean" in out and "not the record's score 1.0" in out, out
    assert not verifications(manifest.parent)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("test_accuracy", lambda m: m.update(one_more_correct(m["test_outcomes"]))),
        ("trainable_params", lambda m: m.__setitem__("trainable_params", m["trainable_params"] // 2)),
        ("adapter_sha256", lambda m: m.__setitem__("adapter_sha256", "0" * 64)),
        ("forgetting", lambda m: m.__setitem__("forgetting", m["forgetting"] - 0.5)),
        ("peak_memory_bytes", lambda m: m.__setitem__("peak_memory_bytes", m["peak_memory_bytes"] // 2)),
    ],
)
def test_doctored_metric_is_not_reproduced(write_manifest, field, change) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    edit_json(record, lambda doc: change(doc["metrics"]))
    code, out = cli("verify", str(manifest.parent))
    assert code == 1, out
    assert "verdict: NOT_REPRODUCED" in out and f"reason: {field}: claimed" in out
    [vfile] = verifications(manifest.parent)
    assert read_json(vfile)["verdict"] == "not_reproduced"


def test_edited_resolved_config_is_not_reproduced(write_manifest) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    edit_json(record, lambda doc: doc["resolved_config"]["training"].__setitem__("max_steps", 600))
    code, out = cli("verify", str(manifest.parent))
    assert code == 1 and "resolved_config" in out, out


def test_edited_manifest_makes_the_record_stale(write_manifest) -> None:
    manifest = write_manifest()
    run_seeds(manifest)
    edit_json(manifest, lambda doc: doc["peft_config"].__setitem__("r", 8))
    sub = load_submission(manifest.parent)
    assert not sub.claims and sub.stale is not None and "manifest changed" in (sub.stale_reason or "")
    code, out = cli("verify", str(manifest.parent))
    assert code == 2 and "no success record for its current manifest" in out


def test_truncated_record_is_reported_and_ignored(write_manifest) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    record.write_bytes(record.read_bytes()[:200])
    sub = load_submission(manifest.parent)
    assert not sub.claims and [p for p, _ in sub.ignored] == [record]
    code, out = cli("verify", str(manifest.parent))
    assert code == 2, out


def test_schema_invalid_record_falls_back_to_an_older_valid_one(write_manifest) -> None:
    manifest = write_manifest()
    older, newer = run_seeds(manifest, "0"), None
    [newer] = [p for p in run_seeds(manifest, "0") if p not in older]
    edit_json(newer, lambda doc: doc["metrics"].__setitem__("test_accuracy", 7))  # not a fraction
    sub = load_submission(manifest.parent)
    assert sub.claims[0].path == older[0]
    assert sub.ignored == [(newer, "/metrics/test_accuracy: expected a number <= 1, got 7")]


def test_record_copied_from_another_submission_is_ignored(write_manifest, tmp_path: Path) -> None:
    a = write_manifest()
    [record] = run_seeds(a)
    b = write_manifest({"name": "other"})
    (b.parent / "runs").mkdir()
    (b.parent / "runs" / record.name).write_bytes(record.read_bytes())
    sub = load_submission(b.parent)
    assert not sub.claims and "belongs to arithmetic/lora/tiny" in sub.ignored[0][1]


def test_verdict_edited_by_hand_does_not_count(write_manifest) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    edit_json(record, lambda doc: doc["metrics"].update(one_more_correct(doc["metrics"]["test_outcomes"])))
    assert cli("verify", str(manifest.parent))[0] == 1
    [vfile] = verifications(manifest.parent)
    edit_json(vfile, lambda doc: doc.__setitem__("verdict", "reproduced"))
    sub = load_submission(manifest.parent)
    assert not sub.verifications
    assert "says reproduced but its own re-run gives not_reproduced" in sub.ignored[0][1]


def test_record_edited_after_its_verification_loses_it(write_manifest) -> None:
    manifest = write_manifest()
    [record] = run_seeds(manifest)
    assert cli("verify", str(manifest.parent))[0] == 0
    edit_json(record, lambda doc: doc["metrics"].__setitem__("train_seconds", 0.5))  # informational, yet
    sub = load_submission(manifest.parent)
    assert not sub.verifications and "has changed since" in sub.ignored[0][1]


def test_seeds_all_seeds_and_seed_choice(write_manifest) -> None:
    manifest = write_manifest()
    records = run_seeds(manifest, "0,1,2")
    assert sorted(json.loads(p.read_text())["seed"] for p in records) == [0, 1, 2]
    code, out = cli("verify", str(manifest.parent), "--seed", "1")
    assert code == 0 and "seed 1:" in out, out
    code, out = cli("verify", str(manifest.parent), "--seed", "5")
    assert code == 2 and "no success record for seed 5" in out
    code, out = cli("verify", str(manifest.parent), "--all-seeds")
    assert code == 0 and "3 reproduced" in out, out
    assert len(verifications(manifest.parent)) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "X", "--seeds", "0,a"], "comma-separated integers"),
        (["run", "--seeds", "X"], "for the task's corpus seeds put it after the paths"),
        (["run", "X", "--seeds", "1,1"], "distinct integers"),
        (["run", "X", "--seed", "1", "--seeds", "1,2"], "not both"),
        (["verify"], "give --all or --changed-since"),
        (["verify", "--all", "--changed-since", "HEAD"], "give --all or --changed-since"),
        (["verify", "nowhere"], "no such file or folder"),
    ],
)
def test_bad_usage_is_one_line_exit_2(write_manifest, args, message) -> None:
    manifest = write_manifest()
    code, out = cli(*[str(manifest) if a == "X" else a for a in args])
    assert code == 2 and message in out and "Traceback" not in out, out


def test_changed_since_finds_touched_submissions(write_manifest, tmp_path: Path, monkeypatch) -> None:
    import git

    a = write_manifest()
    b = write_manifest({"name": "other"})
    repo = git.Repo.init(tmp_path)
    repo.git.add(all=True)
    repo.index.commit("base")
    run_seeds(b)  # an untracked record under b
    monkeypatch.chdir(tmp_path)
    from peftrepro.verify import changed_submissions

    assert changed_submissions(Path("submissions"), "HEAD") == [Path("submissions/arithmetic/lora/other")]
    edit_json(a, lambda doc: doc.__setitem__("title", "changed"))
    assert len(changed_submissions(Path("submissions"), "HEAD")) == 2
    code, out = cli("verify", "--changed-since", "HEAD")
    assert code == 0, out  # a has no record (skipped with a note), b is reproduced
    assert "skip arithmetic/lora/tiny" in out and "1 reproduced" in out
    code, out = cli("verify", "--changed-since", "no-such-ref")
    assert code == 2 and "no such commit" in out


def test_interrupted_verify_writes_nothing(write_manifest, tiny_model_dir: Path) -> None:
    """A claim of a very long run: the re-run is interrupted, exit 130, no verification written."""
    import signal

    from peftrepro.manifest import resolve
    from tests.synthetic import record, run_id, save
    from tests.tiny import interrupt_during_training

    path = write_manifest({"training": {"max_steps": 100000, "eval_steps": 100000}})
    save(path.parent, "runs", record(resolve(path), 0, run_id(0, 0)))
    code, out, err = interrupt_during_training(["verify", str(path.parent)], tiny_model_dir, signal.SIGINT)
    assert code == 130, err
    assert "re-run cancelled" in out and "Traceback" not in err
    assert not (path.parent / "verifications").exists()
    assert len(list((path.parent / "runs").glob("*.json"))) == 1  # the re-run's record went nowhere


def test_a_reused_base_measurement_is_measured_again_by_verify(write_manifest) -> None:
    """Runs reuse the base model's figures from the cache (and say so, with the key); a verify
    re-run measures them again, so the claim's base figures are checked, not copied."""
    manifest = write_manifest()
    first, second = sorted(run_seeds(manifest, "0,1"), key=lambda p: read_json(p)["seed"])
    assert read_json(first)["base_measurements"]["reused"] is False  # a cold cache: measured
    reused = read_json(second)["base_measurements"]
    assert reused["reused"] is True and reused["key"] == read_json(first)["base_measurements"]["key"]
    code, out = cli("verify", str(manifest.parent), "--seed", "1")
    assert code == 0, out
    [vfile] = verifications(manifest.parent)
    rerun = read_json(vfile)["rerun"]
    assert rerun["base_measurements"] == {"key": reused["key"], "reused": False}
    outcomes = {c["metric"]: c["outcome"] for c in read_json(vfile)["comparisons"]}
    assert outcomes["base_test_accuracy"] == "match"
