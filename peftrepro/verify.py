"""`peftrepro verify`: re-run a submission's claimed records and judge them.

For each submission: the claims are the newest `success` record per seed of the current manifest
(collect.py). One seed is re-run (chosen at random, so a contributor cannot know which seed will be
checked), or each of them with `all_seeds`, through the same runner kind as the claim. The re-run
record is judged against the claim (compare.py) and both go into `verifications/<id>.json`.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tabulate import tabulate

from peftrepro.collect import Submission, load_submission
from peftrepro.compare import REPRODUCED, VERDICTS, Judgement, judge, judge_published
from peftrepro.console import Echo
from peftrepro.environment import job_start
from peftrepro.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, UsageError
from peftrepro.executors import Executor, Job, JobResult
from peftrepro.executors.batch import ExecutorChoice, land, severity, summary_line
from peftrepro.executors.local import LocalExecutor
from peftrepro.job import preflight
from peftrepro.jsonio import JSONReadError, read_json
from peftrepro.manifest import MANIFEST_FILE, find_manifests
from peftrepro.metrics import VerificationPolicy
from peftrepro.records import (
    PUBLISHED_VERIFICATIONS_DIR,
    RUNS_DIR,
    VERIFICATIONS_DIR,
    ClaimRef,
    PublishedRef,
    PublishedVerificationRecord,
    RunRecord,
    VerificationRecord,
    folder_problem,
    new_published_verification_id,
    new_run_id,
    parse_published_verification,
    parse_verification,
    timestamp,
    utc_now,
    write_published_verification,
    write_verification,
)
from peftrepro.signing import sign, signature_path
from peftrepro.tasks import get_task


@dataclass(frozen=True)
class Verification:
    submission: str
    seed: int
    claim_path: Path
    judgement: Judgement | None  # None when the re-run was cancelled or refused: nothing written
    path: Path | None
    error: str | None = None  # the re-run was refused before it ran (one line)
    signature: Path | None = None  # <path>.sig, when signed (--sign-with)


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


def _repo(root: Path) -> Any:
    import git

    try:
        return git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(f"{root}: not inside a git repository") from None


def head_commit(root: Path) -> str:
    """The commit checked out at `root` (in CI: the pull request's merge commit)."""
    return str(_repo(root).head.commit.hexsha)


def file_at(root: Path, ref: str, path: Path) -> bytes | None:
    """The bytes of `path` (a file of the repository holding `root`) at git `ref`; None if absent."""
    import git

    repo = _repo(root)
    rel = path.resolve().relative_to(Path(repo.working_dir).resolve()).as_posix()
    try:
        blob = repo.commit(ref).tree / rel
    except (KeyError, git.BadName, ValueError):
        return None
    return bytes(blob.data_stream.read())


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
    env = sub.claims[seed].record.environment
    kind = runner or env.get("runner", "local")
    opts = dict(options or {})
    container = env.get("container") or {}
    if kind == "docker" and not opts.get("image") and container:
        digest = container.get("repo_digest")
        opts["image"] = digest if digest and digest != "unpinned" else container.get("image")
    job = Job.for_manifest(sub.manifest, seed=seed, runner=kind, runner_options=opts)
    # A reused base figure is still a checked one; the process starts as the claim's did.
    return dataclasses.replace(job, fresh_base=True, start=job_start(env))


def judge_rerun(
    sub: Submission, seed: int, result: JobResult, started: datetime, sign_with: Path | None = None
) -> Verification:
    """Judge a re-run against its claim and write the verification next to the submission's records;
    with `sign_with` (an SSH key), sign it (signing.py) so that it counts on the leaderboard."""
    assert sub.manifest is not None
    claim = sub.claims[seed]
    if result.status == "refused":
        return Verification(sub.label, seed, claim.path, None, None, error=result.error)
    if result.status == "cancelled" or result.run is None:
        return Verification(sub.label, seed, claim.path, None, None)
    policy = get_task(sub.manifest.task).verification
    rerun = result.run.record
    judgement = judge(claim.record, rerun, policy)
    record = build_verification(claim.record, claim.sha256, rerun, judgement, policy, started)
    path = write_verification(sub.folder, record)
    signature = sign(path, sign_with) if sign_with is not None else None
    return Verification(sub.label, seed, claim.path, judgement, path, signature=signature)


def verify_claim(sub: Submission, seed: int, sign_with: Path | None = None) -> Verification:
    """Re-run one claimed seed here (a fresh process) and write its verification."""
    [v] = verify_all([sub], all_seeds=False, seed=seed, runner=None, sign_with=sign_with)
    if v.error is not None:
        raise UsageError(v.error)
    return v


def build_verification(
    claim: RunRecord,
    claim_sha256: str,
    rerun: RunRecord,
    judgement: Judgement,
    policy: VerificationPolicy,
    started: datetime,
) -> VerificationRecord:
    verdict = judgement.as_json()
    return VerificationRecord(
        verification_id=new_run_id(claim.seed, started),
        submission=claim.submission,
        claim=ClaimRef(claim.run_id, claim.seed, claim_sha256),
        rerun=rerun,
        policy=_policy_json(policy),
        verdict=verdict["verdict"],
        comparisons=verdict["comparisons"],
        environment_diff=verdict["environment_diff"],
        reasons=verdict["reasons"],
        started_at=timestamp(started),
        finished_at=timestamp(utc_now()),
    )


def _policy_json(policy: VerificationPolicy) -> dict[str, Any]:
    return {
        "bit_exact": policy.bit_exact,
        "score_band": policy.score_band,
        "relative_band": policy.relative_band,
        "nondeterministic": list(policy.nondeterministic),
    }


def verify_all(
    subs: list[Submission],
    *,
    all_seeds: bool,
    seed: int | None,
    runner: str | None,
    options: dict[str, Any] | None = None,
    executor: Executor | None = None,
    sign_with: Path | None = None,
    on_start: Callable[[Submission, int, Path, str], None] = lambda sub, s, claim, where: None,
    on_done: Callable[[Verification], None] = lambda v: None,
) -> list[Verification]:
    """Re-run the chosen seeds of each submission on `executor` (default: here, one at a time) and
    judge each re-run as it comes back. A signal stops the batch: a re-run that never came back is
    returned unjudged, as a cancelled one is."""
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
        v = judge_rerun(sub, s, result, started.get(result.job.key, utc_now()), sign_with)
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
    lines.append(
        f"  signed: {v.signature}"
        if v.signature
        else "  unsigned: it counts on the leaderboard once a verifier listed in "
        "verifiers/allowed_signers signs it (`peftrepro sign`)"
    )
    return "\n".join(lines)


def verify_submissions(
    paths: tuple[Path, ...],
    *,
    all_: bool,
    changed_since: str | None,
    all_seeds: bool,
    seed: int | None,
    root: Path,
    runner: str | None,
    runner_options: dict[str, Any],
    executor: ExecutorChoice,
    echo: Echo,
    sign_with: Path | None = None,
) -> int:
    """`peftrepro verify`: choose the submissions and seeds, re-run them, judge, write, report.
    Exit 0 when every claim checked was reproduced, 1 when any was not, 2 on bad input."""
    if seed is not None and all_seeds:
        raise UsageError("give --seed or --all-seeds, not both")
    if bool(paths) + all_ + (changed_since is not None) != 1:
        raise UsageError("name submissions (PATH...), or give --all or --changed-since GIT_REF")
    if sign_with is not None and not sign_with.is_file():
        raise UsageError(f"--sign-with {sign_with}: no such key file")
    subs = _chosen(paths, changed_since, root, echo)
    for sub in subs:  # refused before any re-run
        if problem := folder_problem(sub.folder / VERIFICATIONS_DIR):
            raise UsageError(problem)
    if not subs:
        echo.out("nothing to verify")
        return 0

    published = [sub for sub in subs if sub.published] if paths else []
    for sub in published:  # a GPU track on a machine without one: refused before any run
        assert sub.manifest is not None
        preflight(sub.manifest)
        if problem := folder_problem(sub.folder / VERIFICATIONS_DIR / PUBLISHED_VERIFICATIONS_DIR):
            raise UsageError(problem)
    subs = [sub for sub in subs if sub.claims]

    def start(sub: Submission, s: int, claim: Path, where: str) -> None:
        echo.err(f"{sub.label} seed {s}: re-running the claim {claim}{executor.where(where)}")

    def done(v: Verification) -> None:
        if v.error is not None:
            echo.err(f"error: {v.error}")
            return
        echo.out(f"{v.submission} seed {v.seed}:")
        echo.out(report(v))

    published_codes = (
        verify_published(
            published,
            seed=seed,
            runner=runner,
            options=runner_options,
            executor=executor,
            echo=echo,
            sign_with=sign_with,
        )
        if published
        else []
    )
    if not subs:
        return max(published_codes, key=severity, default=0)
    results = verify_all(
        subs,
        all_seeds=all_seeds,
        seed=seed,
        runner=runner,
        options=runner_options,
        executor=executor.make(),
        sign_with=sign_with,
        on_start=start,
        on_done=done,
    )
    counts = {k: sum(v.judgement is not None and v.judgement.verdict == k for v in results) for k in VERDICTS}
    echo.out("verified " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    codes = list(published_codes)
    if any(v.error is not None for v in results):
        codes.append(EXIT_BAD_INPUT)
    if any(v.judgement is None for v in results):
        codes.append(EXIT_CANCELLED)
    codes.append(0 if counts["reproduced"] == len(results) else 1)
    return max(codes, key=severity)


def verify_published(
    subs: list[Submission],
    *,
    seed: int | None,
    runner: str | None,
    options: dict[str, Any],
    executor: ExecutorChoice,
    echo: Echo,
    sign_with: Path | None = None,
) -> list[int]:
    """Re-run each submission's manifest on the task's corpus seeds (or `seed`), write each record
    to runs/ as it comes back, then judge every published claim of the submission against those
    re-runs (compare.judge_published) and write verifications/published/<id>.json. Exit codes, one
    per claim: 0 reproduced, 1 not, EXIT_CANCELLED when a re-run never came back."""
    plan: dict[str, tuple[Submission, Job]] = {}
    for sub in subs:
        assert sub.manifest is not None
        seeds = [seed] if seed is not None else list(get_task(sub.manifest.task).corpus_seeds)
        for s in seeds:
            job = Job.for_manifest(sub.manifest, seed=s, runner=runner or "local", runner_options=options)
            plan[job.key] = (sub, dataclasses.replace(job, fresh_base=True))
    started = utc_now()
    reruns: dict[str, list[RunRecord]] = {sub.label: [] for sub in subs}

    def begin(job: Job, where: str) -> None:
        echo.err(f"{job.key}: re-running for its published claim{executor.where(where)}")

    def done(result: JobResult) -> None:
        sub, _ = plan[result.job.key]
        if result.run is None:
            echo.err(f"error: {result.error}")
            return
        path = land(result.run, sub.folder / RUNS_DIR)
        echo.out(summary_line(result.run.record))
        echo.out(f"record: {path}")
        reruns[sub.label].append(result.run.record)

    executor.make().map([job for _, job in plan.values()], begin, done)
    codes = []
    for sub in subs:
        expected = sum(1 for s, _ in plan.values() if s is sub)
        records = sorted(reruns[sub.label], key=lambda r: r.seed)
        if len(records) < expected:
            echo.err(f"{sub.label}: {expected - len(records)} re-run(s) did not come back: nothing judged")
            codes.append(EXIT_CANCELLED)
            continue
        assert sub.manifest is not None
        policy = get_task(sub.manifest.task).verification
        for claim in sub.published:
            judgement = judge_published(claim.metrics, claim.accelerator, records, policy)
            record = PublishedVerificationRecord(
                verification_id=new_published_verification_id(started),
                submission=records[0].submission,
                published=PublishedRef(claim.data["claim_id"], claim.sha256, claim.accelerator),
                reruns=records,
                policy=_policy_json(policy),
                verdict=judgement.verdict,
                comparisons=judgement.as_json()["comparisons"],
                reasons=judgement.reasons,
                started_at=timestamp(started),
                finished_at=timestamp(utc_now()),
            )
            path = write_published_verification(sub.folder, record)
            signature = sign(path, sign_with) if sign_with is not None else None
            echo.out(
                f"{sub.label}: published claim {claim.path.name} ({claim.accelerator}), "
                f"{len(records)} re-run(s):"
            )
            echo.out(
                report(
                    Verification(sub.label, records[0].seed, claim.path, judgement, path, signature=signature)
                )
            )
            codes.append(0 if judgement.verdict == REPRODUCED else 1)
    return codes


def sign_verifications(files: list[Path], key: Path, *, echo: Echo) -> int:
    """`peftrepro sign`: sign verification files (each must read as one; none may be signed yet)."""
    for f in files:  # all checked before any is signed
        if f.is_symlink() or not f.is_file():
            raise UsageError(f"{f}: not a plain file")
        try:
            published = f.parent.name == PUBLISHED_VERIFICATIONS_DIR
            (parse_published_verification if published else parse_verification)(read_json(f), str(f))
        except (JSONReadError, OSError) as e:
            raise UsageError(f"{f}: {e}") from None
        if signature_path(f).exists() or signature_path(f).is_symlink():
            raise UsageError(f"{signature_path(f)}: already exists; a verification is signed once")
    for f in files:
        echo.out(f"signed {f} -> {sign(f, key)}")
    return 0


def _chosen(paths: tuple[Path, ...], changed_since: str | None, root: Path, echo: Echo) -> list[Submission]:
    """The named submissions (each must have a claim), or those under `root` with one."""
    if paths:
        subs = select(paths)
        for s in subs:
            if not s.claims and not s.published:
                why = "no success record for its current manifest and no published claim"
                unread = "".join(f"; {p.name} ignored: {reason}" for p, reason in s.ignored)
                raise UsageError(f"{s.label}: {why}{unread}; run `peftrepro run {s.folder}` first")
        return subs
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    folders = (
        changed_submissions(root, changed_since)
        if changed_since
        else sorted(p.parent for p in root.glob("*/*/*/manifest.json"))
    )
    subs = select(folders)
    for s in subs:
        if not s.claims:
            echo.err(f"skip {s.label}: no success record for its current manifest")
    return [s for s in subs if s.claims]
