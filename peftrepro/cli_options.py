"""The CLI's options and argument types, each declared once and shared by the commands that take them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
submissions_option = click.option(
    "--submissions",
    "root",
    type=click.Path(path_type=Path),
    default=Path("submissions"),
    show_default=True,
    help="The submissions tree to read (verify: for --all and --changed-since).",
)
sign_option = click.option(
    "--sign-with",
    type=click.Path(path_type=Path),
    envvar="PEFTREPRO_SIGNING_KEY",
    default=None,
    help="Sign each verification written with this SSH key ($PEFTREPRO_SIGNING_KEY): it counts on the "
    "leaderboard when the key is listed in verifiers/allowed_signers.",
)
RUNNER_OPTIONS = [
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
EXECUTOR_OPTIONS = [
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


def with_options(options: list[Callable[..., Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options declared once, applied to every command that takes them."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def executor_options(options: dict[str, Any]) -> tuple[str, int, str, int]:
    """--executor, --jobs, --address, --retries, taken out of a command's keyword arguments."""
    return options.pop("executor"), options.pop("jobs"), options.pop("address"), options.pop("retries")


def runner_options(options: dict[str, Any]) -> dict[str, Any]:
    """--image, --gpus, --memory, --cpus as the docker runner takes them (unset ones left out)."""
    return {k: v for k in ("image", "gpus", "memory", "cpus") if (v := options.pop(k)) is not None}


def parse_seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | str | None:
    from peftrepro.executors import CORPUS

    if value is None or value == CORPUS:
        return value
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        if Path(value).exists():  # `run --seeds PATH`: the path was taken as the option's value
            raise click.BadParameter(
                f"took {value!r} as its value; for the task's corpus seeds put it after the paths "
                f"(`peftrepro {ctx.info_name} {value} --seeds`), or give seeds (`--seeds 0,1,2`)"
            ) from None
        raise click.BadParameter(f"expected comma-separated integers such as 0,1,2, got {value!r}") from None
    if not seeds or any(not 0 <= s < 2**31 for s in seeds) or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct integers in [0, 2^31), got {value!r}")
    return seeds


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
