"""Carry every public experiment of a published task to a CPU track: one manifest each, for a design
candidate or a corpus.

Each manifest is what `peftrepro new TASK METHOD NAME --from submissions/<published>/METHOD/NAME`
writes (scaffold.transplant: the same PEFT config, the learning rate relative to its task's
default, the track's budget), in a tree of its own (`--into`), then validated with its config
attached to the track's model. A public config the small model cannot take is listed with
`validate`'s one-line reason and left out. `--set KEY=JSON` puts the same training override into
every manifest (a design candidate's budget, e.g. max_steps=60), `--lr-scale F` multiplies every
transplanted learning rate (a candidate's rate factor), so that all experiments of a candidate run
under identical conditions. `--lr-power P` compresses the public rates' spread instead: the
track's default x (their rate / their default)^P, so 1 is the plain transplant and 0.5 the
square-root rule (a config tuned at 30x its default runs at 5.5x here). `--relative-steps` keeps a
public experiment's own step budget relative to its task's default (image-gen's full fine-tuning
runs 300 of 750 steps there, so 60 of 150 here); without it every manifest has the track's budget.

    .venv/bin/python benchmarks/transplant.py --to arithmetic --into /tmp/design-a [--set max_steps=60]
        [--methods lora,ia3,...] [--best-per-family] [--lr-scale 0.5] [--lr-power 0.5] [--relative-steps]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peftrepro.errors import PeftreproError
from peftrepro.jsonio import pretty_bytes
from peftrepro.manifest import find_manifests, load_raw
from peftrepro.scaffold import new_submission
from peftrepro.tasks import get_task
from peftrepro.validate import validate_one


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--to", required=True, help="the CPU track (a task with a published_task)")
    parser.add_argument("--into", type=Path, required=True, help="the submissions tree to write")
    parser.add_argument("--submissions", type=Path, default=Path("submissions"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--lr-power", type=float, default=1.0)
    parser.add_argument("--relative-steps", action="store_true", help="their max_steps / their default")
    parser.add_argument("--methods", help="comma-separated method families (default: all)")
    parser.add_argument(
        "--best-per-family",
        action="store_true",
        help="only each family's best public experiment (by its published score): one run per family",
    )
    args = parser.parse_args()
    published = get_task(args.to).published_task
    if published is None:
        sys.exit(f"error: task {args.to!r} stands in for no published task")
    track, their_track = get_task(args.to).training_defaults, get_task(published).training_defaults
    default, their_default = track["optimizer_kwargs"]["lr"], their_track["optimizer_kwargs"]["lr"]
    steps, their_steps = track["max_steps"], their_track["max_steps"]
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    wanted = set(args.methods.split(",")) if args.methods else None
    best = None
    if args.best_per_family:
        from agreement import best_per_family, their_rows

        best = {key for key, _ in best_per_family(their_rows(args.submissions, published)).values()}
    written, refused, prepared = 0, [], {}  # type: ignore[var-annotated]
    for source in find_manifests([args.submissions / published]):
        method, name = source.parent.parent.name, source.parent.name
        if wanted is not None and method not in wanted:
            continue
        if best is not None and f"{method}/{name}" not in best:
            continue
        try:
            path = new_submission(args.into, args.to, method, name, source)
        except PeftreproError as e:
            refused.append(f"{method}/{name}: {e.message}")
            continue
        doc = load_raw(path)
        training = doc.setdefault("training", {})
        training.update(overrides)
        theirs = load_raw(source).get("training") or {}
        their_lr = (theirs.get("optimizer_kwargs") or {}).get("lr")
        relative = (their_lr or their_default) / their_default
        training["optimizer_kwargs"]["lr"] = float(f"{default * relative**args.lr_power * args.lr_scale:.6g}")
        their_max = theirs.get("max_steps")
        scaled = args.relative_steps and their_max and their_max != their_steps
        if scaled:
            training["max_steps"] = max(1, round(steps * their_max / their_steps))
            if training.get("eval_steps", track["eval_steps"]) > training["max_steps"]:
                training["eval_steps"] = training["max_steps"]
        if overrides or args.lr_scale != 1.0 or args.lr_power != 1.0 or scaled:
            doc["description"] += (
                f" Design candidate: {json.dumps(overrides)}, lr x {args.lr_scale:g}, "
                f"lr = {default:g} x (theirs / {their_default:g})^{args.lr_power:g}"
                + (
                    f", {training['max_steps']} steps ({their_max} of their {their_steps})."
                    if scaled
                    else "."
                )
            )
            path.write_bytes(pretty_bytes(doc))
        checked = validate_one(path, prepared=prepared)
        if checked.error is not None:
            refused.append(f"{method}/{name}: {checked.error.message}")
            path.unlink()
            path.parent.rmdir()
            continue
        written += 1
        lr = training["optimizer_kwargs"]["lr"]
        print(f"{method}/{name}: lr {lr:g}, {checked.trainable_params:,} trainable")
    print(f"{written} transplanted into {args.into / args.to}; {len(refused)} refused:")
    for line in refused:
        print(f"  {line}")


if __name__ == "__main__":
    main()
