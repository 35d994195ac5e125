"""One SVG per task: headline score against the task's cost axis, Pareto front drawn.

Byte-identical for identical rows: no date in the metadata, a fixed id salt, text kept as text
(no font outlines, so the bytes do not depend on the fonts installed).
"""

from __future__ import annotations

import io
import math

from peftrepro.leaderboard import Row
from peftrepro.metrics import METRICS_BY_KEY
from peftrepro.tasks import get_task

LABEL_LIMIT = 40  # beyond this many points only the front is labelled
LABEL_SIZE = 7  # points
# Where a label may sit relative to its point (offset in points, alignment), in order of preference.
LABEL_SPOTS = [(4, 3, "left"), (4, -9, "left"), (-4, 3, "right"), (-4, -9, "right")]
LABEL_SPOTS += [(4, 10, "left"), (4, -16, "left"), (-4, 10, "right"), (-4, -16, "right")]


def place_labels(ax, points: list[tuple[float, float]], labelled: list) -> list[tuple[int, int, str]]:
    """A spot for each label that overlaps no earlier label, no marker and no axes edge (the first spot
    when none is free). Widths are estimated from the character count, not measured, so that the
    layout does not depend on the fonts installed; the estimate is generous for DejaVu Sans."""
    pt = ax.figure.dpi / 72  # display pixels per point
    box = ax.get_window_extent()
    to_px = ax.transData.transform
    taken = [(px - 3 * pt, py - 3 * pt, px + 3 * pt, py + 3 * pt) for px, py in (to_px(p) for p in points)]
    spots = []
    for r, x, y in labelled:
        px, py = to_px((x, y))
        w, h = 0.6 * LABEL_SIZE * len(r.sub.name_in_task) * pt, 1.1 * LABEL_SIZE * pt
        candidates = []
        for dx, dy, ha in LABEL_SPOTS:
            x0 = px + dx * pt - (w if ha == "right" else 0)
            candidates.append(((dx, dy, ha), (x0, py + dy * pt, x0 + w, py + dy * pt + h)))
        free = [c for c in candidates if inside(c[1], box) and not any(overlap(c[1], t) for t in taken)]
        spot, rect = (free or candidates)[0]
        taken.append(rect)
        spots.append(spot)
    return spots


def inside(r: tuple[float, ...], box) -> bool:
    return box.x0 <= r[0] and r[2] <= box.x1 and box.y0 <= r[1] and r[3] <= box.y1


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def task_plot(task_name: str, rows: list[Row], fmt: str = "svg") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = get_task(task_name)
    score, cost = METRICS_BY_KEY[t.score_key], METRICS_BY_KEY[t.pareto_cost_key]
    scale, unit = (2**30, "GiB") if cost.unit == "bytes" else (1.0, cost.unit)
    shown = [r for r in rows if r.status not in ("stale", "superseded", "awaiting_run")]
    pts = [(r, r.value(t.pareto_cost_key) / scale, r.value(t.score_key)) for r in shown]
    pts = [(r, x, y) for r, x, y in pts if math.isfinite(x) and math.isfinite(y)]
    with matplotlib.rc_context({"svg.hashsalt": "peftrepro", "svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        # (label, rows, edge colour, face colour, marker)
        groups = [
            (
                "on the Pareto front",
                [p for p in pts if p[0].front and not p[0].front_unsure],
                "#1f5fa8",
                "#1f5fa8",
                "o",
            ),
            (
                "on the front by its mean only (not significant)",
                [p for p in pts if p[0].front and p[0].front_unsure],
                "#1f5fa8",
                "white",
                "o",
            ),
            (
                "verified / claimed",
                [p for p in pts if not p[0].front and p[0].status in ("verified", "claimed")],
                "#7f9fc8",
                "none",
                "o",
            ),
            (  # the label is ours: an accelerator's name from a claim could hold mathtext ($...$)
                "published, not re-run (their accelerator)",
                [p for p in pts if p[0].status == "published"],
                "#888888",
                "none",
                "^",
            ),
            (
                "flagged / not reproduced",
                [p for p in pts if p[0].status in ("flagged", "not_reproduced")],
                "#b03030",
                "#b03030",
                "x",
            ),
        ]
        for label, group, edge, face, marker in groups:
            if not group:
                continue
            xs, ys = [x for _, x, _ in group], [y for _, _, y in group]
            if marker == "x":  # an unfilled marker takes one colour
                ax.scatter(xs, ys, label=label, marker=marker, color=edge, s=28, zorder=3)
            else:
                ax.scatter(
                    xs, ys, label=label, marker=marker, edgecolors=edge, facecolors=face, s=28, zorder=3
                )
        bars = [(x, y, r.interval) for r, x, y in pts if r.interval is not None]
        if bars:  # 95% intervals (seeds and test items): one path, segments split by NaN, so the SVG
            # has one element for all rows (an errorbar collection writes one per row, and caps: 3x
            # the time and 2.5x the bytes at 1000 rows)
            nan = float("nan")
            ax.plot(
                [v for x, _, _ in bars for v in (x, x, nan)],
                [v for _, y, i in bars for v in (min(y, i.low), max(y, i.high), nan)],
                color="#999999",
                linewidth=0.8,
                zorder=1,
            )
        bases = [r.value("base_" + t.score_key) for r, _, _ in pts]
        bases = [b for b in bases if math.isfinite(b)]
        if bases:
            ax.axhline(max(bases), color="#b03030", linestyle="--", linewidth=0.8, label="untuned base model")
        if score.unit == "fraction":
            ax.set_ylim(0, 1)
        front = sorted((x, y) for r, x, y in pts if r.front)
        if front:
            ax.step(
                [x for x, _ in front],
                [y for _, y in front],
                where="post",
                color="#1f5fa8",
                linewidth=1,
                zorder=2,
            )
        labelled = pts if len(pts) <= LABEL_LIMIT else [p for p in pts if p[0].front]
        labelled = sorted(labelled, key=lambda p: (not p[0].front, p[0].sub.key))  # the front gets first pick
        fig.tight_layout()  # fix the axes box so that data coordinates map to their final pixels
        spots = place_labels(ax, [(x, y) for _, x, y in pts], labelled)
        for (r, x, y), (dx, dy, ha) in zip(labelled, spots, strict=True):
            ax.annotate(
                r.sub.name_in_task,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                fontsize=LABEL_SIZE,
            )
        ax.set_xlabel(f"{cost.label} ({unit}, lower is better)")
        ax.set_ylabel(f"{score.label} (higher is better)")
        ax.set_title(f"{task_name} — {t.base_model_id}")
        ax.grid(True, linewidth=0.3)
        if pts:
            ax.legend(loc="lower right", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None, dpi=110)
        plt.close(fig)
    return buf.getvalue()
