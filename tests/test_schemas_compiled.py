"""The compiled schemas (fastjsonschema) against the interpreter (jsonschema): on every document
in the repository and on fuzzed mutations, the compiled check never accepts what the interpreter
refuses. (It may refuse more: `schemas.check` then asks the interpreter, which has the last word.)"""

from __future__ import annotations

import json
from pathlib import Path

import fastjsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peftrepro import schemas
from tests.test_fuzz import FUZZ, mutated, valid  # noqa: F401  (valid is a fixture)

REPO = Path(__file__).parent.parent
KINDS = {
    "manifest": schemas.MANIFEST,
    "record": schemas.RUN_RECORD,
    "verification": schemas.VERIFICATION,
}


def compiled_accepts(doc: object, name: str) -> bool:
    try:
        schemas.compiled(name)(doc)  # type: ignore[misc]
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def interpreter_accepts(doc: object, name: str) -> bool:
    return schemas.validator(name).is_valid(doc)


def documents() -> list[tuple[Path, str]]:
    found = []
    for root in (REPO / "submissions", REPO / "tests" / "golden"):
        found += [(p, schemas.MANIFEST) for p in root.rglob("manifest.json")]
        found += [(p, schemas.RUN_RECORD) for p in root.rglob("runs/*.json")]
        found += [(p, schemas.VERIFICATION) for p in root.rglob("verifications/*.json")]
        found += [(p, schemas.SWEEP) for p in root.rglob("sweep.json")]
    return found


def test_both_judge_every_document_in_the_repository_alike() -> None:
    docs = documents()
    assert len(docs) > 300
    disagree = []
    for path, name in docs:
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue  # the golden tree's truncated record: not JSON at all
        if compiled_accepts(doc, name) != interpreter_accepts(doc, name):
            disagree.append(path)
    assert not disagree


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_compiled_check_is_never_looser_on_mutations(valid, kind: str) -> None:  # noqa: F811
    name = KINDS[kind]
    assert compiled_accepts(valid[kind], name) and interpreter_accepts(valid[kind], name)

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        try:
            doc = json.loads(data.draw(mutated(valid[kind])))
        except ValueError:
            return
        if compiled_accepts(doc, name):
            assert interpreter_accepts(doc, name), doc

    check()


def test_check_still_words_the_error_as_before() -> None:
    from peftrepro.errors import InputError

    with pytest.raises(InputError) as e:
        schemas.check({"schema_version": 1, "task": "arithmetic"}, schemas.MANIFEST, "m.json")
    assert e.value.pointer and "required field is missing" in e.value.expected


def test_a_boolean_never_passes_for_a_numeric_constant(valid) -> None:  # noqa: F811
    """Python's True == 1: generated code comparing with == once took `"schema_version": true` for
    `"const": 1` (hypothesis found it); the constants now carry their JSON type."""
    for kind, name in KINDS.items():
        doc = {**valid[kind], "schema_version": True}
        assert not compiled_accepts(doc, name) and not interpreter_accepts(doc, name)
