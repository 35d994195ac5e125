"""The `peftrepro` command. Commands stay thin: parse, call one library function, print.

User errors (PeftreproError) become one line on stderr and exit code 2 (1 for a failed run);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from peftrepro import __version__
from peftrepro.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_RUN_FAILED, PeftreproError

paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=Path))


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
def validate(paths: tuple[Path, ...], no_attach: bool) -> None:
    """Check manifests: schema, policy, and that the PEFT config attaches to the task's model.

    PATHS may be manifest files, submission folders or trees (default: submissions/).
    """
    from peftrepro.validate import validate_paths

    results = validate_paths(list(paths) or [Path("submissions")], attach=not no_attach)
    if not results:
        _fail(
            "no manifest.json found under " + ", ".join(map(str, paths or ("submissions",))), EXIT_BAD_INPUT
        )
    for r in results:
        if r.error is not None:
            click.echo(f"error: {r.error.message}", err=True)
        elif r.trainable_params is not None:
            click.echo(f"ok {r.path}: {r.trainable_params:,} trainable of {r.total_params:,} parameters")
        else:
            click.echo(f"ok {r.path}")
    if any(not r.ok for r in results):
        sys.exit(EXIT_BAD_INPUT)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--seed",
    type=click.IntRange(0, 2**31 - 1),
    default=None,
    help="Seed for adapter init and data order (default: the manifest's training.seed).",
)
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the record (default: the submission's runs/ folder).",
)
def run(path: Path, seed: int | None, runs_dir: Path | None) -> None:
    """Run one submission locally and write its run record."""
    from peftrepro.manifest import find_manifests, resolve
    from peftrepro.runners.local import run_local

    found = find_manifests([path])
    if len(found) != 1:
        _fail(f"{path}: expected one manifest, found {len(found)}", EXIT_BAD_INPUT)
    manifest = resolve(found[0])
    seed = manifest.training.seed if seed is None else seed
    click.echo(
        f"running {manifest.task}/{manifest.method}/{manifest.name} seed {seed} "
        f"(manifest {manifest.sha256[:12]})",
        err=True,
    )
    outcome = run_local(manifest, seed=seed, runs_dir=runs_dir)
    click.echo(summary_line(outcome.record))
    click.echo(f"record: {outcome.path}")
    if outcome.status == "cancelled":
        sys.exit(EXIT_CANCELLED)
    if outcome.status == "failed":
        sys.exit(EXIT_RUN_FAILED)


def summary_line(record: dict) -> str:
    m, sub = record["metrics"], record["submission"]
    head = f"{sub['task']}/{sub['method']}/{sub['name']} seed {record['seed']}: {record['status']}"
    if record["status"] != "success":
        return f"{head} after {m.get('steps_completed', 0)} steps ({record['error']['message']})"
    return (
        f"{head}; test_accuracy {m['test_accuracy']:.3f} (base {m['base_test_accuracy']:.3f}), "
        f"forgetting {m['forgetting']:+.4f}, {m['trainable_params']:,} trainable params, "
        f"train {m['train_seconds']:.1f} s of {m['total_seconds']:.1f} s, "
        f"peak memory {m['peak_memory_bytes'] / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
