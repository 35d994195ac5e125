"""The static site (site.py, site.js): the HTML alone, and in a real browser (Debian's Chromium,
headless, tests/browser.py). scripts/test installs Chromium and sets PEFTREPRO_REQUIRE_BROWSER=1, so
there the browser tests fail instead of skipping when it is missing."""

from __future__ import annotations

import html.parser
import json
import os
from pathlib import Path

import pytest

from peftrepro.leaderboard import pareto_front
from peftrepro.pages import render, write
from tests.browser import Browser, find_chromium
from tests.synthetic import manifest_doc, outcomes, record, run_id, save, write_manifest

GiB = 2**30
# name -> (peak memory GiB, test accuracy, adapter MiB); the hostile title is the last row's
ROWS = {
    "a": (1.0, 0.40, 1.0),
    "b": (2.0, 0.55, 4.0),
    "c": (3.0, 0.50, 2.0),
    "d": (4.0, 0.70, 8.0),
    "e": (5.0, 0.72, 16.0),
}
HOSTILE = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def build(root: Path) -> None:
    for i, (name, (mem, acc, adapter)) in enumerate(ROWS.items()):
        title = HOSTILE if name == "e" else f"row {name}"
        m = write_manifest(root, manifest_doc("lora", name, {"peft_type": "LORA", "r": 1 + i}, title=title))
        for seed in range(3):
            score = acc + 0.01 * (seed - 1)
            rec = record(
                m,
                seed,
                run_id(i, seed, 60 * i + seed),
                test_accuracy=score,
                test_outcomes=outcomes(score, f"{name}{seed}"),
                peak_memory_bytes=int(mem * GiB),
                adapter_bytes=int(adapter * 2**20),
            )
            save(m.path.parent, "runs", rec)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root, out = tmp_path / "submissions", tmp_path / "leaderboard"
    build(root)
    files, _ = render(root, out)
    write(out, files)
    return out / "site"


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_site_reads_without_javascript_and_escapes_manifest_text(site: Path, tmp_path: Path) -> None:
    page = (site / "arithmetic.html").read_text()
    parsed = _Text()
    parsed.feed(page)
    groups = [a for tag, a in parsed.tags if tag == "tbody" and "data-name" in a]
    assert [a["data-name"] for a in groups] == [
        "lora/e",
        "lora/d",
        "lora/b",
        "lora/c",
        "lora/a",
    ]  # best first
    assert (
        sum(tag == "details" for tag, _ in parsed.tags) == 5
    )  # each row's detail, openable without a script
    scripts = [a for tag, a in parsed.tags if tag == "script"]
    assert scripts == [{"type": "application/json", "id": "data"}, {"src": "site.js"}]  # nothing else runs
    assert not any(tag == "img" and a.get("src") == "x" for tag, a in parsed.tags)
    assert json.dumps(HOSTILE) in "".join(parsed.text)  # shown as text, in the detail's manifest
    assert not any(a.get("href", "").startswith(("http:", "https:", "//")) for _, a in parsed.tags)
    # Same records, same bytes; the script and style are the package's own files.
    again, _ = render(tmp_path / "submissions", tmp_path / "leaderboard")
    assert again["site/arithmetic.html"] == page.encode()
    assert (
        again["site/site.js"] == (Path(__file__).parent.parent / "peftrepro/site_assets/site.js").read_bytes()
    )


browser_only = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("PEFTREPRO_REQUIRE_BROWSER"),
    reason="no Chromium (scripts/test installs it)",
)


def _shown(b: Browser) -> list[str]:
    return b.evaluate(
        "[...document.querySelectorAll('#rows > tbody')].filter(g => !g.hidden).map(g => g.dataset.name)"
    )


def _front(b: Browser) -> list[str]:
    return b.evaluate(
        "[...document.querySelectorAll('#rows > tbody.shown-front')].map(g => g.dataset.name).sort()"
    )


@browser_only
def test_a_memory_budget_typed_in_filters_the_rows_and_recomputes_the_front(site: Path) -> None:
    with Browser.start() as b:
        b.open(site / "arithmetic.html")
        assert len(_shown(b)) == 5
        assert b.evaluate("window.pwned") is None  # the hostile title ran nothing
        b.evaluate("document.querySelector('input[name=mem]').focus()")
        b.type("3.5")  # typed, as a reader would: input events, not a set value
        shown = sorted(_shown(b))
        assert shown == ["lora/a", "lora/b", "lora/c"]
        kept = [ROWS[n.split("/")[1]] for n in shown]
        expected = [
            n for n, on in zip(shown, pareto_front([(m, acc) for m, acc, _ in kept]), strict=True) if on
        ]
        assert _front(b) == expected == ["lora/a", "lora/b"]  # c costs more than b and scores less
        assert b.evaluate("document.querySelectorAll('#plot circle').length") == 3
        assert b.evaluate("document.querySelectorAll('#plot circle.on-front').length") == 2
        assert b.evaluate("location.hash") == "#mem=3.5"
        # The state travels in the URL: a shared link opens the same view, adapter budget too.
        b.open(site / "arithmetic.html", "#adapter=3&mem=10")
        assert sorted(_shown(b)) == ["lora/a", "lora/c"]
        assert b.evaluate("document.querySelector('input[name=adapter]').value") == "3"


@browser_only
def test_sorting_and_opening_a_detail_work_from_the_keyboard(site: Path, tmp_path: Path) -> None:
    with Browser.start() as b:
        b.open(site / "arithmetic.html")
        b.evaluate("document.querySelector('button[data-sort=peak_memory_bytes]').focus()")
        b.key("Enter")  # memory: lower is better, so the cheapest first
        assert _shown(b) == ["lora/a", "lora/b", "lora/c", "lora/d", "lora/e"]
        b.key("Enter")
        assert _shown(b) == ["lora/e", "lora/d", "lora/c", "lora/b", "lora/a"]
        assert b.evaluate("document.activeElement.closest('th').getAttribute('aria-sort')") == "descending"
        b.evaluate("document.querySelector('#detail-lora\\\\/c summary').focus()")
        b.key("Enter")
        assert b.evaluate("document.getElementById('detail-lora/c').open") is True
        assert b.wait_for("location.hash.includes('open=lora/c')")  # details' toggle event comes later
        text = b.evaluate("document.getElementById('detail-lora/c').innerText")
        assert "peftrepro run submissions/arithmetic/lora/c --seeds 0,1,2" in text and '"r": 3' in text
        b.open(site / "arithmetic.html", "#open=lora/e")
        assert b.evaluate("document.getElementById('detail-lora/e').open") is True
        detail = b.evaluate("document.getElementById('detail-lora/e').innerText")
        assert json.dumps(HOSTILE) in detail and b.evaluate("window.pwned") is None
        assert b.screenshot(tmp_path / "page.png") > 10_000


def test_the_data_for_the_script_cannot_close_its_element(site: Path) -> None:
    page = (site / "arithmetic.html").read_text()
    start = page.index('<script type="application/json" id="data">') + len(
        '<script type="application/json" id="data">'
    )
    body = page[start : page.index("</script>", start)]
    data = json.loads(body)
    assert {r["name"] for r in data["rows"]} == {f"lora/{n}" for n in ROWS}
    assert "<" not in body and ">" not in body
