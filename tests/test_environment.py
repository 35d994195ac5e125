from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import git

from peftrepro.environment import EXACT_FIELDS, distributions, fingerprint, git_state


def test_git_state_counts_untracked_files_as_dirty(tmp_path: Path) -> None:
    repo = git.Repo.init(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    repo.index.add(["a.txt"])
    repo.index.commit(
        "one", author=git.Actor("t", "t@example.org"), committer=git.Actor("t", "t@example.org")
    )
    clean = git_state(tmp_path)
    assert clean == {"commit": repo.head.commit.hexsha, "dirty": False}
    (tmp_path / "new.txt").write_text("untracked")
    assert git_state(tmp_path)["dirty"] is True
    (tmp_path / "new.txt").unlink()
    (tmp_path / "a.txt").write_text("changed")
    assert git_state(tmp_path)["dirty"] is True


def test_git_state_outside_a_repository_is_unknown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PEFTREPRO_GIT_COMMIT", raising=False)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_fingerprint_hash_covers_exact_fields_only() -> None:
    a = fingerprint(runner="local", seed=0, manifest_sha256="0" * 64, artifacts={"model": {"x": 1}})
    b = fingerprint(runner="local", seed=1, manifest_sha256="1" * 64, artifacts={"model": {"x": 1}})
    c = fingerprint(runner="local", seed=0, manifest_sha256="0" * 64, artifacts={"model": {"x": 2}})
    d = fingerprint(runner="docker", seed=0, manifest_sha256="0" * 64, artifacts={"model": {"x": 1}})
    assert a["environment_sha256"] == b["environment_sha256"]  # seed and manifest are not environment
    assert len({a["environment_sha256"], c["environment_sha256"], d["environment_sha256"]}) == 3
    assert set(EXACT_FIELDS) <= set(a)
    assert a["distributions"] == sorted(a["distributions"]) == distributions()
    assert a["accelerator"]["kind"] in ("cpu", "cuda")
    assert a["os"]["cpu_count"] >= 1


def test_importing_ray_does_not_change_the_installed_distributions() -> None:
    """Ray puts its vendored copies (colorama, psutil) on sys.path when imported; a Ray driver or
    worker, and every job forked after it, then saw an extra colorama, and its records could not be
    compared with a local run's. Checked in a fresh interpreter, whose path this test's does not share."""
    probe = (
        "import importlib.metadata as m, json\n"
        "from peftrepro.environment import distributions\n"
        "names = lambda: sorted({(d.metadata['Name'] or '').lower() for d in m.distributions()})\n"
        "before, raw_before = distributions(), names()\n"
        "import ray\n"
        "print(json.dumps([before, distributions(), sorted(set(names()) - set(raw_before))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, after, vendored = json.loads(out.stdout)
    assert "colorama" in vendored  # the leak this guards against is there to be seen
    assert after == before
    assert not any(d.startswith("colorama==") for d in after)
