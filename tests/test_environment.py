from __future__ import annotations

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
