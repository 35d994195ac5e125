"""Load the JSON Schemas (the on-disk contract) and turn their errors into one actionable line.

Each schema is used twice: compiled to Python code (fastjsonschema) to say quickly whether a
document is valid, and interpreted (jsonschema) only to word the error of one that is not. The
leaderboard checks every record it shows, so the fast yes is what scales (`benchmarks/leaderboard_scale.py`).
The compiled check may be stricter than the interpreter, never looser: a document it refuses is
judged again by the interpreter, which has the last word (tests/test_schemas_compiled.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from peftrepro.errors import InputError, safe_text

MANIFEST = "manifest.schema.json"
RUN_RECORD = "run-record.schema.json"
VERIFICATION = "verification-record.schema.json"
SWEEP = "sweep-record.schema.json"
CLAIM = "published-claim.schema.json"
PUBLISHED_VERIFICATION = "published-verification.schema.json"


def schema_dir() -> Path:
    """Installed wheels carry the schemas inside the package; a source checkout has them at the top."""
    packaged = resources.files("peftrepro") / "schemas"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "schemas"


@cache
def _schema(name: str) -> dict[str, Any]:
    schema = json.loads((schema_dir() / name).read_text())
    Draft202012Validator.check_schema(schema)
    inlined: dict[str, Any] = _inline_refs(schema, schema.get("$defs", {}))
    return inlined


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name))


@cache
def compiled(name: str) -> Callable[[Any], Any] | None:
    """The schema as generated Python. Our schemas use only keywords draft-07 has (checked here:
    the compiler refuses what it does not know), so they compile as draft-07; no `$id`, so that
    every `$ref` resolves inside the document."""
    schema = {k: v for k, v in _schema(name).items() if k not in ("$schema", "$id")}
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return fastjsonschema.compile(_typed_constants(schema), use_formats=False)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", type(None): "null"}[type(value)]


def _typed_constants(node: Any) -> Any:
    """Each `const` and `enum` also given the JSON types of its values. The generated code compares
    with Python's ==, where True == 1: without the type, `"schema_version": true` passed for
    `"const": 1` (found by tests/test_schemas_compiled.py). Our constants are scalars."""
    if isinstance(node, list):
        return [_typed_constants(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _typed_constants(v) for k, v in node.items()}
    allowed = [out["const"]] if "const" in out else out.get("enum")
    if isinstance(allowed, list) and "type" not in out:
        out["type"] = sorted({_json_type(v) for v in allowed})
    return out


def _inline_refs(node: Any, defs: dict[str, Any], path: tuple[str, ...] = ()) -> Any:
    """Replace each `{"$ref": "#/$defs/x"}` by the definition itself: same meaning, and a third
    faster to validate (the leaderboard checks thousands of records). A recursive definition keeps
    its `$ref` (the `$defs` stay in place for it)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        annotations = set(node) - {"$ref"} <= {"description", "title"}
        if isinstance(ref, str) and ref.startswith("#/$defs/") and annotations:
            name = ref.removeprefix("#/$defs/")
            if name not in path:
                return _inline_refs(defs[name], defs, (*path, name))
        return {k: v if k == "$defs" else _inline_refs(v, defs, path) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(x, defs, path) for x in node]
    return node


def show(value: Any, limit: int = 60) -> str:
    """A value as short, single-line, ASCII-only text: safe to print whatever a stranger wrote."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pointer(path: Any) -> str:
    """JSON pointer (RFC 6901) of a path of keys/indices; ASCII-escaped so it stays one safe line."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    text = "".join("/" + p for p in parts)
    return safe_text(text)


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def _expected(error: ValidationError) -> tuple[list[Any], str]:
    """(path, explanation) for one schema error, phrased as what the user should write instead."""
    path = list(error.absolute_path)
    v, arg, inst = error.validator, error.validator_value, error.instance
    if v == "required":
        missing = [k for k in arg if isinstance(inst, dict) and k not in inst]
        return [*path, missing[0]], "required field is missing"
    if v == "additionalProperties" and isinstance(inst, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in inst if k not in known)
        allowed = ", ".join(sorted(known))
        return [*path, extra[0]], f"unknown field; allowed here: {allowed}"
    if v == "type":
        got = _JSON_TYPES.get(type(inst), type(inst).__name__)
        return path, f"expected {' or '.join(arg) if isinstance(arg, list) else arg}, got {got}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return path, f"expected a number {sign} {arg}, got {show(inst)}"
    if v == "pattern":
        return path, f"expected a string matching {arg}, got {show(inst)}"
    if v in ("minLength", "maxLength", "minItems", "maxItems", "maxProperties"):
        what = {
            "minLength": "at least {} characters",
            "maxLength": "at most {} characters",
            "minItems": "at least {} items",
            "maxItems": "at most {} items",
            "maxProperties": "at most {} fields",
        }[v]
        return path, "expected " + what.format(arg)
    if v == "const":
        return path, f"expected {show(arg)}, got {show(inst)}"
    if v == "enum":
        return path, f"expected one of {', '.join(show(a) for a in arg)}, got {show(inst)}"
    if v == "propertyNames":
        return path, f"field name {show(error.instance)} is not allowed (letters, digits, _ . - only)"
    return path, error.message.splitlines()[0][:200]


def check(obj: Any, schema_name: str, file: str, error_type: type[InputError] = InputError) -> None:
    """Raise `error_type` naming the file, the field and the fix, for the most relevant schema error."""
    fast = compiled(schema_name)
    if fast is not None:
        try:
            fast(obj)
            return
        except fastjsonschema.JsonSchemaValueException:
            pass  # invalid, or only stricter than the standard: the interpreter decides and words it
        except (RecursionError, TypeError, ValueError):
            pass
    error = best_match(validator(schema_name).iter_errors(obj))
    if error is None:
        return
    # best_match may stop at an anyOf; its deepest sub-error says more ("expected <= 4096").
    while error.context:
        error = best_match(error.context)
    path, expected = _expected(error)
    raise error_type(file, pointer(path), expected)
