"""The `peftrepro` command. Commands stay thin: parse, call one library function, print, exit.

User errors (PeftreproError) become one line on stderr and exit code 2 (1 for a failed run);
anything else is a bug and keeps its traceback. Each command imports the library it calls inside
its body, on purpose: `peftrepro --help` then starts in 0.1 s instead of the 4-10 s that torch, peft
and transformers take to import (the library itself has no import circles: tests/test_layers.py).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from peftrepro import __version__
from peftrepro.cli_options import (
    EXECUTOR_OPTIONS,
    RUNNER_OPTIONS,
    executor_options,
    parse_lrs,
    parse_seeds,
    paths_argument,
    runner_options,
    sign_option,
    submissions_option,
    with_options,
)
from peftrepro.console import Echo, quiet_unless_terminal
from peftrepro.errors import EXIT_CANCELLED, PeftreproError

ECHO = Echo(out=click.echo, err=lambda line: click.echo(line, err=True))


def executor_choice(options: dict[str, Any]) -> Any:
    from peftrepro.executors.batch import ExecutorChoice

    return ExecutorChoice(*executor_options(options))


ECHO = Echo(out=click.echo, err=lambda line: click.echo(line, err=True))


class PeftreproGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        # SIGTERM as Ctrl-C: an interrupt outside a run (loading, checking, writing pages) ends in
        # one line and exit 130, never a traceback or click's "Aborted!" (exit 1). During a run the
        # executors and runners install their own handlers (a `cancelled` record), then restore this.
        signal.signal(signal.SIGTERM, _interrupt)
        quiet_unless_terminal()
        try:
            return super().invoke(ctx)
        except PeftreproError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            why = str(e) or "SIGINT"
            click.echo(f"interrupted by {why}: stopped; what was written before stays", err=True)
            sys.exit(EXIT_CANCELLED)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


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
    from peftrepro.validate import validate_command

    sys.exit(
        validate_command(list(paths) or [Path("submissions")], attach=not no_attach, deep=deep, echo=ECHO)
    )


@main.command()
@paths_argument
@click.option(
    "--seed",
    type=click.IntRange(0, 2**31 - 1),
    default=None,
    help="Seed for adapter init and data order (default: the manifest's training.seed).",
)
@click.option(
    "--seeds",
    callback=parse_seeds,
    is_flag=False,
    flag_value="corpus",  # executors.CORPUS (not imported here: the CLI module stays light)
    help="Several seeds, e.g. 0,1,2: one run and one record each. Alone: the task's corpus seeds "
    "(0-4 on CPU tracks, 0-2 on GPU tracks), what a leaderboard row needs.",
)
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the records (default: each submission's runs/ folder).",
)
@with_options(RUNNER_OPTIONS)
@with_options(EXECUTOR_OPTIONS)
def run(
    paths: tuple[Path, ...],
    seed: int | None,
    seeds: list[int] | str | None,
    runs_dir: Path | None,
    **options: Any,
) -> None:
    """Run submissions and write one run record per seed (local by default, or in a container).

    PATHS may be manifest files, submission folders or trees. Every manifest is checked before
    any run starts; each run is a job in a fresh process, here (--jobs at a time) or on Ray.
    """
    from peftrepro.errors import UsageError
    from peftrepro.executors.batch import run_submissions

    if seed is not None and seeds is not None:
        raise UsageError("give --seed or --seeds, not both")
    code = run_submissions(
        paths,
        seeds=seeds or ([seed] if seed is not None else None),
        runs_dir=runs_dir,
        runner=options.pop("runner"),
        executor=executor_choice(options),
        runner_options=runner_options(options),
        echo=ECHO,
    )
    sys.exit(code)


@main.command()
@paths_argument
@click.option("--lrs", required=True, callback=parse_lrs, help="The grid, e.g. 1e-3,3e-3,1e-2.")
@click.option(
    "--seeds",
    callback=parse_seeds,
    default="0,1",
    show_default=True,
    help="Every rate is trained on each of these seeds (at least two).",
)
@click.option(
    "--extend",
    type=click.IntRange(0, 8),
    default=4,
    show_default=True,
    help="While the best rate is at an edge, train one more a grid step beyond it, up to N times.",
)
@click.option("--apply", is_flag=True, help="Also set the manifest's learning rate to the chosen one.")
@with_options(EXECUTOR_OPTIONS)
def sweep(
    paths: tuple[Path, ...],
    lrs: list[float],
    seeds: list[int] | str,
    extend: int,
    apply: bool,
    **options: Any,
) -> None:
    """Learning-rate sweep of submissions on the validation split (never the test split).

    For each submission: trains once per rate and seed with its settings, writes
    <submission>/sweep.json and prints the table; --apply writes the chosen rate into the manifest.
    The chosen rate maximises the mean validation score minus one standard error, among rates where
    no seed diverged. Points already measured in its sweep.json for the same config are reused, not
    re-trained. Each submission's sweep is one job (here, --jobs at a time, or on Ray); Ctrl-C
    writes nothing for a sweep that had not finished.
    """
    from peftrepro.errors import UsageError
    from peftrepro.executors.batch import sweep_submissions

    if not isinstance(seeds, list) or len(seeds) < 2:
        raise UsageError("a sweep trains every rate on at least two seeds: give --seeds 0,1 or more")
    executor = executor_choice(options)
    sys.exit(
        sweep_submissions(
            paths, lrs=lrs, seeds=seeds, extend=extend, apply=apply, executor=executor, echo=ECHO
        )
    )


@main.command()
@paths_argument
@click.option("--all", "all_", is_flag=True, help="Every submission under submissions/ that has a claim.")
@click.option("--changed-since", metavar="GIT_REF", help="Submissions with files changed since this git ref.")
@click.option("--all-seeds", is_flag=True, help="Re-run every claimed seed (default: one, chosen at random).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=None, help="Re-run this claimed seed.")
@submissions_option
@sign_option
@with_options(RUNNER_OPTIONS)
@with_options(EXECUTOR_OPTIONS)
def verify(
    paths: tuple[Path, ...],
    all_: bool,
    changed_since: str | None,
    all_seeds: bool,
    seed: int | None,
    root: Path,
    sign_with: Path | None,
    **options: Any,
) -> None:
    """Re-run submissions' claimed records and judge them under each task's tolerance policy.

    Writes verifications/<id>.json beside each submission's runs/. A named submission with a
    published claim (claims/) is re-run on its task's corpus seeds (or --seed) and the claim judged
    against them: verifications/published/<id>.json. Exit 0 when every claim checked was
    reproduced, 1 when any was not (not_reproduced or not_comparable), 2 on bad input.
    """
    from peftrepro.verify import verify_submissions

    code = verify_submissions(
        paths,
        all_=all_,
        changed_since=changed_since,
        all_seeds=all_seeds,
        seed=seed,
        root=root,
        runner=options.pop("runner"),
        executor=executor_choice(options),
        runner_options=runner_options(options),
        echo=ECHO,
        sign_with=sign_with,
    )
    sys.exit(code)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path), help="Your SSH private key.")
def sign(files: tuple[Path, ...], key: Path) -> None:
    """Vouch for verification files you ran or reviewed (a CI artifact, say): writes FILE.sig, an SSH
    signature that counts on the leaderboard when KEY is listed in verifiers/allowed_signers."""
    from peftrepro.verify import sign_verifications

    sys.exit(sign_verifications(list(files), key, echo=ECHO))


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
    from peftrepro.pages import leaderboard_command

    sys.exit(leaderboard_command(root, out, check=check, echo=ECHO))


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
    from peftrepro.scaffold import new_command

    for line in new_command(root, task, method, name, source):
        click.echo(line)


@main.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Convert and check; write nothing.")
@click.option(
    "--commit",
    metavar="SHA",
    help="Result files: the 40-hex commit of the repository they come from (required).",
)
@click.option(
    "--repository",
    default="huggingface/peft",
    show_default=True,
    help="Result files: the repository they come from.",
)
@submissions_option
def import_(path: Path, dry_run: bool, commit: str | None, repository: str, root: Path) -> None:
    """Convert public PEFT method comparison experiments into manifests, and their published
    result files into claims.

    PATH is one experiment folder (experiments/<method>/<name>/, holding adapter_config.json and
    optionally training_params.json), a result file (<track>/results/<method>--<name>.json), a
    results/ folder, or any folder above them (the whole method_comparison/). Their shallow merge
    over default_training_params.json is reproduced exactly; each place where it differs from
    peftrepro's key-by-key merge is printed. A result becomes <submission>/claims/<id>.json, bound
    to the experiment's manifest (imported too when missing) by sha256; a result whose run config
    differs from that manifest's is refused with the fields named. Manifests and claims already
    there are left as they are. Exit 2 if anything could not be converted.
    """
    from peftrepro.published import import_path

    sys.exit(import_path(path, root, repository=repository, commit=commit, dry_run=dry_run, echo=click.echo))


@main.command("list")
@click.argument("what", type=click.Choice(["tasks", "methods", "submissions"]))
@submissions_option
def list_(what: str, root: Path) -> None:
    """Show the tasks, the method families (and unsupported PEFT types), or the submissions with status."""
    from peftrepro.scaffold import listing

    click.echo(listing(what, root))


@main.command()
@click.option(
    "--changed-since", "ref", required=True, metavar="GIT_REF", help="Check what changed since this ref."
)
@click.option("--summary", type=click.Path(path_type=Path), help="Also write the Markdown summary here.")
@click.option("--smoke-steps", type=click.IntRange(1, 1000), default=2, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip re-running claimed records (the slow step).")
@submissions_option
@click.option("--leaderboard", "board", type=click.Path(path_type=Path), default=Path("leaderboard"))
@sign_option
def ci(
    ref: str,
    summary: Path | None,
    smoke_steps: int,
    no_verify: bool,
    root: Path,
    board: Path,
    sign_with: Path | None,
) -> None:
    """The pull-request check, locally: policy, validate --deep, a smoke run and verify for each
    submission changed since GIT_REF, then leaderboard --check. Exit 0 when all passed, 1 if not."""
    from peftrepro.ci import ci_command

    sys.exit(
        ci_command(
            root,
            ref,
            board,
            summary,
            smoke_steps=smoke_steps,
            verify=not no_verify,
            echo=ECHO,
            sign_with=sign_with,
        )
    )


@main.command()
@click.argument("task")
def fetch(task: str) -> None:
    """Put a task's pinned assets into the cache (the only step that may use the network)."""
    from peftrepro.tasks import fetch_task

    fetch_task(task)
    click.echo(f"fetched {task}")


if __name__ == "__main__":
    main()
