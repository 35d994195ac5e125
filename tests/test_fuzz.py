"""Fuzzing every reader of untrusted files, and the hostile-tree cases of the threat model
(CONTRIBUTING.md): symbolic links, JSON bombs, writes outside leaderboard/.

Each fuzzer mutates a valid file at a random place (or replaces it with random bytes) and asks:
does the reader answer with a one-line error or a clean result, never an exception? The example
count is $PEFTREPRO_FUZZ_EXAMPLES (default 300 for each reader in the suite; the leaderboard, which
renders pages per example, gets a fiftieth, at least 20). The long run, 10,000 per reader, and the
bombs' timings are `benchmarks/fuzz.py`.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftrepro.collect import load_submission, load_tree
from peftrepro.errors import ManifestError
from peftrepro.jsonio import JSONReadError, parse_json, pretty_bytes
from peftrepro.manifest import resolve
from peftrepro.pages import render
from tests.conftest import LORA_MANIFEST
from tests.synthetic import record, run_id, verification

EXAMPLES = int(os.environ.get("PEFTREPRO_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
    | st.sampled_from(["../../etc/passwd", "<script>x</script>", "a" * 300, "\u202e", "|", "success"])
)
values = st.recursive(
    leaves,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
    max_leaves=12,
)


def paths_of(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: object keys and list indexes, at any depth."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_of(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: dict) -> bytes:
    """`doc` with one place replaced, deleted or given a new key; or random bytes; or a truncation."""
    kind = draw(st.sampled_from(["replace", "delete", "add", "bytes", "truncate"]))
    raw = json.dumps(doc).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    doc = copy.deepcopy(doc)
    where = draw(st.sampled_from(paths_of(doc)))
    parent, key = doc, None
    for part in where[:-1]:
        parent = parent[part]
    key = where[-1] if where else None
    value = draw(values)
    if kind == "replace" and where:
        parent[key] = value
    elif kind == "delete" and where:
        del parent[key]
    else:
        target = parent[key] if where else doc
        if isinstance(target, dict):
            target[draw(st.text(max_size=10))] = value
        elif isinstance(target, list):
            target.append(value)
    return json.dumps(doc).encode()


WORK = Path(tempfile.mkdtemp(prefix="peftrepro-fuzz-"))
SUB = WORK / "submissions" / "arithmetic" / "lora" / "tiny"


@pytest.fixture(scope="module")
def valid() -> dict[str, dict]:
    """A valid manifest, record and verification (the tiny task is registered by conftest)."""
    SUB.mkdir(parents=True, exist_ok=True)
    (SUB / "manifest.json").write_text(json.dumps(LORA_MANIFEST))
    m = resolve(SUB / "manifest.json")
    rec = record(m, 0, run_id(1, 0))
    claim = SUB / "runs" / f"{rec['run_id']}.json"
    claim.parent.mkdir(exist_ok=True)
    claim.write_bytes(pretty_bytes(rec))
    ver = verification(claim, rec, run_id(2, 0, 1))
    return {"manifest": LORA_MANIFEST, "record": rec, "verification": ver}


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text


def test_manifest_reader_fuzzed(valid) -> None:
    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        (SUB / "manifest.json").write_bytes(data.draw(mutated(valid["manifest"])))
        try:
            resolve(SUB / "manifest.json")
        except ManifestError as e:
            assert one_line(e.message) and e.message.startswith(str(SUB / "manifest.json"))

    check()
    (SUB / "manifest.json").write_text(json.dumps(LORA_MANIFEST))


@pytest.mark.parametrize("kind", ["record", "verification"])
def test_record_and_verification_readers_fuzzed(valid, kind: str) -> None:
    folder = SUB / ("runs" if kind == "record" else "verifications")
    folder.mkdir(exist_ok=True)
    doc = valid[kind]
    target = folder / f"{doc.get('run_id') or doc['verification_id']}.json"
    if kind == "record":
        target = folder / f"{run_id(3, 1)}.json"  # a second seed beside the valid claim

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        target.write_bytes(data.draw(mutated(doc)))
        sub = load_submission(SUB)  # never raises: a file it cannot use is listed with the reason
        assert 0 in sub.claims  # the valid claim beside it is never lost
        used = {r.path for r in sub.claims.values()} | {v.path for v in sub.verifications.values()}
        assert target in used or any(p == target for p, _ in sub.ignored) or kind == "record"
        assert all(one_line(why) for _, why in sub.ignored)

    check()
    target.unlink()


SITE = {"site/index.html", "site/arithmetic.html", "site/site.css", "site/site.js"}


def test_leaderboard_fuzzed_writes_only_its_own_files(valid) -> None:
    """The whole tree read and laid out, with one hostile record: fewer examples (each renders pages)."""
    target = SUB / "runs" / f"{run_id(3, 1)}.json"

    @settings(max_examples=max(EXAMPLES // 50, 20), deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        target.write_bytes(data.draw(mutated(valid["record"])))
        files, problems = render(WORK / "submissions", WORK / "leaderboard")
        assert set(files) == {"README.md", "arithmetic.md", "arithmetic.svg", *SITE}
        assert all(one_line(p) for p in problems)
        page = files["arithmetic.md"].decode()
        assert "<script>" not in page and "../../etc" not in page.replace("../submissions", "")
        html = files["site/arithmetic.html"].decode()
        assert html.count("<script") == 2  # the data block and site.js: nothing from the record

    check()
    target.unlink()


# Inputs that would cost a naive reader minutes or memory; benchmarks/fuzz.py times their refusal.
BOMBS = {
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "long integer": b'{"a": ' + b"9" * 5000 + b"}",
    "overflowing float": b'{"a": 1e400}',
    "long float": b'{"a": 0.' + b"1" * 10_000 + b"}",
    "duplicate keys": b'{"a": 1, "a": 2}',
    "NaN": b'{"a": NaN}',
    "not UTF-8": b'{"a": "\xff"}',
    "lone surrogate": b'{"a": "\\ud800"}',
}


def test_json_bombs_are_refused_with_one_line(tmp_path: Path) -> None:
    for name, raw in BOMBS.items():
        with pytest.raises(JSONReadError) as info:
            parse_json(raw)
        assert one_line(str(info.value)), name
    huge = tmp_path / "submissions" / "arithmetic" / "lora" / "big" / "manifest.json"
    huge.parent.mkdir(parents=True)
    with open(huge, "wb") as f:  # 100 MB, sparse: refused by its size before a byte is read
        f.truncate(100 * 2**20)
    with pytest.raises(ManifestError) as e:
        resolve(huge)
    assert "at most 1000000 are accepted" in e.value.message


def test_symbolic_links_out_of_the_tree_are_never_read(tmp_path: Path, valid) -> None:
    import shutil

    root = tmp_path / "submissions"
    outside = tmp_path / "outside"
    shutil.copytree(SUB, outside / "arithmetic" / "lora" / "tiny")
    (root / "arithmetic" / "lora").mkdir(parents=True)
    # a submission folder that is a link; a method folder that is a link; a records folder that is a link
    (root / "arithmetic" / "lora" / "linked").symlink_to(outside / "arithmetic" / "lora" / "tiny")
    (root / "arithmetic" / "ia3").symlink_to(outside / "arithmetic" / "lora")
    real = root / "arithmetic" / "lora" / "tiny"
    real.mkdir()
    (real / "manifest.json").write_text(json.dumps(LORA_MANIFEST))
    (real / "runs").symlink_to(outside / "arithmetic" / "lora" / "tiny" / "runs")
    subs, orphans = load_tree(root)
    assert [s.key for s in subs] == [("arithmetic", "lora", "tiny")]
    assert not subs[0].claims  # the linked records were not read ...
    assert any("symbolic link" in why for _, why in subs[0].ignored)  # ... and it says so
    linked = {p.relative_to(root).as_posix() for p, why in orphans if "symbolic link" in why}
    assert linked == {"arithmetic/lora/linked", "arithmetic/ia3/tiny"}
    _, problems = render(root, tmp_path / "leaderboard")
    assert sum("symbolic link" in p for p in problems) == 3
