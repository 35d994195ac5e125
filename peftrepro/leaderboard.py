"""The leaderboard: rows from records alone, Pareto front, Markdown pages, one plot per task.

`render` is a pure function of the submissions tree: identical inputs give identical bytes (sorted
everything, fixed number formats, no timestamps), so `--check` can gate CI. Every string that came
from a manifest or a record is escaped before it reaches Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from peftrepro import stats
from peftrepro.collect import Stored, Submission
from peftrepro.compare import NOT_REPRODUCED, REPRODUCED
from peftrepro.metrics import CHECK_MARKS, CHECKS
from peftrepro.records import RunRecord
from peftrepro.stats import Interval, Paired
from peftrepro.tasks import get_task

COMMAND = "peftrepro leaderboard"
STATUSES = {
    "verified": (
        "a verifier listed in verifiers/allowed_signers signed a re-run (`peftrepro verify`) that reproduced "
        "at least one seed's record under the policy; the row names who, and the seeds no one re-ran"
    ),
    "claimed": "records exist for the current manifest; no signed verification yet",
    "not_reproduced": "a signed verification of one of its records failed: the numbers are disputed",
    "flagged": (
        "mean score no better than the untuned base model's by more than one seed std: a broken setup, "
        "not a method result"
    ),
    "failed": "the newest run of the current manifest failed and none succeeded",
    "stale": "only records of an earlier manifest, task version or record format exist (reason given)",
    "superseded": "a newer submission declares `supersedes` for it: shown under History",
    "published": (
        "figures from a published result file (claims/, `peftrepro import`), not re-run here: one "
        "run on the accelerator named, no interval, tier or verification; never on the front"
    ),
    "awaiting_run": "a valid manifest with no run yet (a GPU track's imported experiments, say)",
}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample standard deviation; None with one seed
    n: int


def stat(values: list[Any]) -> Stat | None:
    vals = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals or len(vals) != len(values):
        return None
    n = len(vals)
    mean = math.fsum(vals) / n
    # statistics.stdev's exact rationals cost 40 us a call, thousands of calls a page; this differs
    # from it in the last bits at most, far below the three decimals shown.
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return Stat(mean, std, n)


@dataclass
class Row:
    sub: Submission
    status: str
    records: list[Stored]
    stats: dict[str, Stat | None] = field(default_factory=dict)
    verified_seeds: list[int] = field(default_factory=list)  # reproduced by a signed verification
    verifiers: list[str] = field(default_factory=list)  # who signed them
    unsigned: dict[int, str] = field(default_factory=dict)  # seed -> a re-run no listed verifier vouches for
    note: str = ""
    front: bool = False
    checks: str = "–"
    # From the records' per-item outcomes (stats.py), where every record of the row has them:
    outcomes: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> outcomes
    interval: Interval | None = None  # 95%, seeds and test items
    tier: int | None = None  # 1: not significantly worse than the best row
    versus: Paired | None = None  # against the task's reference row, same seeds and items
    front_unsure: str | None = None  # on the front by its mean, not significantly above this cheaper row

    def value(self, key: str) -> float:
        s = self.stats.get(key)
        return s.mean if s else math.nan


SHOWN = ("peak_memory_bytes", "train_seconds", "adapter_bytes", "trainable_params")


def _span(rec: RunRecord) -> str:
    """How long a record's run lasted, from its timestamps ("?" where they do not parse)."""
    try:
        start, end = (
            datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (rec.started_at, rec.finished_at)
        )
    except ValueError:
        return "?"
    return f"{(end - start).total_seconds():.0f} s"


def build_row(sub: Submission, score_key: str, prior_key: str = "forgetting") -> Row | None:
    """One row per submission; never run (or only cancelled): an `awaiting_run` row without figures."""
    if sub.claims:
        records = [sub.claims[s] for s in sorted(sub.claims)]
        done = sub.verifications
        found = {s: done[c.run_id] for s, c in sub.claims.items() if c.run_id in done}
        vouched = {v.signer for v in found.values() if v.signer and v.verification.verdict == REPRODUCED}
        # Only a signed verification counts, either way: an unsigned one could have been written by hand.
        verdicts = {s: v.verification.verdict for s, v in found.items() if v.signer is not None}
        row = Row(
            sub,
            "claimed",
            records,
            verified_seeds=sorted(s for s, v in verdicts.items() if v == REPRODUCED),
            verifiers=sorted(str(v) for v in vouched),
            unsigned={
                s: f"says {v.verification.verdict.replace('_', ' ')} ({v.signature.why})"
                for s, v in sorted(found.items())
                if v.signer is None
            },
        )
    elif sub.latest is not None and sub.latest.record.status == "failed":
        failed, error = [sub.latest], sub.latest.record.error
        return Row(sub, "failed", failed, note=error.message if error else "", checks=checks_cell(failed))
    elif sub.latest is None and sub.stale is not None:
        row = Row(sub, "stale", [sub.stale], note=sub.stale_reason or "")
        verdicts = {}
    elif (sub.latest is None or sub.latest.record.status == "cancelled") and sub.published:
        return published_row(sub, score_key, prior_key)
    elif sub.latest is None:
        return Row(sub, "awaiting_run", [])
    elif sub.latest.record.status == "cancelled":  # a run stopped (over a budget, say): no figures
        rec = sub.latest.record
        why = rec.error.message if rec.error else "no reason given"
        return Row(
            sub, "awaiting_run", [sub.latest], note=f"its last run was cancelled after {_span(rec)} ({why})"
        )
    else:
        return None
    row.checks = checks_cell(row.records)
    for key in (score_key, "base_" + score_key, prior_key, *SHOWN):
        row.stats[key] = stat([metrics_of(r).get(key) for r in row.records])
    if row.status == "stale":
        return row
    # parse_record checked each field against its score; a row mixing records with and without
    # outcomes gets no interval (its seeds would not be counted alike).
    row.outcomes = stats.outcomes_by_seed(
        {r.record.seed: metrics_of(r).get("test_outcomes") for r in row.records}
    )
    base, score = row.stats["base_" + score_key], row.stats[score_key]
    if NOT_REPRODUCED in verdicts.values():
        row.status = "not_reproduced"
    # A mean above the base by less than one seed std is one lucky seed, not learning: with three
    # seeds and a small test set, a broken adapter's scores scatter around the base model's.
    elif base is not None and score is not None and score.mean - (score.std or 0.0) <= base.mean:
        spread = f" ± {score.std:.3f}" if score.std is not None else ""
        relation = "is within one seed std of" if score.mean > base.mean else "≤"
        row.status, row.note = (
            "flagged",
            f"mean score {score.mean:.3f}{spread} {relation} the base model's {base.mean:.3f}",
        )
    elif row.verified_seeds:
        row.status = "verified"
    return row


def published_row(sub: Submission, score_key: str, prior_key: str) -> Row:
    """A row from published claims alone: each figure is the mean over the claims that have it
    (one claim: its value). A figure measured another way (their forgetting) is not put in ours'
    column: the row's note gives it."""
    row = Row(sub, "published", [])
    for key in (score_key, prior_key, *SHOWN):
        found = [v for c in sub.published if (v := c.metrics.get(key)) is not None]
        row.stats[key] = stat(found) if found else None
    return row


def judge_by_items(reference: str | None, candidates: list[Row], cost_key: str) -> None:
    """Tiers, the comparison with the reference row, and which front positions a paired test
    supports: all from per-item outcomes (stats.py); rows without them are left unjudged."""
    scored = {r.sub.name_in_task: r for r in candidates if r.outcomes}
    for name, tier in stats.tiers({k: r.outcomes for k, r in scored.items()}).items():
        scored[name].tier = tier
    ref = scored.get(reference or "")
    if ref is not None:
        others = {k: r.outcomes for k, r in scored.items() if r is not ref}
        for name, versus in stats.paired_all(others, ref.outcomes).items():
            scored[name].versus = versus
    # Each judged front row against the best strictly cheaper judged front row: the one it had to
    # beat to be there. Rows without outcomes are neither judged nor a reference.
    front = [r for r in candidates if r.front and r.outcomes]
    front.sort(key=lambda r: (r.value(cost_key), r.sub.key))
    for i, r in enumerate(front):
        cheaper = [c for c in front[:i] if c.value(cost_key) < r.value(cost_key)]
        if cheaper:
            test = stats.paired(r.outcomes, cheaper[-1].outcomes)
            if test is None or test.p >= stats.ALPHA:
                r.front_unsure = cheaper[-1].sub.name_in_task


def metrics_of(stored: Stored) -> dict[str, Any]:
    """A record's metrics ({} where a stale record of another format has none to read)."""
    return stored.record.metrics


def checks_cell(records: list[Stored]) -> str:
    """The structural checks that every record of a row carries, as marks (`I= D M R`); a check
    any record failed is marked ✗; "–" when the records predate the checks."""
    marks = []
    for c in CHECKS:
        found = [r.record.checks.get(c.key) if r.record.checks is not None else None for r in records]
        statuses = {f.get("status") for f in found if isinstance(f, dict)}
        if "failed" in statuses:
            marks.append(c.code + "✗")
        elif len(statuses) == 1 and None not in found:
            (status,) = statuses
            marks.append(c.code + CHECK_MARKS.get(str(status), ""))  # "passed" has no mark
        elif statuses and None not in found:  # seeds disagree (never seen): show the weakest
            weakest = next((k for k in reversed(list(CHECK_MARKS)) if k in statuses), None)
            marks.append(c.code + (CHECK_MARKS[weakest] if weakest else ""))
    return " ".join(marks) or "–"


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, score) points no other point dominates (cost lower is better, score higher).

    A point with a NaN or infinite coordinate is never on the front and dominates nothing; equal
    points do not dominate each other, so both stay on the front. O(n log n).
    """
    on = [False] * len(points)
    finite = sorted(
        (i for i, (c, s) in enumerate(points) if math.isfinite(c) and math.isfinite(s)),
        key=lambda i: (points[i][0], -points[i][1]),
    )
    best = -math.inf  # best score among strictly cheaper points
    k = 0
    while k < len(finite):
        cost = points[finite[k]][0]
        group = []
        while k < len(finite) and points[finite[k]][0] == cost:
            group.append(finite[k])
            k += 1
        top = points[group[0]][1]  # sorted by score descending within equal cost
        if top > best:
            for i in group:
                on[i] = points[i][1] == top
            best = top
    return on


ON_FRONT = ("verified", "claimed")  # flagged, disputed, failed and stale rows are not candidates


def task_rows(subs: list[Submission], task: str) -> list[Row]:
    t = get_task(task)
    rows = [
        r
        for s in subs
        if s.key[0] == task and s.manifest is not None and (r := build_row(s, t.score_key, t.prior_key))
    ]
    with_items = {r.sub.name_in_task: r for r in rows if r.outcomes}
    for name, interval in stats.row_intervals({k: r.outcomes for k, r in with_items.items()}).items():
        with_items[name].interval = interval
    by_key = {r.sub.name_in_task: r for r in rows}
    for s in subs:
        old = s.manifest.raw.get("supersedes") if s.key[0] == task and s.manifest else None
        if isinstance(old, str) and (target := by_key.get(old)) is not None:
            target.status, target.front = "superseded", False
            target.note = f"superseded by {s.name_in_task}" + (f"; {target.note}" if target.note else "")
    candidates = [r for r in rows if r.status in ON_FRONT]
    for r, on in zip(
        candidates,
        pareto_front([(r.value(t.pareto_cost_key), r.value(t.score_key)) for r in candidates]),
        strict=True,
    ):
        r.front = on
    judge_by_items(t.reference_row, candidates, t.pareto_cost_key)
    order = {
        "verified": 0,
        "claimed": 0,
        "not_reproduced": 1,
        "flagged": 2,
        "failed": 3,
        "stale": 4,
        "superseded": 5,
        "published": 6,
        "awaiting_run": 7,
    }
    rows.sort(key=lambda r: (order[r.status], -finite(r.value(t.score_key)), r.sub.key))
    return rows


def finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


# ---- text formatting ---------------------------------------------------------------------------

# Markup characters that can act mid-line get a backslash; `<>&` become entities.
_MD_TABLE = str.maketrans({**{c: "\\" + c for c in "\\`*_[]|~"}, "<": "&lt;", ">": "&gt;", "&": "&amp;"})


def md(text: str, limit: int = 300) -> str:
    """Text from a manifest or record, inert in Markdown and HTML: one line, markup characters
    backslash-escaped, `<>&` as entities, control characters dropped, and `../` written with an
    entity slash so that a hostile value never reads as a relative path. (It never starts a line,
    so line-start markup such as `#`, `-` or `1.` cannot take effect.)"""
    text = " ".join(str(text).split())
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.translate(_MD_TABLE).replace("../", "..&#47;")


def fmt_stat(s: Stat | None, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    if s is None:
        return "–"
    text = format(s.mean / scale, fmt) + unit
    if s.std is not None:
        text += " ± " + format(s.std / scale, fmt.lstrip("+")) + unit
    return text


def fmt_bytes(s: Stat | None) -> str:
    if s is None:
        return "–"
    b = s.mean
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_count(s: Stat | None) -> str:
    return "–" if s is None else f"{round(s.mean):,}"


def fmt_seconds(s: Stat | None) -> str:
    return "–" if s is None else (f"{s.mean:.0f} s" if s.mean < 600 else f"{s.mean / 60:.1f} min")


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines
