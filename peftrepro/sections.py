"""The sections of a task's leaderboard page, each a list of Markdown lines, and the cells they
share with the overview. pages.py puts them together and writes the files.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from peftrepro import stats
from peftrepro.collect import Stored, StoredClaim, Submission
from peftrepro.compare import rerun_accelerator
from peftrepro.leaderboard import (
    STATUSES,
    Row,
    Stat,
    finite,
    fmt_bytes,
    fmt_count,
    fmt_seconds,
    fmt_stat,
    md,
    metrics_of,
    table,
)
from peftrepro.metrics import CHECKS, METRICS_BY_KEY, prior_format
from peftrepro.stats import ALPHA, MIN_SEEDS, Paired
from peftrepro.sweep import rate_summary, swept_config_sha256
from peftrepro.tasks import Task, get_task


def link(root_rel: str, *parts: str) -> str:
    return "/".join((root_rel, *parts))


def ignored_line(path: Path, why: str, root: Path, root_rel: str) -> str:
    rel = path.relative_to(root).as_posix()
    return f"- [{md(rel)}]({link(root_rel, quote(rel))}): {md(why)}"


def records_cell(row: Row, root_rel: str) -> str:
    links = [
        f"[published]({link(root_rel, *row.sub.key, c.path.relative_to(row.sub.folder).as_posix())})"
        for c in row.sub.published
    ]
    for r in row.records:
        seed = r.record.seed
        rel = r.path.relative_to(row.sub.folder).as_posix()
        mark = "✓" if seed in row.verified_seeds else ""
        links.append(f"[s{seed}{mark}]({link(root_rel, *row.sub.key, rel)})")
    return " ".join(links)


def submission_cell(row: Row, root_rel: str) -> str:
    task, method, name = row.sub.key
    return f"[{md(method)}/{md(name)}]({link(root_rel, task, method, name, 'manifest.json')})"


def status_cell(row: Row) -> str:
    if row.status == "verified":
        return f"verified ({len(row.verified_seeds)}/{len(row.records)} seeds, by {', '.join(row.verifiers)})"
    if row.status == "published":
        return "published (not re-run)"
    return row.status.replace("_", " ")


def front_cell(row: Row) -> str:
    """★ on the Pareto front; ☆ on it by its mean only (not significantly above a cheaper row)."""
    return ("☆" if row.front_unsure else "★") if row.front else ""


def interval_cell(row: Row) -> str:
    return "–" if row.interval is None else f"[{row.interval.low:.3f}, {row.interval.high:.3f}]"


def finding(p: Paired) -> str:
    if p.p >= ALPHA:
        return "no significant difference"
    return "better" if p.effect > 0 else "worse"


def row_note(row: Row) -> str:
    """The row's note, plus what its verifications do not cover: seeds no verifier re-ran (their
    figures are the contributor's word), and re-runs that no listed verifier signed; and what its
    interval and tier rest on."""
    parts = [row.note] if row.note else []
    parts += [published_note(row, c) for c in row.sub.published]
    if len(row.outcomes) == 1:
        parts.append("one seed: its interval counts test items only; no tier or paired test")
    if row.front_unsure:
        parts.append(f"on the front by its mean, but not significantly above the cheaper {row.front_unsure}")
    if row.verified_seeds:
        rest = [str(r.record.seed) for r in row.records if r.record.seed not in row.verified_seeds]
        if rest:
            parts.append(f"seeds no verifier re-ran: {', '.join(rest)}")
    parts += [
        f"seed {seed}: a re-run {what}: not counted until a listed verifier signs it"
        for seed, what in row.unsigned.items()
    ]
    return "; ".join(parts)


def published_note(row: Row, claim: StoredClaim) -> str:
    """Where a published figure comes from, what it is, and how it compares with our records."""
    src, m = claim.data["source"], claim.metrics
    score_key = get_task(row.sub.key[0]).score_key
    theirs = m.get(score_key)
    said = f"published {theirs:.3f}" if isinstance(theirs, int | float) else "published"
    where = f"{src['repository']}@{src['commit'][:12]}, {src['path'].rsplit('/', 1)[-1]}"
    said += f" on {claim.accelerator} ({where})"
    if "forgetting_same_position" in m:
        said += f"; their forgetting (same-position definition) {m['forgetting_same_position']:.3f}"
    ours = row.stats.get(score_key) if row.records else None
    if ours is not None and isinstance(theirs, int | float):
        said += f"; ours − theirs {ours.mean - theirs:+.3f}"
    found = row.sub.published_verifications.get(claim.data["claim_id"])
    if found is not None:
        v = found.verification
        reruns = v.reruns
        here = ", ".join(sorted({rerun_accelerator(r) for r in reruns}))
        seeds = f"{len(reruns)} seed{'s' if len(reruns) != 1 else ''}"
        said += f"; re-run here on {here} ({seeds}): {v.verdict.replace('_', ' ')}"
        band = next((c["detail"] for c in v.comparisons if c["metric"] == score_key), None)
        if band:
            said += f" ({score_key} {band})"
        said += (
            f", signed by {found.signer}"
            if found.signer
            else f", not counted until a listed verifier signs it ({found.signature.why})"
        )
    return said


def main_table(t: Task, rows: list[Row], root_rel: str) -> list[str]:
    """The rows that count (not stale, not superseded), with their notes."""
    score, prior = METRICS_BY_KEY[t.score_key], METRICS_BY_KEY[t.prior_key]
    headers = ["", "submission", "status", f"{score.label} ↑", "95% interval", "tier", "seeds"]
    headers += [f"{prior.label} ↓", "peak mem. ↓", "train time ↓", "adapter size ↓", "trainable ↓"]
    headers += ["checks", "records"]
    body = [
        [
            front_cell(r),
            submission_cell(r, root_rel),
            status_cell(r),
            fmt_stat(r.stats.get(t.score_key), ".3f"),
            interval_cell(r),
            "–" if r.tier is None else str(r.tier),
            str(len(r.records)) if r.status not in ("failed", "awaiting_run", "published") else "–",
            fmt_stat(r.stats.get(t.prior_key), prior_format(t.prior_key)),
            fmt_bytes(r.stats.get("peak_memory_bytes")),
            fmt_seconds(r.stats.get("train_seconds")),
            fmt_bytes(r.stats.get("adapter_bytes")),
            fmt_count(r.stats.get("trainable_params")),
            r.checks,
            records_cell(r, root_rel),
        ]
        for r in rows
    ]
    lines = table(headers, body) if rows else ["No results yet."]
    unjudged = [r for r in rows if r.status in ("verified", "claimed") and not r.outcomes]
    if unjudged:
        lines += [
            "",
            f"{len(unjudged)} of these rows have records made before per-item outcomes were recorded: "
            "no interval, tier or paired test for them (re-run to get them).",
        ]
    notes = [f"- {submission_cell(r, root_rel)}: {md(n)}" for r in rows if (n := row_note(r))]
    return lines + (["", "Notes:", "", *notes] if notes else [])


def stale_section(t: Task, rows: list[Row], root_rel: str) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Stale rows", ""]
    lines += [
        "Their records were made for an earlier manifest, task version or record format; "
        "re-run them to bring them back.",
        "",
    ]
    body = [
        [
            submission_cell(r, root_rel),
            fmt_stat(r.stats.get(t.score_key), ".3f"),
            md(r.note),
            records_cell(r, root_rel),
        ]
        for r in rows
    ]
    return lines + table(["submission", f"{METRICS_BY_KEY[t.score_key].label}", "reason", "records"], body)


def history_section(t: Task, rows: list[Row], root_rel: str) -> list[str]:
    if not rows:
        return []
    lines = ["", "## History", "", "Submissions replaced by a newer one (its manifest's `supersedes`).", ""]
    body = [
        [
            submission_cell(r, root_rel),
            fmt_stat(r.stats.get(t.score_key), ".3f"),
            str(len(r.records)),
            md(r.note),
            records_cell(r, root_rel),
        ]
        for r in rows
    ]
    headers = ["submission", f"{METRICS_BY_KEY[t.score_key].label}", "seeds", "replaced", "records"]
    return lines + table(headers, body)


def submissions_section(subs: list[Submission]) -> list[str]:
    lines = ["", "## Submissions", ""]
    for s in subs:
        if s.manifest is None:
            lines.append(f"- {md('/'.join(s.key[1:]))}: manifest does not resolve: {md(s.problem or '')}")
        else:
            raw = s.manifest.raw
            lines.append(
                f"- **{md(s.key[1])}/{md(s.key[2])}** — {md(raw.get('title', ''))}. "
                f"{md(raw.get('description', ''), 600)}"
            )
    return lines


def ignored_section(subs: list[Submission], root: Path, root_rel: str) -> list[str]:
    ignored = [(p, why) for s in subs for p, why in s.ignored]
    if not ignored:
        return []
    lines = [
        "",
        "## Files ignored",
        "",
        "Reported so that a broken or edited file is seen, never counted:",
        "",
    ]
    return lines + [ignored_line(p, why, root, root_rel) for p, why in ignored]


def judging_section(t: Task) -> list[str]:
    """How rows are judged: the verification policy, the statuses, the columns, the checks."""
    lines = ["", "## How rows are judged", "", f"- Verification policy: {t.verification.describe()}."]
    lines += [f"- `{k}`: {v}" for k, v in STATUSES.items()]
    lines += ["", "Columns:", ""]
    for key in (
        t.score_key,
        t.prior_key,
        "peak_memory_bytes",
        "train_seconds",
        "adapter_bytes",
        "trainable_params",
    ):
        m = METRICS_BY_KEY[key]
        lines.append(f"- {m.label} (`{m.key}`, {m.unit}): {m.meaning}.")
    lines += [
        "- 95% interval: of the mean score, from the records' per-item outcomes (t, with a standard "
        "error that adds the seeds' spread and the finite test set's).",
        f"- tier: 1 for the best row and every row not significantly worse than it (paired t-test on "
        f"the same seeds and test items, Holm-corrected), then 2 from the best row left, and so on: rows "
        f"of one tier are a tie. Rows with fewer than {MIN_SEEDS} seeds get none.",
        f"- ★: on the Pareto front of score against {METRICS_BY_KEY[t.pareto_cost_key].label}; ☆: on it "
        "by its mean only, not significantly above the cheaper front row (paired test).",
    ]
    lines.append(
        "- checks: the structural checks every record of the row passed (✗: failed; –: records made "
        "before the checks existed):"
    )
    lines += [f"  - {c.code} {c.label}: {c.meaning}." for c in CHECKS]
    return lines


SAMPLES_SHOWN = 5  # rows whose sample grids the page shows, best score first
SAMPLES_MAX_BYTES = 1 << 20


def samples_file(record: Stored) -> tuple[Path, str | None]:
    """The sample grid saved next to a record, and why it cannot be shown (None: it can). Only a
    plain file whose bytes match the sha256 the record carries is shown: never a link."""
    png = record.path.with_suffix(".png")
    want = metrics_of(record).get("samples_sha256")
    if png.is_symlink():
        return png, "grid is a symbolic link; not shown"
    if not png.is_file():
        return png, "grid missing"
    if png.stat().st_size > SAMPLES_MAX_BYTES:
        return png, "grid too large"
    if hashlib.sha256(png.read_bytes()).hexdigest() != want:
        return png, "grid does not match its record's samples_sha256"
    return png, None


def samples_section(score_key: str, rows: list[Row], root_rel: str) -> list[str]:
    """Image tasks: the sample grids of the best rows (lowest claimed seed of each)."""
    shown = [r for r in rows if r.records and "samples_sha256" in metrics_of(r.records[0])]
    if not shown:
        return []
    shown.sort(key=lambda r: (-finite(r.value(score_key)), r.sub.key))
    lines = [
        "",
        "## Samples",
        "",
        f"The {min(len(shown), SAMPLES_SHOWN)} best rows by {METRICS_BY_KEY[score_key].label}: each run's "
        "grid, saved next to its record and checked against the record's `samples_sha256`. Top: the new "
        "concept, ten fixed seeds; bottom: one sample of each known class with the adapter on (drift).",
        "",
    ]
    for r in shown[:SAMPLES_SHOWN]:
        record = r.records[0]
        png, problem = samples_file(record)
        head = f"- {submission_cell(r, root_rel)}, seed {record.record.seed}"
        if problem:
            lines.append(f"{head}: {problem}")
        else:
            rel = png.relative_to(r.sub.folder).as_posix()
            lines.append(
                f"{head}:<br>![samples of {md('/'.join(r.sub.key[1:]))}]({link(root_rel, *r.sub.key, rel)})"
            )
    return lines


def comparison_section(task_name: str, rows: list[Row], root_rel: str, published: list[Row]) -> list[str]:
    """Who leads on each axis (from the rows' means), and the ranking against the published
    results of the task's `published_task` (`published`: that task's rows with claims)."""
    t = get_task(task_name)
    prior = METRICS_BY_KEY[t.prior_key]
    ranked = [r for r in rows if r.status in ("verified", "claimed")]
    if not ranked:
        return []
    lines = [
        "",
        "## How the methods compare",
        "",
        "The five best verified or claimed rows on each axis (means over seeds, from the table above):",
        "",
    ]
    axes: tuple[tuple[str, str, bool, Callable[[Stat | None], str]], ...] = (
        (METRICS_BY_KEY[t.score_key].label, t.score_key, True, lambda s: fmt_stat(s, ".3f")),
        ("peak memory", "peak_memory_bytes", False, fmt_bytes),
        ("adapter size", "adapter_bytes", False, fmt_bytes),
        (prior.label, t.prior_key, False, lambda s: fmt_stat(s, prior_format(t.prior_key))),
    )
    for label, key, higher, fmt in axes:
        known = [r for r in ranked if math.isfinite(r.value(key))]
        known.sort(key=lambda r: (-r.value(key) if higher else r.value(key), r.sub.key))
        best = ", ".join(f"{submission_cell(r, root_rel)} {fmt(r.stats.get(key))}" for r in known[:5])
        lines.append(f"- {label} {'↑' if higher else '↓'}: {best or '–'}")
    measured = [r for r in rows if r.status in AGREEMENT_STATUSES]
    return (
        lines
        + significance_section(t, ranked, root_rel)
        + published_section(t, measured, published, root_rel)
    )


def significance_section(t: Task, ranked: list[Row], root_rel: str) -> list[str]:
    """What the per-item outcomes support: the tiers, and each row against the reference row."""
    tiered = [r for r in ranked if r.tier is not None]
    tiered.sort(key=lambda r: (r.tier or 0, -r.value(t.score_key), r.sub.key))
    if not tiered:
        return []
    score = METRICS_BY_KEY[t.score_key].label
    lines = [
        "",
        f"By {score}, from the records' per-item outcomes (paired t-test over seeds and test items, "
        f"95%; tiers Holm-corrected from the top down; rows with fewer than {MIN_SEEDS} seeds or without "
        "outcomes are not judged):",
        "",
    ]
    for tier in sorted({r.tier for r in tiered if r.tier is not None}):
        members = [r for r in tiered if r.tier == tier]
        cells = ", ".join(f"{submission_cell(r, root_rel)} {r.value(t.score_key):.3f}" for r in members)
        what = "no significant difference among them" if len(members) > 1 else "alone"
        lines.append(f"- tier {tier} ({what}): {cells}")
    ref = next((r for r in ranked if r.sub.name_in_task == t.reference_row and r.outcomes), None)
    versus = [r for r in tiered if r.versus is not None]
    if ref is None or not versus:
        return lines
    lines += [
        "",
        f"Each row against {submission_cell(ref, root_rel)} on the seeds both have and the same test items:",
        "",
    ]
    body = [
        [
            submission_cell(r, root_rel),
            f"{r.versus.effect:+.3f}",
            f"[{r.versus.interval.low:+.3f}, {r.versus.interval.high:+.3f}]",
            f"{r.versus.p:.3f}",
            str(r.versus.seeds),
            finding(r.versus),
        ]
        for r in versus
        if r.versus is not None
    ]
    headers = ["submission", "difference", "95% interval", "p", "seeds"]
    headers.append(f"against {md(ref.sub.name_in_task)}")
    return lines + table(headers, body)


# The rows a ranking against published results is read from: a flagged row (no better than the base
# model) is a measured result, and the public rankings have such rows too (ln-tuning at 0.000).
AGREEMENT_STATUSES = ("verified", "claimed", "flagged")


def published_section(t: Task, ranked: list[Row], published: list[Row], root_rel: str) -> list[str]:
    """Our best row per method family against the best published figure per family of the task
    this one is read against (its claims, `peftrepro import`): the two rankings and their Spearman
    correlation over the families both have, and the families only one side has. `ranked`: the
    rows of AGREEMENT_STATUSES."""
    if t.published_task is None or not published:
        return []
    pt = get_task(t.published_task)
    theirs, ours = best_per_family(t, ranked, published)
    shared = sorted((f for f in theirs if f in ours), key=lambda f: (-theirs[f][0], f))
    sources = sorted(
        {
            f"{c.data['source']['repository']}@{c.data['source']['commit'][:12]}"
            for r in published
            for c in r.sub.published
        }
    )
    accelerators = sorted({c.accelerator for r in published for c in r.sub.published})
    lines = [
        "",
        f"Against the published results of `{pt.name}` ({md(', '.join(sources))}, on "
        f"{md(', '.join(accelerators))}; {METRICS_BY_KEY[pt.score_key].label}, best experiment per method "
        "family), read from their claims:",
        "",
    ]
    calibrated = t.calibration_families
    body = [
        [
            md(f),
            f"{theirs[f][0]:.3f} ({submission_cell(theirs[f][1], root_rel)})",
            f"{submission_cell(ours[f], root_rel)} {fmt_stat(ours[f].stats.get(t.score_key), '.3f')}",
        ]
        + (["in" if f in calibrated else "**out**"] if calibrated else [])
        for f in shared
    ]
    headers = ["method", "published (best)", "here (best row)"]
    lines += (
        table(headers + (["sample"] if calibrated else []), body)
        if body
        else ["No method family on both sides."]
    )
    figures = {f: (theirs[f][0], ours[f].value(t.score_key)) for f in shared}
    lines += agreement_lines(figures, calibrated)
    lines += experiment_agreement_lines(t, ranked, published, theirs)
    if t.prior_key is not None:  # the other axis (drift), of the same best experiment on each side
        lines += _prior_agreement(t, theirs, ours, shared, calibrated)
    missing = sorted(f for f in theirs if f not in ours)
    extra = sorted(f for f in ours if f not in theirs)
    lines += [
        "",
        f"Their methods without a verified, claimed or flagged row here ({len(missing)} of {len(theirs)}): "
        f"{md(', '.join(missing), 2000) or '–'}.",
        f"Rows here whose method they do not run: {md(', '.join(extra), 2000) or '–'}.",
    ]
    return lines


def prior_figures(
    t: Task, theirs: dict[str, tuple[float, Row, dict[str, Any]]], ours: dict[str, Row], shared: list[str]
) -> dict[str, tuple[float, float]]:
    """Family -> (published, ours) on the task's second axis (its prior key: drift), of the same best
    experiments, where the published claims measured it too."""
    key = t.prior_key
    if key is None:
        return {}
    return {
        f: (float(theirs[f][2][key]), ours[f].value(key))
        for f in shared
        if isinstance(theirs[f][2].get(key), int | float) and not math.isnan(ours[f].value(key))
    }


def _prior_agreement(
    t: Task,
    theirs: dict[str, tuple[float, Row, dict[str, Any]]],
    ours: dict[str, Row],
    shared: list[str],
    calibrated: frozenset[str],
) -> list[str]:
    """The second axis (lower is better on both sides) in a table and its rank agreement."""
    prior = prior_figures(t, theirs, ours, shared)
    if not prior or t.prior_key is None:
        return []
    label = METRICS_BY_KEY[t.prior_key].label
    body = [
        [md(f), f"{a:.3f}", f"{b:.3f}"]
        for f, (a, b) in sorted(prior.items(), key=lambda kv: (kv[1][0], kv[0]))
    ]
    lines = ["", f"The same best experiments on {label} (lower is better on both sides):", ""]
    lines += table(["method", f"published {label}", f"here {label}"], body)
    return lines + agreement_lines({f: (-a, -b) for f, (a, b) in prior.items()}, calibrated, f" of {label}")


def best_per_family(
    t: Task, ranked: list[Row], published: list[Row]
) -> tuple[dict[str, tuple[float, Row, dict[str, Any]]], dict[str, Row]]:
    """Per method family: the best published figure of the task `t` is read against (with its row
    and that claim's metrics), and our best row among `ranked` (by its mean)."""
    theirs: dict[str, tuple[float, Row, dict[str, Any]]] = {}
    for best in published_per_experiment(t, published).values():
        family = best[1].sub.key[1]
        if family not in theirs or best[0] > theirs[family][0]:
            theirs[family] = best
    ours: dict[str, Row] = {}
    for r in ranked:
        family = r.sub.key[1]
        if family not in ours or r.value(t.score_key) > ours[family].value(t.score_key):
            ours[family] = r
    return theirs, ours


def published_per_experiment(t: Task, published: list[Row]) -> dict[str, tuple[float, Row, dict[str, Any]]]:
    """Per published experiment (method/name), in the order of `published`: the best figure of the
    task `t` is read against, with its row and that claim's metrics."""
    key = get_task(t.published_task or t.name).score_key
    best: dict[str, tuple[float, Row, dict[str, Any]]] = {}
    for r in published:
        for c in r.sub.published:
            score = c.metrics.get(key)
            name = r.sub.name_in_task
            if isinstance(score, bool) or not isinstance(score, int | float):
                continue
            if name not in best or score > best[name][0]:
                best[name] = (float(score), r, c.metrics)
    return best


def _shared_best(
    t: Task, rows: list[Row], published: list[Row]
) -> tuple[dict[str, tuple[float, Row, dict[str, Any]]], dict[str, Row], list[str]] | None:
    """best_per_family over the rows that count, and the families both sides have; None where the
    track reads no published task or shares fewer than 3 families with it."""
    if t.published_task is None:
        return None
    theirs, ours = best_per_family(t, [r for r in rows if r.status in AGREEMENT_STATUSES], published)
    shared = sorted(f for f in theirs if f in ours)
    return (theirs, ours, shared) if len(shared) >= 3 else None


def score_agreement(t: Task, rows: list[Row], published: list[Row]) -> float | None:
    """Spearman between the track's best row per family and the published best, on the score."""
    if (best := _shared_best(t, rows, published)) is None:
        return None
    theirs, ours, shared = best
    return stats.spearman([theirs[f][0] for f in shared], [ours[f].value(t.score_key) for f in shared])


def agreement_summary(t: Task, rows: list[Row], published: list[Row]) -> str | None:
    """One sentence for the overview: how well the track's ranking predicts the published one (out
    of sample apart, where the track names its calibration families); None below 3 families."""
    if (best := _shared_best(t, rows, published)) is None:
        return None
    theirs, ours, shared = best

    def figure(figures: dict[str, tuple[float, float]], families: list[str]) -> str:
        a = stats.rank_agreement([figures[f][0] for f in families], [figures[f][1] for f in families])
        return (
            f"{a.spearman:.2f} ({a.spearman_interval.low:.2f} to {a.spearman_interval.high:.2f}) over {a.n}"
        )

    def outside(figures: dict[str, tuple[float, float]]) -> list[str]:
        return [f for f in sorted(figures) if f not in t.calibration_families]

    score = {f: (theirs[f][0], ours[f].value(t.score_key)) for f in shared}
    text = (
        f"Rank agreement with the published `{t.published_task}` results, best row per method family: "
        f"Spearman {figure(score, shared)} families"
    )
    if t.calibration_families and len(outside(score)) >= 3:
        text += (
            f"; out of sample (families added after the design was frozen) {figure(score, outside(score))}"
        )
    experiments, outside_experiments = experiment_figures(
        t, [r for r in rows if r.status in AGREEMENT_STATUSES], published, theirs
    )
    if len(outside_experiments) >= 3:
        text += (
            f"; per public experiment out of sample {figure(experiments, outside_experiments)} experiments"
        )
    prior = {f: (-a, -b) for f, (a, b) in prior_figures(t, theirs, ours, shared).items()}
    if len(prior) >= 3 and t.prior_key is not None:
        text += f". On {METRICS_BY_KEY[t.prior_key].label}: {figure(prior, sorted(prior))} families"
        if t.calibration_families and len(outside(prior)) >= 3:
            text += f"; out of sample {figure(prior, outside(prior))}"
    return text + "."


def agreement_lines(
    figures: dict[str, tuple[float, float]], calibrated: frozenset[str], axis: str = ""
) -> list[str]:
    """Spearman and Kendall over families -> (published, ours). Where the track names the families
    its design was chosen on, the figure over them (in sample) and over the rest (out of sample)
    are given apart as well: only the second tests the design."""
    parts = [("", sorted(figures))]
    if calibrated:
        parts += [
            (
                " in sample (the families the design was chosen on)",
                sorted(f for f in figures if f in calibrated),
            ),
            (" out of sample (added after it was frozen)", sorted(f for f in figures if f not in calibrated)),
        ]
    lines = []
    for what, families in parts:
        if len(families) < 3:
            if what:
                lines += [
                    "",
                    f"Spearman rank correlation{axis}{what}: {len(families)} families, too few to rank.",
                ]
            continue
        lines += ["", _agreement_sentence(f"{axis}{what}", figures, families, "families")]
    if lines:
        lines[-1] += " `benchmarks/agreement.py` prints both rankings."
    return lines


def _agreement_sentence(
    what: str, figures: dict[str, tuple[float, float]], items: list[str], unit: str
) -> str:
    """Spearman and Kendall, with their bootstrap intervals, over items -> (published, ours)."""
    a = stats.rank_agreement([figures[i][0] for i in items], [figures[i][1] for i in items])
    si, ki = a.spearman_interval, a.kendall_interval
    return (
        f"Spearman rank correlation{what} over these {a.n} {unit}: {a.spearman:.2f} "
        f"(95% interval {si.low:.2f} to {si.high:.2f}, resampling the {unit}); "
        f"Kendall's tau {a.kendall:.2f} ({ki.low:.2f} to {ki.high:.2f})."
    )


def experiment_figures(
    t: Task,
    ranked: list[Row],
    published: list[Row],
    their_best: dict[str, tuple[float, Row, dict[str, Any]]],
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Per public experiment, where the track runs the imported configs under their own names
    (method/name on both sides): name -> (published score, our row's mean); and the names out of
    sample where the track names its calibration families: every experiment but the design's own
    (the best public experiment of each of those families), since the rest were run after the freeze."""
    theirs = published_per_experiment(t, published)
    figures = {
        r.sub.name_in_task: (theirs[r.sub.name_in_task][0], r.value(t.score_key))
        for r in ranked
        if r.sub.name_in_task in theirs and not math.isnan(r.value(t.score_key))
    }
    seen = {their_best[f][1].sub.name_in_task for f in t.calibration_families if f in their_best}
    outside = sorted(e for e in figures if e not in seen) if t.calibration_families else []
    return figures, outside


def experiment_agreement_lines(
    t: Task,
    ranked: list[Row],
    published: list[Row],
    their_best: dict[str, tuple[float, Row, dict[str, Any]]],
) -> list[str]:
    """The page's per-experiment figures (experiment_figures), where there are at least 3 pairs."""
    figures, outside = experiment_figures(t, ranked, published, their_best)
    if len(figures) < 3:
        return []
    outcomes = {r.sub.name_in_task: r.outcomes for r in ranked if r.sub.name_in_task in figures}
    what = " per public experiment (the same method/name on both sides)"
    lines = ["", _agreement_sentence(what, figures, sorted(figures), "experiments")]
    lines[-1] += _beyond_ties(figures, sorted(figures), outcomes)
    if len(outside) >= 3:
        what = (
            " per public experiment, out of sample (all but the design's own: each in-sample family's best)"
        )
        lines += ["", _agreement_sentence(what, figures, outside, "experiments")]
        lines[-1] += _beyond_ties(figures, outside, outcomes)
    return lines


def _beyond_ties(
    figures: dict[str, tuple[float, float]], items: list[str], outcomes: dict[str, dict[int, Any]]
) -> str:
    """Which items' public rank lies outside the places our row may take once its ties are allowed
    for (stats.rank_ranges); '' unless every item has per-item outcomes on MIN_SEEDS seeds."""
    if any(len(outcomes.get(i) or {}) < MIN_SEEDS for i in items):
        return ""
    ranges = stats.rank_ranges({i: outcomes[i] for i in items})
    their_ranks = stats.ranks_descending([figures[i][0] for i in items])
    gaps = stats.gaps_beyond_ties(their_ranks, [ranges[i] for i in items])
    apart = sorted(
        ((g, i) for g, i in zip(gaps, items, strict=True) if g), key=lambda gi: (-abs(gi[0]), gi[1])
    )
    shown = ", ".join(f"{md(i)} {g:+g} (places {ranges[i][0]}–{ranges[i][1]})" for g, i in apart[:5])
    return (
        f" Once our ties are allowed for (each row may take any place from 1 + the rows significantly "
        f"better than it to {len(items)} − the rows significantly worse, by paired tests on the per-item "
        f"outcomes), {len(apart)} of the {len(items)} {'differs' if len(apart) == 1 else 'differ'} "
        "from their public rank" + (f", the most: {shown}." if apart else ".")
    )


def _sweep_cell(points: list[dict], chosen: float | None, base_valid: float | None) -> str:
    """Per rate: mean final validation score over seeds, minus one standard error where there are
    several; ✗ where the rate cannot be chosen (a seed diverged)."""
    cells = []
    for r in rate_summary(points, base_valid):
        if math.isnan(r["mean"]):
            text = f"{r['lr']:g}: failed"
        else:
            text = f"{r['lr']:g}: {r['mean']:.3f}" + (f" − {r['se']:.3f}" if r["se"] is not None else "")
            text += " ✗" if r["why"] else ""
        cells.append(f"**{text}**" if r["lr"] == chosen else text)
    return " · ".join(cells)


def _sweep_binding(sub: Submission) -> str:
    """Does the manifest as it is now use the rate its sweep chose, with the config it swept?"""
    data, m = sub.sweep.data if sub.sweep else {}, sub.manifest
    if m is None:
        return "–"
    version = data["submission"]["task_version"]
    if version != get_task(m.task).version:
        return f"swept on task version {md(version)}: stale"
    if swept_config_sha256(m.resolved_config()) != data["swept_config_sha256"]:
        return "config changed since the sweep"
    lr = m.training.optimizer_kwargs.get("lr")
    return "uses the chosen rate" if lr == data["chosen_lr"] else f"uses {md(str(lr))}, not the chosen rate"


def sweep_section(subs: list[Submission], root_rel: str) -> list[str]:
    if not subs:
        return []
    lines = [
        "",
        "## Learning-rate sweeps",
        "",
        "Per learning rate: the mean final validation score over the sweep's seeds minus one standard "
        "error (`peftrepro sweep`, the task's training budget; the test split is never evaluated). The "
        "chosen rate, in bold, maximises it among the rates where no seed diverged (✗: a seed failed, "
        "ended with a non-finite loss, or scored at or below the base model); ⚠ when it is still at "
        "the edge of the rates tried. A chosen rate at an edge of the grid gets one more rate past it, "
        "a rung of the 1-3-10 ladder at a time, up to the sweep's `extend` (4 by default). Sweeps made "
        "before this rule have one seed and no standard error.",
        "",
    ]
    rows = []
    for s in subs:
        assert s.sweep is not None
        d = s.sweep.data
        rel = s.sweep.path.relative_to(s.folder).as_posix()
        seeds = ",".join(str(x) for x in d.get("seeds", [d["seed"]]))
        sweep_link = f"[{seeds}]({link(root_rel, *s.key, rel)})"
        chosen = (
            "–" if d["chosen_lr"] is None else f"{d['chosen_lr']:g}" + (" ⚠" if d["at_grid_edge"] else "")
        )
        rows.append(
            [
                f"{md(s.key[1])}/{md(s.key[2])}",
                _sweep_cell(d["points"], d["chosen_lr"], d.get("base_valid")),
                chosen,
                _sweep_binding(s),
                sweep_link,
            ]
        )
    return lines + table(
        ["submission", "learning rate: validation score", "chosen", "manifest", "seeds"], rows
    )
