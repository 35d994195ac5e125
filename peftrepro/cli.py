"""The `peftrepro` command. Commands stay thin: parse, call one library function, print.

User errors (PeftreproError) become one line on stderr and exit code 2 (1 for a failed run);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from peftrepro import __version__
from peftrepro.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_RUN_FAILED, PeftreproError

paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=Path))


submissions_option = click.option(
    "--submissions",
    "root",
    type=click.Path(path_type=Path),
    default=Path("submissions"),
    show_default=True,
    help="The submissions tree to read (verify: for --all and --changed-since).",
)


def runner_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--runner and the container options, declared once for `run` and `verify`."""
    options = [
        click.option(
            "--runner",
            type=click.Choice(["local", "docker"]),
            default=None,
            help="Where runs happen (default: $PEFTREPRO_RUNNER or local; verify: the claim's runner).",
        ),
        click.option(
            "--image", default=None, help="Container image (default: $PEFTREPRO_IMAGE or peftrepro:local)."
        ),
        click.option(
            "--gpus",
            type=click.Choice(["auto", "all", "none"]),
            default=None,
            help="Container GPUs: auto (when the engine has them), all (required), none.",
        ),
        click.option("--memory", default=None, help="Container memory limit, e.g. 8g."),
        click.option("--cpus", type=click.FloatRange(0.1, 1024), default=None, help="Container CPU limit."),
    ]
    return _with_options(options, f)


def executor_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--executor and its options, declared once for `run`, `verify` and `sweep`."""
    options = [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="Where the jobs run: on this machine, or as tasks on a Ray cluster.",
        ),
        click.option(
            "--jobs",
            type=click.IntRange(1, 256),
            default=1,
            show_default=True,
            help="local: jobs at a time, each in its own process.",
        ),
        click.option(
            "--address",
            default="auto",
            show_default=True,
            help="ray: the cluster: auto (this machine's `ray start`), ray://host:port, or local "
            "(a throw-away instance here).",
        ),
        click.option(
            "--retries",
            type=click.IntRange(0, 10),
            default=2,
            show_default=True,
            help="ray: times a job is re-run when its worker or node is lost.",
        ),
    ]
    return _with_options(options, f)


def make_executor(executor: str, jobs: int, address: str, retries: int) -> Any:
    from peftrepro.executors import get_executor

    if executor == "ray" and jobs != 1:
        _fail("--jobs is for --executor local; Ray places jobs by the resources they ask for", EXIT_BAD_INPUT)
    return get_executor(executor, jobs=jobs, address=address, retries=retries)


def _with_options(options: list[Callable[..., Any]], f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        f = option(f)
    return f


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class PeftreproGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PeftreproError as e:
            _fail(e.message, e.exit_code)
            return None


@click.group(cls=PeftreproGroup)
@click.version_option(__version__, prog_name="peftrepro")
def main() -> None:
    """Run, verify and compare PEFT submissions reproducibly."""


@main.command()
@paths_argument
@click.option("--no-attach", is_flag=True, help="Schema and policy only; skip loading the task's model.")
@click.option(
    "--deep",
    is_flag=True,
    help="Also run the structural checks: identity at init, disable restores the base, only declared "
    "parameters change, save/load round trip (seconds per manifest on CPU).",
)
def validate(paths: tuple[Path, ...], no_attach: bool, deep: bool) -> None:
    """Check manifests: schema, policy, and that the PEFT config attaches to the task's model.

    PATHS may be manifest files, submission folders or trees (default: submissions/). On the GPU
    tracks the config is attached to the model's architecture without its weights (meta device).
    """
    from peftrepro.checks import summary
    from peftrepro.validate import validate_paths

    if deep and no_attach:
        _fail("--deep needs the task's model; drop --no-attach", EXIT_BAD_INPUT)
    results = validate_paths(list(paths) or [Path("submissions")], attach=not no_attach, deep=deep)
    if not results:
        _fail(
            "no manifest.json found under " + ", ".join(map(str, paths or ("submissions",))), EXIT_BAD_INPUT
        )
    for r in results:
        if r.error is not None:
            click.echo(f"error: {r.error.message}", err=True)
        elif r.trainable_params is not None:
            checked = f"; {summary(r.checks)}" if r.checks else ""
            click.echo(
                f"ok {r.path}: {r.trainable_params:,} trainable of {r.total_params:,} parameters{checked}"
            )
        else:
            click.echo(f"ok {r.path}" + (f": {r.note}" if r.note else ""))
    if any(not r.ok for r in results):
        sys.exit(EXIT_BAD_INPUT)


def parse_seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2, got {value!r}") from None
    if not seeds or any(not 0 <= s < 2**31 for s in seeds) or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct integers in [0, 2^31), got {value!r}")
    return seeds


@main.command()
@paths_argument
@click.option(
    "--seed",
    type=click.IntRange(0, 2**31 - 1),
    default=None,
    help="Seed for adapter init and data order (default: the manifest's training.seed).",
)
@click.option("--seeds", callback=parse_seeds, help="Several seeds, e.g. 0,1,2: one run and one record each.")
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the records (default: each submission's runs/ folder).",
)
@runner_options
@executor_options
def run(
    paths: tuple[Path, ...],
    seed: int | None,
    seeds: list[int] | None,
    runs_dir: Path | None,
    runner: str | None,
    executor: str,
    jobs: int,
    address: str,
    retries: int,
    **docker: Any,
) -> None:
    """Run submissions and write one run record per seed (local by default, or in a container).

    PATHS may be manifest files, submission folders or trees. Every manifest is checked before
    any run starts; each run is a job in a fresh process, here (--jobs at a time) or on Ray.
    """
    from peftrepro.executors import Job, JobResult
    from peftrepro.manifest import find_manifests, resolve
    from peftrepro.records import RUNS_DIR
    from peftrepro.runners import default_kind
    from peftrepro.runners.local import land

    if seed is not None and seeds is not None:
        _fail("give --seed or --seeds, not both", EXIT_BAD_INPUT)
    if not paths:
        _fail("name the submissions to run (manifest files, submission folders or trees)", EXIT_BAD_INPUT)
    manifests = {m.path: m for m in map(resolve, find_manifests(paths))}
    if not manifests:
        _fail("no manifest.json found under " + ", ".join(map(str, paths)), EXIT_BAD_INPUT)
    kind = runner or default_kind()
    if kind not in ("local", "docker"):
        _fail(f"runner {kind!r} is not available; available: local, docker", EXIT_BAD_INPUT)
    folder_of: dict[str, Path] = {}
    planned = []
    for m in manifests.values():
        for s in seeds or [m.training.seed if seed is None else seed]:
            job = Job.for_manifest(m, seed=s, runner=kind, runner_options=docker)
            if job.key in folder_of:
                _fail(f"{job.rel} is named twice ({folder_of[job.key]}, {m.folder})", EXIT_BAD_INPUT)
            folder_of[job.key] = m.folder
            planned.append(job)
    codes: list[int] = []

    def start(job: Job, where: str) -> None:
        note = f" on {where}" if executor == "ray" else ""
        click.echo(f"running {job.key} (manifest {job.manifest_sha256[:12]}){note}", err=True)

    def done(result: JobResult) -> None:
        if result.status == "refused":
            click.echo(f"error: {result.error}", err=True)
            codes.append(EXIT_BAD_INPUT)
            return
        outcome = land(result, runs_dir or folder_of[result.job.key] / RUNS_DIR)
        attempts = f" (attempts: {result.attempts})" if result.attempts > 1 else ""
        click.echo(summary_line(outcome.record) + attempts)
        click.echo(f"record: {outcome.path}")
        error = outcome.record["error"] or {}
        if error.get("type") == "CheckFailed":  # the manifest's whatever the seed: its others are skipped
            click.echo(f"error: {error['message']}", err=True)
            codes.append(EXIT_BAD_INPUT)
        elif outcome.status == "cancelled":
            codes.append(EXIT_CANCELLED)
        elif outcome.status == "failed":
            codes.append(EXIT_RUN_FAILED)

    finished = make_executor(executor, jobs, address, retries).map(planned, start, done)
    if len(planned) > 1:
        click.echo(f"{len(finished)} of {len(planned)} runs recorded")
    if len(finished) < len(planned) and not codes:
        codes.append(EXIT_CANCELLED)
    sys.exit(max(codes, key=_severity, default=0))


def _severity(code: int) -> int:
    """Which exit code a batch reports: bad input, then cancelled, then a failed run."""
    return {EXIT_BAD_INPUT: 3, EXIT_CANCELLED: 2, EXIT_RUN_FAILED: 1}.get(code, 0)


def parse_lrs(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        lrs = [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers such as 1e-3,3e-3,1e-2, got {value!r}"
        ) from None
    if not lrs or any(not 0 < x <= 10 for x in lrs) or len(set(lrs)) != len(lrs) or len(lrs) > 32:
        raise click.BadParameter(f"expected 1 to 32 distinct rates in (0, 10], got {value!r}")
    return lrs


@main.command()
@paths_argument
@click.option("--lrs", required=True, callback=parse_lrs, help="The grid, e.g. 1e-3,3e-3,1e-2.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option(
    "--extend",
    type=click.IntRange(0, 8),
    default=4,
    show_default=True,
    help="While the best rate is at an edge, train one more a grid step beyond it, up to N times.",
)
@click.option("--apply", is_flag=True, help="Also set the manifest's learning rate to the chosen one.")
@executor_options
def sweep(
    paths: tuple[Path, ...],
    lrs: list[float],
    seed: int,
    extend: int,
    apply: bool,
    executor: str,
    jobs: int,
    address: str,
    retries: int,
) -> None:
    """Learning-rate sweep of submissions on the validation split (never the test split).

    For each submission: trains once per rate with its settings and one seed, writes
    <submission>/sweep.json and prints the table; --apply writes the chosen rate into the manifest.
    Rates already measured in its sweep.json for the same config and seed are reused, not
    re-trained. Each submission's sweep is one job (here, --jobs at a time, or on Ray); Ctrl-C
    writes nothing for a sweep that had not finished.
    """
    from peftrepro.executors import Job, JobResult
    from peftrepro.manifest import find_manifests, resolve
    from peftrepro.sweep import apply_lr, load_previous, point_line, write_sweep

    if not paths:
        _fail("name the submissions to sweep (manifest files, submission folders or trees)", EXIT_BAD_INPUT)
    manifests: dict[str, Any] = {}
    planned = []
    for m in map(resolve, find_manifests(paths)):
        spec = {"lrs": lrs, "extend": extend, "previous": load_previous(m.folder)}
        job = Job.for_manifest(m, seed=seed, sweep=spec)
        if job.key in manifests:
            _fail(f"{job.rel} is named twice ({manifests[job.key].folder}, {m.folder})", EXIT_BAD_INPUT)
        manifests[job.key] = m
        planned.append(job)
    if not planned:
        _fail("no manifest.json found under " + ", ".join(map(str, paths)), EXIT_BAD_INPUT)
    codes: list[int] = []

    def start(job: Job, where: str) -> None:
        note = f" on {where}" if executor == "ray" else ""
        click.echo(f"sweeping {job.rel} over lr {', '.join(f'{x:g}' for x in lrs)}{note}", err=True)

    def done(result: JobResult) -> None:
        manifest, label = manifests[result.job.key], result.job.rel
        if result.status == "refused":
            click.echo(f"error: {result.error}", err=True)
            codes.append(EXIT_BAD_INPUT)
            return
        if result.record is None:  # cancelled (or its process died): nothing written
            click.echo(f"{label}: {result.error or result.status}: no sweep written", err=True)
            codes.append(EXIT_CANCELLED if result.status == "cancelled" else EXIT_RUN_FAILED)
            return
        record = result.record
        for point in record["points"]:
            click.echo(point_line(label, point))
        out = write_sweep(manifest.folder, record)
        if record["chosen_lr"] is None:
            click.echo(f"{label}: every rate failed; see {out}", err=True)
            codes.append(EXIT_RUN_FAILED)
            return
        edge = " (still at the edge of the rates tried: widen the grid)" if record["at_grid_edge"] else ""
        if record["reused_lrs"]:
            reused = ", ".join(f"{x:g}" for x in record["reused_lrs"])
            click.echo(f"{label}: reused from the previous sweep.json: lr {reused}")
        click.echo(f"{label}: chosen lr {record['chosen_lr']:g}{edge} -> {out}")
        if apply and apply_lr(manifest, record["chosen_lr"]):
            click.echo(f"{manifest.path}: training.optimizer_kwargs.lr = {record['chosen_lr']:g}")
        elif apply:
            click.echo(f"{manifest.path}: already uses lr {record['chosen_lr']:g}; unchanged")

    finished = make_executor(executor, jobs, address, retries).map(planned, start, done)
    if len(finished) < len(planned) and not codes:
        codes.append(EXIT_CANCELLED)
    sys.exit(max(codes, key=_severity, default=0))


@main.command()
@paths_argument
@click.option("--all", "all_", is_flag=True, help="Every submission under submissions/ that has a claim.")
@click.option("--changed-since", metavar="GIT_REF", help="Submissions with files changed since this git ref.")
@click.option("--all-seeds", is_flag=True, help="Re-run every claimed seed (default: one, chosen at random).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=None, help="Re-run this claimed seed.")
@submissions_option
@runner_options
@executor_options
def verify(
    paths: tuple[Path, ...],
    all_: bool,
    changed_since: str | None,
    all_seeds: bool,
    seed: int | None,
    root: Path,
    runner: str | None,
    executor: str,
    jobs: int,
    address: str,
    retries: int,
    **docker: Any,
) -> None:
    """Re-run submissions' claimed records and judge them under each task's tolerance policy.

    Writes verifications/<id>.json beside each submission's runs/. Exit 0 when every claim
    checked was reproduced, 1 when any was not (not_reproduced or not_comparable), 2 on bad input.
    """
    from peftrepro.collect import Submission
    from peftrepro.compare import VERDICTS
    from peftrepro.verify import (
        Verification,
        changed_submissions,
        report,
        select,
        verify_all,
    )

    if seed is not None and all_seeds:
        _fail("give --seed or --all-seeds, not both", EXIT_BAD_INPUT)
    if bool(paths) + all_ + (changed_since is not None) != 1:
        _fail("name submissions (PATH...), or give --all or --changed-since GIT_REF", EXIT_BAD_INPUT)
    if paths:
        subs = select(paths)
        missing = [s for s in subs if not s.claims]
    else:
        if not root.is_dir():
            _fail(f"{root}: no such folder", EXIT_BAD_INPUT)
        folders = (
            changed_submissions(root, changed_since)
            if changed_since
            else sorted(p.parent for p in root.glob("*/*/*/manifest.json"))
        )
        subs = select(folders)
        missing = []
        for s in [s for s in subs if not s.claims]:
            click.echo(f"skip {s.label}: no success record for its current manifest", err=True)
        subs = [s for s in subs if s.claims]
    for s in missing:
        _fail(
            f"{s.label}: no success record for its current manifest; run `peftrepro run {s.folder}` first",
            EXIT_BAD_INPUT,
        )
    if not subs:
        click.echo("nothing to verify")
        return

    def start(sub: Submission, s: int, claim: Path, where: str) -> None:
        note = f" on {where}" if executor == "ray" else ""
        click.echo(f"{sub.label} seed {s}: re-running the claim {claim}{note}", err=True)

    def done(v: Verification) -> None:
        if v.error is not None:
            click.echo(f"error: {v.error}", err=True)
            return
        click.echo(f"{v.submission} seed {v.seed}:")
        click.echo(report(v))

    results = verify_all(
        subs,
        all_seeds=all_seeds,
        seed=seed,
        runner=runner,
        options=docker,
        executor=make_executor(executor, jobs, address, retries),
        on_start=start,
        on_done=done,
    )
    counts = {k: sum(v.judgement is not None and v.judgement.verdict == k for v in results) for k in VERDICTS}
    click.echo("verified " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if any(v.error is not None for v in results):
        sys.exit(EXIT_BAD_INPUT)
    if any(v.judgement is None for v in results):
        sys.exit(EXIT_CANCELLED)
    sys.exit(0 if counts["reproduced"] == len(results) else 1)


@main.command()
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the files on disk are out of date.")
@submissions_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("leaderboard"),
    show_default=True,
    help="Where the Markdown pages and plots go.",
)
def leaderboard(check: bool, root: Path, out: Path) -> None:
    """Regenerate the Markdown leaderboard from the records alone (byte-identical for identical input)."""
    from peftrepro.pages import differences, render, write

    if not root.is_dir():
        _fail(f"{root}: no such folder", EXIT_BAD_INPUT)
    files, problems = render(root, out)
    for line in problems:
        click.echo(f"ignored {line}", err=True)
    if check:
        stale = differences(out, files)
        if stale:
            click.echo(f"{out} is out of date ({', '.join(stale)}); regenerate with `peftrepro leaderboard`")
            sys.exit(1)
        click.echo(f"{out} is up to date ({len(files)} files)")
        return
    changed = write(out, files)
    click.echo(
        f"wrote {out}: {len(changed)} of {len(files)} files changed"
        + (f" ({', '.join(changed)})" if changed else "")
    )


@main.command()
@click.argument("task")
@click.argument("method")
@click.argument("name")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path),
    help="Start from this submission's manifest (a folder or manifest.json) instead of the defaults.",
)
@submissions_option
def new(task: str, method: str, name: str, source: Path | None, root: Path) -> None:
    """Write a manifest skeleton for TASK/METHOD/NAME and print the next commands.

    The PEFT config lists every field of the method's config class with the installed peft's
    default (`--from` copies another submission's config and training settings instead).
    """
    from peftrepro.scaffold import new_submission, next_steps
    from peftrepro.validate import validate_one

    path = new_submission(root, task, method, name, source)
    click.echo(f"wrote {path}")
    checked = validate_one(path)  # attaches it to the task's model: the defaults may not fit it
    if checked.error is not None:
        click.echo(f"note: {checked.error.message}; edit peft_config before running it")
    else:
        click.echo(
            f"it attaches: {checked.trainable_params:,} trainable of {checked.total_params:,} parameters"
        )
    click.echo("next:")
    for line in next_steps(path):
        click.echo(f"  {line}")


@main.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Convert and check; write nothing.")
@submissions_option
def import_(path: Path, dry_run: bool, root: Path) -> None:
    """Convert public PEFT method comparison experiments into manifests.

    PATH is one experiment folder (experiments/<method>/<name>/, holding adapter_config.json and
    optionally training_params.json) or any folder above many. Their shallow merge over
    default_training_params.json is reproduced exactly; each place where it differs from
    peftrepro's key-by-key merge is printed. Exit 2 if any experiment could not be converted.
    """
    from peftrepro.importer import NotConvertible, check, convert, find_experiments, write

    try:
        folders = find_experiments(path)
    except NotConvertible as e:
        _fail(str(e), EXIT_BAD_INPUT)
    if not folders:
        _fail(
            f"{path}: no experiment folders (experiments/<method>/<name>/adapter_config.json)", EXIT_BAD_INPUT
        )
    failed = 0
    for folder in folders:
        try:
            imported = convert(folder)
            check(imported, root)
            where = root / imported.relpath if dry_run else write(imported, root)
        except NotConvertible as e:
            failed += 1
            click.echo(f"cannot import: {e}")
            continue
        click.echo(f"{'would import' if dry_run else 'imported'} {imported.experiment} -> {where}")
        for note in imported.notes:
            click.echo(f"  note: {note}")
    click.echo(f"{len(folders) - failed} of {len(folders)} experiments converted")
    if failed:
        sys.exit(EXIT_BAD_INPUT)


@main.command("list")
@click.argument("what", type=click.Choice(["tasks", "methods", "submissions"]))
@submissions_option
def list_(what: str, root: Path) -> None:
    """Show the tasks, the method families (and unsupported PEFT types), or the submissions with status."""
    from tabulate import tabulate

    from peftrepro import scaffold

    if what == "tasks":
        headers, rows = ["task", "version", "base model", "score", "training budget"], scaffold.list_tasks()
    elif what == "methods":
        headers, rows = ["method family", "runs"], scaffold.list_methods()
    else:
        if not root.is_dir():
            _fail(f"{root}: no such folder", EXIT_BAD_INPUT)
        headers, rows = ["submission", "status", "detail"], scaffold.list_submissions(root)
    click.echo(tabulate(rows, headers=headers, tablefmt="simple"))


@main.command()
@click.option(
    "--changed-since", "ref", required=True, metavar="GIT_REF", help="Check what changed since this ref."
)
@click.option("--summary", type=click.Path(path_type=Path), help="Also write the Markdown summary here.")
@click.option("--smoke-steps", type=click.IntRange(1, 1000), default=2, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip re-running claimed records (the slow step).")
@submissions_option
@click.option("--leaderboard", "board", type=click.Path(path_type=Path), default=Path("leaderboard"))
def ci(ref: str, summary: Path | None, smoke_steps: int, no_verify: bool, root: Path, board: Path) -> None:
    """The pull-request check, locally: policy, validate --deep, a smoke run and verify for each
    submission changed since GIT_REF, then leaderboard --check. Exit 0 when all passed, 1 if not."""
    from peftrepro.ci import run_ci

    if not root.is_dir():
        _fail(f"{root}: no such folder", EXIT_BAD_INPUT)
    report = run_ci(
        root,
        ref,
        board,
        smoke_steps=smoke_steps,
        verify=not no_verify,
        echo=lambda s: click.echo(s, err=True),
    )
    text = report.markdown()
    if summary is not None:
        summary.write_text(text)
    click.echo(text, nl=False)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("task")
def fetch(task: str) -> None:
    """Put a task's pinned assets into the cache (the only step that may use the network)."""
    from peftrepro.tasks import get_task, task_names

    if task not in task_names():
        _fail(f"unknown task {task!r}; tasks: {', '.join(task_names())}", EXIT_BAD_INPUT)
    get_task(task).fetch()
    click.echo(f"fetched {task}")


def summary_line(record: dict) -> str:
    from peftrepro.pages import prior_format
    from peftrepro.tasks import get_task

    m, sub = record["metrics"], record["submission"]
    head = f"{sub['task']}/{sub['method']}/{sub['name']} seed {record['seed']}: {record['status']}"
    if record["status"] != "success":
        return f"{head} after {m.get('steps_completed', 0)} steps ({record['error']['message']})"
    t = get_task(sub["task"])
    score, prior = t.score_key, t.prior_key
    return (
        f"{head}; {score} {m[score]:.3f} (base {m['base_' + score]:.3f}), "
        f"{prior} {m[prior]:{prior_format(prior, 4)}}, {m['trainable_params']:,} trainable params, "
        f"train {m['train_seconds']:.1f} s of {m['total_seconds']:.1f} s, "
        f"peak memory {m['peak_memory_bytes'] / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
