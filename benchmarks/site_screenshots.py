"""Screenshots of the leaderboard site as a reader sees it, in Debian's Chromium (headless): each task
page as generated, and a filtered view of each (a memory budget at the median row's memory, the
scatter on memory), so that a person can look at what the tests only assert. Prints the site's size
and each screenshot's path; the PNGs are written outside the repository (`--out`) and never
committed.

    .venv/bin/python benchmarks/site_screenshots.py [--site leaderboard/site] [--out /tmp/peftrepro-site]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.browser

from tests.browser import Browser


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--site", type=Path, default=Path("leaderboard/site"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/peftrepro-site"))
    args = parser.parse_args()
    files = sorted(p for p in args.site.iterdir() if p.is_file())
    print(f"site: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KiB")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Browser.start() as b:
        for page in files:
            if page.suffix != ".html":
                continue
            b.open(page)
            shot = args.out / f"{page.stem}.png"
            size = b.screenshot(shot)
            print(f"{page.name}: {page.stat().st_size / 1024:.0f} KiB -> {shot} ({size / 1024:.0f} KiB)")
            if page.stem == "index":
                continue
            data = json.loads(b.evaluate("document.getElementById('data').textContent"))
            mems = [
                r["stats"]["peak_memory_bytes"][0]
                for r in data["rows"]
                if r["stats"].get("peak_memory_bytes")
            ]
            if not mems:
                continue
            budget = f"{statistics.median(mems) / 2**30:.3g}"
            b.open(page, f"#mem={budget}")
            shown = b.evaluate("document.getElementById('shown').textContent")
            shot = args.out / f"{page.stem}-mem{budget}.png"
            b.screenshot(shot)
            print(f"  #mem={budget}: {shown} -> {shot}")
    print(f"browser time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
