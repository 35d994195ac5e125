"""Property tests: the validator never crashes, and only ever answers with a one-line ManifestError."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftrepro.errors import ManifestError
from peftrepro.manifest import manifest_sha256, resolve
from tests.conftest import LORA_MANIFEST

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
paths_in_manifest = st.sampled_from(
    [(), ("peft_config",), ("training",), ("training", "optimizer_kwargs"), ("authors",)]
)


def put(doc: dict, where: tuple[str, ...], key: str, value: object) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for part in where:
        target = target.setdefault(part, {}) if isinstance(target, dict) else target
    if isinstance(target, dict):
        target[key] = value
    elif isinstance(target, list):
        target.append(value)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=paths_in_manifest, key=st.text(max_size=16), value=json_values)
def test_any_mutation_is_accepted_or_refused_cleanly(tmp_path_factory, where, key, value) -> None:
    folder = tmp_path_factory.mktemp("p") / "submissions" / "arithmetic" / "lora" / "tiny"
    folder.mkdir(parents=True)
    path = folder / "manifest.json"
    doc = put(LORA_MANIFEST, where, key, value)
    path.write_text(json.dumps(doc))
    try:
        resolved = resolve(path)
    except ManifestError as e:
        assert "\n" not in e.message and e.message.isascii()
        assert e.message.startswith(str(path))
    else:
        assert resolved.sha256 == manifest_sha256(doc)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path_factory, raw: bytes) -> None:
    path: Path = (
        tmp_path_factory.mktemp("b") / "submissions" / "arithmetic" / "lora" / "tiny" / "manifest.json"
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    try:
        resolve(path)
    except ManifestError as e:
        assert "\n" not in e.message


@settings(max_examples=100, deadline=None)
@given(doc=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_hash_is_independent_of_key_order(doc: dict) -> None:
    reordered = dict(reversed(list(doc.items())))
    assert manifest_sha256(doc) == manifest_sha256(reordered)
