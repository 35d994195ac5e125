"""`peftrepro ci --changed-since REF`: what the pull-request check runs, as one local command.

For each submission with a file changed since REF:
  policy    the rules of CONTRIBUTING.md a schema cannot express: submissions and records are never
            edited (a change is a new submission that `supersedes` the old), no placeholder text,
            the task's training budget unchanged, no near-duplicate of another submission;
  validate  schema, policy, attach to the task's model, structural checks (`validate --deep`);
  smoke     a few training steps of the submission on the CPU (records go to a temporary folder);
  verify    for CPU-track submissions that carry records: re-run one claimed seed, drawn from the
            commit being checked (in CI, the merge commit GitHub makes: no contributor can know it
            when they push), so every seed must be honest;
  added     each verification the change adds: signed by a verifier listed in the *base* ref's
            verifiers/allowed_signers, or (CPU tracks) re-run here and matched; a GPU-track
            verification without such a signature fails: nothing here can re-run it.
And `leaderboard --check`, first (the verifications written change the pages: commit them with a
regenerated leaderboard). A change to verifiers/allowed_signers fails: a maintainer reviews who is
trusted. Writes a Markdown summary; exit 0 when every step passed, else 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peftrepro.collect import StoredVerification, Submission, load_tree
from peftrepro.compare import REPRODUCED, judge
from peftrepro.console import Echo
from peftrepro.errors import PeftreproError, UsageError
from peftrepro.jsonio import read_json
from peftrepro.leaderboard import md
from peftrepro.manifest import MANIFEST_FILE, ResolvedManifest
from peftrepro.pages import differences, render
from peftrepro.records import (
    CLAIMS_DIR,
    PUBLISHED_VERIFICATIONS_DIR,
    RUNS_DIR,
    VERIFICATIONS_DIR,
    parse_verification,
)
from peftrepro.runners.local import run_local
from peftrepro.scaffold import PLACEHOLDER
from peftrepro.signing import SIGNERS_FILE, check, signature_path, signers_file
from peftrepro.sweep import swept_config_sha256
from peftrepro.tasks import get_task
from peftrepro.validate import validate_one
from peftrepro.verify import (
    Verification,
    changed_submissions,
    changes_since,
    file_at,
    head_commit,
    verify_claim,
)

PASS, FAIL, SKIP = "✓", "✗", "–"
STEPS = ("policy", "validate", "smoke", "verify", "added")
SMOKE_STEPS = 2


@dataclass
class Outcome:
    mark: str
    detail: str = ""


@dataclass
class Report:
    ref: str
    rows: dict[str, dict[str, Outcome]] = field(default_factory=dict)
    leaderboard: Outcome = field(default_factory=lambda: Outcome(SKIP))

    @property
    def ok(self) -> bool:
        marks = [o.mark for r in self.rows.values() for o in r.values()] + [self.leaderboard.mark]
        return FAIL not in marks

    def markdown(self) -> str:
        lines = [f"# peftrepro ci: submissions changed since `{md(self.ref)}`", ""]
        if not self.rows:
            lines += ["No submission changed.", ""]
        else:
            lines += ["| submission | " + " | ".join(STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
            for label, row in self.rows.items():
                cells = [f"{row[s].mark} {md(row[s].detail, 120)}".strip() for s in STEPS]
                lines.append(f"| {md(label)} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"Leaderboard: {self.leaderboard.mark} {md(self.leaderboard.detail)}", ""]
        problems = [
            f"- {md(label)} · {step}: {md(o.detail, 600)}"
            for label, row in self.rows.items()
            for step, o in row.items()
            if o.mark == FAIL
        ]
        if problems:
            lines += ["Problems:", "", *problems, ""]
        lines.append("Result: " + ("every check passed" if self.ok else "some checks failed") + ".")
        return "\n".join(lines) + "\n"


def policy_problems(sub: Submission, changes: dict[Path, str], others: list[Submission]) -> list[str]:
    """The CONTRIBUTING.md rules for one changed submission (empty when it keeps them)."""
    problems = []
    for path, kind in sorted(changes.items()):
        if path.parent == sub.folder and path.name == MANIFEST_FILE and kind in "MDR":
            problems.append(
                "edits an existing submission's manifest; add a new submission that names this one "
                "in `supersedes` instead"
            )
        in_records = (
            path.parent.parent == sub.folder and path.parent.name in (RUNS_DIR, VERIFICATIONS_DIR, CLAIMS_DIR)
        ) or path.parent == sub.folder / VERIFICATIONS_DIR / PUBLISHED_VERIFICATIONS_DIR
        if in_records and kind in "MDR":
            where = path.relative_to(sub.folder)
            problems.append(f"records are append-only: {where} was changed")
    m = sub.manifest
    if m is None:
        return problems
    raw = m.raw
    for key in ("title", "description"):
        if PLACEHOLDER in str(raw.get(key, "")):
            problems.append(f"{key} still says {PLACEHOLDER!r}")
    if any(PLACEHOLDER in str(a) for a in raw.get("authors", [])):
        problems.append(f"authors still say {PLACEHOLDER!r}")
    task = get_task(m.task)
    for key in task.fixed_training:
        if key in raw.get("training", {}) and raw["training"][key] != task.training_defaults[key]:
            problems.append(
                f"training.{key} = {raw['training'][key]} changes the task's budget "
                f"({task.training_defaults[key]}); every submission of {m.task} trains on the same budget"
            )
    mine = swept_config_sha256(m.resolved_config())
    for other in others:
        same_task = other.folder != sub.folder and other.manifest is not None and other.key[0] == m.task
        if same_task and swept_config_sha256(other.manifest.resolved_config()) == mine:  # type: ignore[union-attr]
            problems.append(
                f"the same config as {other.name_in_task} up to the learning rate: "
                "tune the rate with `peftrepro sweep` instead of adding a near-duplicate"
            )
    return problems


def draw_seed(seeds: list[int], label: str, nonce: str) -> int:
    """The claimed seed CI re-runs: a function of the commit checked (`nonce`) and the submission,
    so anyone can recompute the choice afterwards, and no contributor can aim it beforehand."""
    ordered = sorted(seeds)
    digest = hashlib.sha256(f"{nonce}\0{label}".encode()).digest()
    return ordered[int.from_bytes(digest[:8], "big") % len(ordered)]


def added_verifications(sub: Submission, changes: dict[Path, str]) -> list[Path]:
    """The verification files (or signatures of existing ones) a change adds to `sub`."""
    found = set()
    for path, kind in changes.items():
        if path.parent == sub.folder / VERIFICATIONS_DIR and kind == "A":
            name = path.name.removesuffix(".sig")
            if name.endswith(".json"):
                found.add(path.with_name(name))
    return sorted(found)


def smoke(manifest: ResolvedManifest, steps: int = SMOKE_STEPS) -> Outcome:
    """A few training steps here; the record is looked at, never written."""
    short = dataclasses.replace(
        manifest, training=dataclasses.replace(manifest.training, max_steps=steps, eval_steps=steps)
    )
    record = run_local(short, seed=0, progress=False).record
    if record.status != "success":
        return Outcome(FAIL, f"{record.status}: {record.error.message if record.error else ''}")
    return Outcome(PASS, f"{steps} steps, loss {record.metrics['train_loss_final']:.3f}")


def judge_added(
    sub: Submission,
    added: list[Path],
    base_signers: Path,
    reruns: dict[int, Verification],
) -> Outcome:
    """The added verifications of one submission: each must count for something we trust."""
    by_path = {v.path: v for v in sub.verifications.values()}
    ignored = dict(sub.ignored)
    problems, fine = [], []
    for path in added:
        stored = by_path.get(path)
        if stored is None:
            if path in ignored:
                problems.append(f"{path.name}: {ignored[path]}")
            else:
                fine.append(f"{path.name}: verifies an older record (not shown)")
            continue
        signed = _signed_by_base(stored, base_signers)
        if signed is not None:
            fine.append(f"{path.name}: signed by {signed}")
            continue
        seed = stored.verification.claim.seed
        ours = reruns.get(seed)
        if ours is None or ours.judgement is None or ours.path is None:
            assert sub.manifest is not None
            accelerator = get_task(sub.manifest.task).accelerator
            why = (
                f"needs {accelerator}: nothing here can re-run it, so it needs a signature by a verifier "
                f"listed in {SIGNERS_FILE} of the base ref"
                if accelerator != "cpu"
                else "was not re-run here (--no-verify)"
            )
            problems.append(f"{path.name}: unsigned and {why}")
            continue
        mismatch = _mismatch(stored, ours, sub)
        if mismatch:
            problems.append(f"{path.name}: its re-run does not match a re-run here: {mismatch}")
        else:
            fine.append(f"{path.name}: matches a re-run here (seed {seed})")
    if problems:
        return Outcome(FAIL, "; ".join(problems))
    return Outcome(PASS, "; ".join(fine))


def _signed_by_base(stored: StoredVerification, base_signers: Path) -> str | None:
    sig = signature_path(stored.path)
    if not sig.is_file() or sig.is_symlink():
        return None
    return check(stored.path.read_bytes(), sig.read_bytes(), base_signers).signer


def _mismatch(stored: StoredVerification, ours: Verification, sub: Submission) -> str:
    """Why a contributor's verification disagrees with our re-run of the same claim ("" if it agrees):
    its re-run must reproduce ours under the task's policy, and its verdict must be ours."""
    assert sub.manifest is not None and ours.judgement is not None and ours.path is not None
    theirs = stored.verification
    ours_record = parse_verification(read_json(ours.path), str(ours.path)).rerun
    same = judge(ours_record, theirs.rerun, get_task(sub.manifest.task).verification)
    if same.verdict != REPRODUCED:
        return "; ".join(same.reasons) or same.verdict
    if theirs.verdict != ours.judgement.verdict:
        return f"it says {theirs.verdict}, the re-run here says {ours.judgement.verdict}"
    return ""


def run_ci(
    root: Path,
    ref: str,
    leaderboard_dir: Path,
    *,
    smoke_steps: int = SMOKE_STEPS,
    verify: bool = True,
    echo: Callable[[str], None] = lambda _: None,
    sign_with: Path | None = None,
) -> Report:
    changes = changes_since(root, ref)
    others, _ = load_tree(root)
    report = Report(ref)
    nonce = head_commit(root)
    signers = signers_file(root)
    base_trust = file_at(root, ref, signers) or b""
    if base_trust != (signers.read_bytes() if signers.is_file() else b""):
        report.rows[SIGNERS_FILE.as_posix()] = {s: Outcome(SKIP) for s in STEPS}
        report.rows[SIGNERS_FILE.as_posix()]["policy"] = Outcome(
            FAIL, "changes who may vouch for re-runs: a maintainer reviews every key added or removed"
        )
    # Signatures in the change are checked against the verifiers trusted *before* it.
    base_signers_dir = tempfile.TemporaryDirectory(prefix="peftrepro-ci-")
    base_signers = Path(base_signers_dir.name) / "allowed_signers"
    base_signers.write_bytes(base_trust)
    # Checked first, on the tree as committed: the verifications written below change the pages.
    files, _ = render(root, leaderboard_dir)
    stale = differences(leaderboard_dir, files)
    report.leaderboard = (
        Outcome(FAIL, f"out of date ({', '.join(stale)}); run `peftrepro leaderboard` and commit it")
        if stale
        else Outcome(PASS, "up to date")
    )
    for path, kind in sorted(changes.items()):
        if path.name == MANIFEST_FILE and kind == "D" and not path.exists():
            label = "/".join(path.relative_to(root).parts[:3])
            report.rows[label] = {s: Outcome(SKIP) for s in STEPS}
            report.rows[label]["policy"] = Outcome(
                FAIL, "deletes a submission; submissions are superseded (`supersedes`), never removed"
            )
    read = {s.folder: s for s in others}  # the tree is read once; load_tree never enters a linked folder
    for folder in changed_submissions(root, ref, changes):
        label = "/".join(folder.relative_to(root).parts)
        row = {s: Outcome(SKIP) for s in STEPS}
        report.rows[label] = row
        sub = read.get(folder)
        if sub is None:
            row["policy"] = Outcome(FAIL, "is or lies under a symbolic link: never read")
            continue
        mine = {p: k for p, k in changes.items() if folder in p.parents}
        problems = policy_problems(sub, mine, others)
        row["policy"] = Outcome(FAIL, "; ".join(problems)) if problems else Outcome(PASS)
        echo(f"{label}: validate --deep")
        checked = validate_one(folder / MANIFEST_FILE, deep=True)
        if checked.error is not None or checked.manifest is None:
            row["validate"] = Outcome(FAIL, checked.error.message if checked.error else "does not resolve")
            continue
        row["validate"] = Outcome(PASS, f"{checked.trainable_params:,} trainable")
        task = get_task(checked.manifest.task)
        added = added_verifications(sub, mine)
        if task.accelerator != "cpu":
            row["smoke"] = row["verify"] = Outcome(SKIP, f"needs {task.accelerator}")
            if added:
                row["added"] = judge_added(sub, added, base_signers, {})
            continue
        echo(f"{label}: smoke run, {smoke_steps} steps")
        try:
            row["smoke"] = smoke(checked.manifest, smoke_steps)
        except PeftreproError as e:
            row["smoke"] = Outcome(FAIL, e.message)
        reruns: dict[int, Verification] = {}
        if not sub.claims:
            row["verify"] = Outcome(SKIP, "no records")
        elif verify:
            seed = draw_seed(list(sub.claims), label, nonce)
            wanted = {v.verification.claim.seed for v in sub.verifications.values() if v.path in added}
            for s in sorted(wanted | {seed}):
                echo(f"{label}: verify seed {s}")
                reruns[s] = verify_claim(sub, s, sign_with)
            v = reruns[seed]
            drawn = f"seed {seed} (drawn from {nonce[:12]})"
            if v.judgement is None:
                row["verify"] = Outcome(FAIL, f"{drawn}: the re-run was cancelled")
            else:
                verdict = v.judgement.verdict
                row["verify"] = Outcome(PASS if verdict == REPRODUCED else FAIL, f"{drawn}: {verdict}")
        if added:
            row["added"] = judge_added(sub, added, base_signers, reruns)
    base_signers_dir.cleanup()
    return report


def ci_command(
    root: Path,
    ref: str,
    leaderboard_dir: Path,
    summary: Path | None,
    *,
    smoke_steps: int,
    verify: bool,
    echo: Echo,
    sign_with: Path | None = None,
) -> int:
    """`peftrepro ci`: run the checks, print (and optionally write) the Markdown summary."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    report = run_ci(
        root, ref, leaderboard_dir, smoke_steps=smoke_steps, verify=verify, echo=echo.err, sign_with=sign_with
    )
    text = report.markdown()
    if summary is not None:
        summary.write_text(text)
    echo.out(text.removesuffix("\n"))
    return 0 if report.ok else 1
