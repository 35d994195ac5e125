"""`peftrepro ci --changed-since REF`: what the pull-request check runs, as one local command.

For each submission with a file changed since REF:
  policy    the rules of CONTRIBUTING.md a schema cannot express: submissions and records are never
            edited (a change is a new submission that `supersedes` the old), no placeholder text,
            the task's training budget unchanged, no near-duplicate of another submission;
  validate  schema, policy, attach to the task's model, structural checks (`validate --deep`);
  smoke     a few training steps of the submission on the CPU (records go to a temporary folder);
  verify    for CPU-track submissions that carry records: re-run one claimed seed (`verify`).
And `leaderboard --check`, first (the verifications written change the pages: commit them with a
regenerated leaderboard). Writes a Markdown summary; exit 0 when every step passed, else 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peftrepro.collect import Submission, load_tree
from peftrepro.console import Echo
from peftrepro.errors import PeftreproError, UsageError
from peftrepro.leaderboard import md
from peftrepro.manifest import MANIFEST_FILE, ResolvedManifest
from peftrepro.pages import differences, render
from peftrepro.records import RUNS_DIR, VERIFICATIONS_DIR
from peftrepro.runners.local import run_local
from peftrepro.scaffold import PLACEHOLDER
from peftrepro.sweep import swept_config_sha256
from peftrepro.tasks import get_task
from peftrepro.validate import validate_one
from peftrepro.verify import changed_submissions, changes_since, verify_claim

PASS, FAIL, SKIP = "✓", "✗", "–"
STEPS = ("policy", "validate", "smoke", "verify")
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
        in_records = path.parent.parent == sub.folder and path.parent.name in (RUNS_DIR, VERIFICATIONS_DIR)
        if in_records and kind in "MDR":
            problems.append(f"records are append-only: {path.parent.name}/{path.name} was changed")
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


def smoke(manifest: ResolvedManifest, steps: int = SMOKE_STEPS) -> Outcome:
    """A few training steps here; the record is looked at, never written."""
    short = dataclasses.replace(
        manifest, training=dataclasses.replace(manifest.training, max_steps=steps, eval_steps=steps)
    )
    record = run_local(short, seed=0, progress=False).record
    if record.status != "success":
        return Outcome(FAIL, f"{record.status}: {record.error.message if record.error else ''}")
    return Outcome(PASS, f"{steps} steps, loss {record.metrics['train_loss_final']:.3f}")


def run_ci(
    root: Path,
    ref: str,
    leaderboard_dir: Path,
    *,
    smoke_steps: int = SMOKE_STEPS,
    verify: bool = True,
    echo: Callable[[str], None] = lambda _: None,
) -> Report:
    changes = changes_since(root, ref)
    others, _ = load_tree(root)
    report = Report(ref)
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
        if task.accelerator != "cpu":
            row["smoke"] = row["verify"] = Outcome(SKIP, f"needs {task.accelerator}")
            continue
        echo(f"{label}: smoke run, {smoke_steps} steps")
        try:
            row["smoke"] = smoke(checked.manifest, smoke_steps)
        except PeftreproError as e:
            row["smoke"] = Outcome(FAIL, e.message)
        if not sub.claims:
            row["verify"] = Outcome(SKIP, "no records")
        elif verify:
            seed = min(sub.claims)
            echo(f"{label}: verify seed {seed}")
            v = verify_claim(sub, seed)
            if v.judgement is None:
                row["verify"] = Outcome(FAIL, "the re-run was cancelled")
            else:
                verdict = v.judgement.verdict
                row["verify"] = Outcome(PASS if verdict == "reproduced" else FAIL, f"seed {seed}: {verdict}")
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
) -> int:
    """`peftrepro ci`: run the checks, print (and optionally write) the Markdown summary."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    report = run_ci(root, ref, leaderboard_dir, smoke_steps=smoke_steps, verify=verify, echo=echo.err)
    text = report.markdown()
    if summary is not None:
        summary.write_text(text)
    echo.out(text.removesuffix("\n"))
    return 0 if report.ok else 1
