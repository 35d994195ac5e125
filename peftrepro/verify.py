"""`peftrepro verify`: re-run a submission's claimed records and judge them.

For each submission: the claims are the newest `success` record per seed of the current manifest
(collect.py). One seed is re-run (chosen at random, so a contributor cannot know which seed will be
checked), or each of them with `all_seeds`, through the same runner kind as the claim. The re-run
record is judged against the claim (compare.py) and both go into `verifications/<id>.json`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from peftrepro import __version__, schemas
from peftrepro.collect import VERIFICATIONS_DIR, Submission, load_submission
from peftrepro.compare import Judgement, judge
from peftrepro.errors import RecordError, UsageError
from peftrepro.executors import Executor, Job, JobResult
from peftrepro.jsonio import pretty_bytes, write_new_file
from peftrepro.manifest import MANIFEST_FILE, find_manifests
from peftrepro.metrics import VerificationPolicy
from peftrepro.records import new_run_id, timestamp, utc_now
from peftrepro.tasks import get_task

VERIFICATION_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Verification:
    submission: str
    seed: int
    claim_path: Path
    judgement: Judgement | None  # None when the re-run was cancelled or refused: nothing written
    path: Path | None
    error: str | None = None  # the re-run was refused before it ran (one line)


def changes_since(root: Path, ref: str) -> dict[Path, str]:
    """Files under `root` changed since git `ref` (committed, staged, unstaged or untracked), as
    {path under root: git change letter}: A added, M modified, D deleted, R renamed (both ends)."""
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        commit = repo.commit(ref)
        changed = {p: (d.change_type or "M")[0] for d in commit.diff(None) for p in (d.a_path, d.b_path) if p}
        changed.update((p, "A") for p in repo.untracked_files)
    except git.InvalidGitRepositoryError:
        raise UsageError(f"{root}: not inside a git repository; --changed-since needs one") from None
    except (git.BadName, git.GitCommandError, ValueError):
        raise UsageError(f"--changed-since {ref}: no such commit in this repository") from None
    base = Path(repo.working_dir).resolve()
    prefix = root.resolve().relative_to(base).parts if root.resolve() != base else ()
    out = {}
    for p, kind in changed.items():
        parts = Path(p).parts
        if parts[: len(prefix)] == prefix and len(parts) > len(prefix):
            out[root.joinpath(*parts[len(prefix) :])] = kind
    return out


def changed_submissions(root: Path, ref: str, changes: dict[Path, str] | None = None) -> list[Path]:
    """Submission folders under `root` with any file changed since git `ref`, that still have a
    manifest."""
    changes = changes_since(root, ref) if changes is None else changes
    folders = set()
    for p in changes:
        parts = p.relative_to(root).parts
        if len(parts) > 3 and (root.joinpath(*parts[:3]) / MANIFEST_FILE).is_file():
            folders.add(root.joinpath(*parts[:3]))
    return sorted(folders)


def select(paths: Iterable[Path]) -> list[Submission]:
    """Load the named submissions; a path that is not a usable submission is bad input."""
    subs = []
    for manifest in find_manifests(paths):
        sub = load_submission(manifest.parent)
        if sub.problem:
            raise UsageError(sub.problem)
        subs.append(sub)
    return subs


def seeds_to_check(sub: Submission, *, all_seeds: bool, seed: int | None) -> list[int]:
    if seed is not None:
        if seed not in sub.claims:
            have = ", ".join(map(str, sorted(sub.claims))) or "none"
            raise UsageError(
                f"{sub.label}: no success record for seed {seed} of the current manifest (seeds: {have})"
            )
        return [seed]
    seeds = sorted(sub.claims)
    return seeds if all_seeds else [secrets.choice(seeds)]


def claim_job(sub: Submission, seed: int, runner: str | None, options: dict[str, Any] | None) -> Job:
    """The re-run of one claimed seed, as a job. The runner kind is the claim's unless `runner`
    says otherwise; a docker claim is re-run in the image it names (by repo digest when it has one)."""
    assert sub.manifest is not None
    env = sub.claims[seed].data["environment"]
    kind = runner or env.get("runner", "local")
    opts = dict(options or {})
    container = env.get("container") or {}
    if kind == "docker" and not opts.get("image") and container:
        digest = container.get("repo_digest")
        opts["image"] = digest if digest and digest != "unpinned" else container.get("image")
    return Job.for_manifest(sub.manifest, seed=seed, runner=kind, runner_options=opts)


def judge_rerun(sub: Submission, seed: int, result: JobResult, started: datetime) -> Verification:
    """Judge a re-run against its claim and write the verification next to the submission's records."""
    assert sub.manifest is not None
    claim = sub.claims[seed]
    if result.status == "refused":
        return Verification(sub.label, seed, claim.path, None, None, error=result.error)
    if result.status == "cancelled" or result.record is None:
        return Verification(sub.label, seed, claim.path, None, None)
    policy = get_task(sub.manifest.task).verification
    judgement = judge(claim.data, result.record, policy)
    record = build_verification(claim.data, claim.sha256, result.record, judgement, policy, started)
    path = sub.folder / VERIFICATIONS_DIR / f"{record['verification_id']}.json"
    schemas.check(record, schemas.VERIFICATION, str(path), RecordError)
    write_new_file(path, pretty_bytes(record))
    return Verification(sub.label, seed, claim.path, judgement, path)


def verify_claim(sub: Submission, seed: int) -> Verification:
    """Re-run one claimed seed here (a fresh process) and write its verification."""
    [v] = verify_all([sub], all_seeds=False, seed=seed, runner=None)
    if v.error is not None:
        raise UsageError(v.error)
    return v


def build_verification(
    claim: dict[str, Any],
    claim_sha256: str,
    rerun: dict[str, Any],
    judgement: Judgement,
    policy: VerificationPolicy,
    started: datetime,
) -> dict[str, Any]:
    return {
        "schema_version": VERIFICATION_SCHEMA_VERSION,
        "verification_id": new_run_id(claim["seed"], started),
        "toolkit": {"name": "peftrepro", "version": __version__},
        "submission": claim["submission"],
        "claim": {"run_id": claim["run_id"], "seed": claim["seed"], "record_sha256": claim_sha256},
        "rerun": rerun,
        "policy": {
            "bit_exact": policy.bit_exact,
            "score_band": policy.score_band,
            "relative_band": policy.relative_band,
            "nondeterministic": list(policy.nondeterministic),
        },
        **judgement.as_json(),
        "started_at": timestamp(started),
        "finished_at": timestamp(utc_now()),
    }


def verify_all(
    subs: list[Submission],
    *,
    all_seeds: bool,
    seed: int | None,
    runner: str | None,
    options: dict[str, Any] | None = None,
    executor: Executor | None = None,
    on_start: Callable[[Submission, int, Path, str], None] = lambda sub, s, claim, where: None,
    on_done: Callable[[Verification], None] = lambda v: None,
) -> list[Verification]:
    """Re-run the chosen seeds of each submission on `executor` (default: here, one at a time) and
    judge each re-run as it comes back. A signal stops the batch: a re-run that never came back is
    returned unjudged, as a cancelled one is."""
    from peftrepro.executors.local import LocalExecutor

    plan = {}
    for sub in subs:
        for s in seeds_to_check(sub, all_seeds=all_seeds, seed=seed):
            job = claim_job(sub, s, runner, options)
            plan[job.key] = (sub, s, job)
    started: dict[str, datetime] = {}
    results = []
    returned: set[str] = set()

    def begin(job: Job, where: str) -> None:
        sub, s, _ = plan[job.key]
        started[job.key] = utc_now()
        on_start(sub, s, sub.claims[s].path, where)

    def done(result: JobResult) -> None:
        sub, s, _ = plan[result.job.key]
        v = judge_rerun(sub, s, result, started.get(result.job.key, utc_now()))
        returned.add(result.job.key)
        results.append(v)
        on_done(v)

    (executor or LocalExecutor(1)).map([job for _, _, job in plan.values()], begin, done)
    for key, (sub, s, _) in plan.items():  # stopped before it started: nothing judged, nothing written
        if key not in returned:
            results.append(Verification(sub.label, s, sub.claims[s].path, None, None))
    return results


def _cell(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "..."  # a sha256
    if isinstance(value, list):
        return f"[{len(value)} points]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{...}"
    return "-" if value is None else str(value)


def report(v: Verification) -> str:
    """The human-readable verdict for one claim: every metric, the environment diff, the verdict."""
    from tabulate import tabulate

    if v.judgement is None:
        return "  re-run cancelled: nothing judged, nothing written"
    rows = [
        [
            c.metric,
            c.tolerance,
            _cell(c.claimed),
            _cell(c.measured),
            f"{c.outcome} ({c.detail})" if c.detail else c.outcome,
        ]
        for c in v.judgement.comparisons
    ]
    lines = []
    if rows:
        table = tabulate(
            rows, headers=["metric", "tolerance", "claimed", "measured", "result"], disable_numparse=True
        )
        lines += ["  " + line for line in table.splitlines()]
    diff = v.judgement.environment_diff
    if diff:
        lines.append(f"  environment: {len(diff)} field(s) differ from the claim's:")
        lines += [f"    {d['field']}: {d['claimed']} -> {d['measured']}" for d in diff[:20]]
        if len(diff) > 20:
            lines.append(f"    ... and {len(diff) - 20} more (see the verification file)")
    else:
        lines.append("  environment: identical to the claim's")
    lines += [f"  reason: {r}" for r in v.judgement.reasons]
    lines.append(f"  verdict: {v.judgement.verdict.upper()} -> {v.path}")
    return "\n".join(lines)
