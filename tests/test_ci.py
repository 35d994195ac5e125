"""`peftrepro ci --changed-since REF` (the pull-request check, locally) and the workflow that runs it."""

from __future__ import annotations

import json
from pathlib import Path

import git
import pytest
import yaml
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.scaffold import PLACEHOLDER, new_submission

REPO = Path(__file__).parent.parent


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def fill_in(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    doc["title"] = "LoRA r=4 on q and v"
    doc["authors"] = ["A. Contributor"]
    doc["description"] = "Rank 4 on the attention projections; learning rate from the task default."
    doc["peft_config"].update({"r": 4, "target_modules": ["q_proj", "v_proj"]})
    doc.update(changes)
    path.write_text(json.dumps(doc, indent=2))


def summary_rows(text: str) -> dict[str, list[str]]:
    return {
        cells[1]: cells[2:-1]
        for line in text.splitlines()
        if line.startswith("| arithmetic/")
        for cells in [[c.strip() for c in line.split("|")]]
    }


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> git.Repo:
    """A repository with one submission (`lora/base`, with a synthetic record), its leaderboard,
    committed."""
    from peftrepro.manifest import resolve
    from tests.synthetic import record, run_id, save

    monkeypatch.chdir(tmp_path)
    base = new_submission(Path("submissions"), "arithmetic", "lora", "base")
    fill_in(base)
    save(base.parent, "runs", record(resolve(base), 0, run_id(1, 0)))
    assert cli("leaderboard")[0] == 0
    r = git.Repo.init(tmp_path)
    r.git.add(all=True)
    r.index.commit("base")
    return r


def test_a_new_submission_passes_once_the_leaderboard_is_regenerated(repo: git.Repo) -> None:
    path = new_submission(Path("submissions"), "arithmetic", "ia3", "mine")
    doc = json.loads(path.read_text())
    doc.update(title="IA3 defaults", authors=["A. Contributor"], description="peft's IA3 defaults, untuned.")
    path.write_text(json.dumps(doc, indent=2))
    code, out, err = cli("ci", "--changed-since", "HEAD", "--summary", "summary.md")
    assert code == 1, out + err  # the task page lists every submission: it must be regenerated
    assert "Leaderboard: ✗ out of date" in out and Path("summary.md").read_text() == out
    row = summary_rows(out)["arithmetic/ia3/mine"]
    assert row[0] == "✓" and row[1].startswith("✓") and row[2].startswith("✓ 2 steps, loss")
    assert row[3] == "– no records"
    assert cli("leaderboard")[0] == 0
    code, out, _ = cli("ci", "--changed-since", "HEAD")
    assert code == 0, out
    assert "Result: every check passed." in out
    assert not list(path.parent.glob("runs/*.json"))  # the smoke run's record went elsewhere


def test_records_are_verified_and_rule_breaking_changes_fail(repo: git.Repo) -> None:
    base = Path("submissions/arithmetic/lora/base")
    code, out, _ = cli("ci", "--changed-since", "HEAD")
    assert code == 0 and "No submission changed." in out
    # Every rule, broken once (each in its own submission), plus an edit of the committed one.
    dup = new_submission(Path("submissions"), "arithmetic", "lora", "dup")
    fill_in(dup, training={"optimizer_kwargs": {"lr": 1e-3}})  # base's config at another rate
    long = new_submission(Path("submissions"), "arithmetic", "rslora", "long")
    fill_in(long, training={"max_steps": 1000})
    lazy = new_submission(Path("submissions"), "arithmetic", "loha", "lazy")
    [record] = base.glob("runs/*.json")
    record.write_text(record.read_text().replace('"seed": 0', '"seed": 0 '))
    fill_in(base / "manifest.json", title="LoRA r=4, retitled")
    assert cli("leaderboard")[0] == 0
    code, out, _ = cli("ci", "--changed-since", "HEAD", "--no-verify")
    assert code == 1
    rows = summary_rows(out)
    problems = out.split("Problems:")[1]
    assert rows["arithmetic/lora/dup"][0].startswith("✗") and "the same config as lora/base" in problems
    assert rows["arithmetic/rslora/long"][0].startswith("✗")
    assert "= 1000 changes the task's budget" in problems
    assert rows["arithmetic/loha/lazy"][0].startswith("✗") and f"title still says {PLACEHOLDER!r}" in problems
    assert rows["arithmetic/lora/base"][0].startswith("✗")
    assert "edits an existing submission's manifest" in problems and "records are append-only" in problems
    assert lazy.exists()  # nothing is changed or removed by the check


def test_a_claim_is_verified(repo: git.Repo) -> None:
    """The one slow test here: a run on the task's full budget (tiny model), then its re-run."""
    path = new_submission(Path("submissions"), "arithmetic", "dora", "claimed")
    fill_in(path)
    assert cli("run", str(path.parent))[0] == 0
    assert cli("leaderboard")[0] == 0
    code, out, _ = cli("ci", "--changed-since", "HEAD")
    assert code == 0, out
    head = repo.head.commit.hexsha
    assert summary_rows(out)["arithmetic/dora/claimed"][3] == f"✓ seed 0 (drawn from {head[:12]}): reproduced"
    assert list(path.parent.glob("verifications/*.json"))


def test_a_forged_verification_of_a_made_up_seed_fails(repo: git.Repo) -> None:
    """A real seed 0, an invented seed 1 at 0.98, and a hand-written "reproduced" verification of it:
    ci re-runs the added verification's seed (and the drawn one) and refuses it."""
    from peftrepro.ci import draw_seed
    from peftrepro.manifest import resolve
    from tests.synthetic import record, run_id, save, verification

    path = new_submission(Path("submissions"), "arithmetic", "dora", "forged")
    fill_in(path)
    assert cli("run", str(path.parent), "--seed", "0")[0] == 0
    invented = save(path.parent, "runs", record(resolve(path), 1, run_id(9, 1), test_accuracy=0.98))
    save(path.parent, "verifications", verification(invented, json.loads(invented.read_text()), run_id(9, 2)))
    assert cli("leaderboard")[0] == 0
    code, out, _ = cli("ci", "--changed-since", "HEAD")
    assert code == 1
    row = summary_rows(out)["arithmetic/dora/forged"]
    assert row[4].startswith("✗") and "does not match a re-run here" in row[4]
    drawn = draw_seed([0, 1], "arithmetic/dora/forged", repo.head.commit.hexsha)  # labelled task/method/name
    assert row[3].startswith("✓" if drawn == 0 else "✗") and f"seed {drawn} (drawn from" in row[3]


def test_added_verifications_of_a_track_ci_cannot_run_need_a_listed_signature(
    repo: git.Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peftrepro.signing import signature_path
    from peftrepro.tasks import get_task
    from tests.synthetic import TESTER, sign_file, throwaway_key, trust, verification

    trust(Path("submissions"))  # the base lists tests/keys/tester
    repo.git.add(all=True)
    repo.index.commit("trust the tester")
    monkeypatch.setattr(get_task("arithmetic"), "accelerator", "cuda")
    base = Path("submissions/arithmetic/lora/base")
    [claim] = base.glob("runs/*.json")
    from tests.synthetic import run_id, save

    forged = save(base, "verifications", verification(claim, json.loads(claim.read_text()), run_id(5, 0)))

    def added_cell() -> str:
        out = cli("ci", "--changed-since", "HEAD", "--no-verify")[1]
        return summary_rows(out)["arithmetic/lora/base"][4]

    assert added_cell().startswith("✗") and "needs cuda: nothing here can re-run it" in added_cell()
    sign_file(forged, "stranger")
    assert added_cell().startswith("✗")
    signature_path(forged).unlink()
    sign_file(forged)
    assert added_cell() == f"✓ {forged.name}: signed by {TESTER}"
    # A change that lists its own key is flagged, and its key does not count in this very check.
    signature_path(forged).unlink()
    sign_file(forged, "stranger")
    trust(Path("submissions"), "me@example.com", "stranger")
    out = cli("ci", "--changed-since", "HEAD", "--no-verify")[1]
    assert "| verifiers/allowed\\_signers | ✗ changes who may vouch" in out
    assert summary_rows(out)["arithmetic/lora/base"][4].startswith("✗")
    assert throwaway_key().exists()


def test_bad_ref_is_one_line_exit_2(repo: git.Repo) -> None:
    code, out, err = cli("ci", "--changed-since", "no-such-ref")
    assert code == 2 and "no such commit" in err and "Traceback" not in out + err


def test_the_workflow_runs_the_same_command() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "submission.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    commands = "\n".join(s.get("run", "") for s in steps)
    assert "peftrepro ci --changed-since" in commands and "GITHUB_STEP_SUMMARY" in commands
    assert workflow[True]["pull_request"]["paths"] == ["submissions/**"]  # YAML 1.1 reads `on:` as True


def test_a_published_claim_is_append_only_like_a_record(tmp_path: Path) -> None:
    """policy_problems: a claim under claims/ that a change edits, deletes or renames is refused;
    one it adds is not."""
    from peftrepro.ci import policy_problems
    from peftrepro.collect import Submission

    folder = tmp_path / "submissions" / "metamathqa" / "lora" / "r32"
    sub = Submission(folder, ("metamathqa", "lora", "r32"))
    claim = folder / "claims" / "lora--r32-0123456789ab.json"
    for kind in "MDR":
        assert policy_problems(sub, {claim: kind}, []) == [
            "records are append-only: claims/lora--r32-0123456789ab.json was changed"
        ]
    assert policy_problems(sub, {claim: "A"}, []) == []
    # ... and so is a verification of one (verifications/published/)
    v = folder / "verifications" / "published" / "20261202T100000Z-published-abcdef.json"
    assert policy_problems(sub, {v: "M"}, []) == [
        "records are append-only: verifications/published/20261202T100000Z-published-abcdef.json was changed"
    ]
    assert policy_problems(sub, {v: "A"}, []) == []
