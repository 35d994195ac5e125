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
            ("on the Pareto front", [p for p in pts if p[0].front], "#1f5fa8", "#1f5fa8", "o"),
            (
                "verified / claimed",
                [p for p in pts if not p[0].front and p[0].status in ("verified", "claimed")],
                "#7f9fc8",
                "none",
                "o",
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
        spread: list[tuple[float, float, float]] = []
        for r, x, y in pts:
            s = r.stats.get(t.score_key)
            if s is not None and s.std is not None:
                spread.append((x, y, s.std))
        if spread:  # seed spread, one artist for all rows
            ax.errorbar(
                [p[0] for p in spread],
                [p[1] for p in spread],
                yerr=[p[2] for p in spread],
                fmt="none",
                ecolor="#999999",
                elinewidth=0.8,
                capsize=2,
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
        for r, x, y in sorted(labelled, key=lambda p: p[0].sub.key):
            ax.annotate(
                f"{r.sub.key[1]}/{r.sub.key[2]}",
                (x, y),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
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
