"""Field masking of JSON record values (DESIGN.md §7, docs/policy.md "Masks", docs/security.md
"Masking fails closed").

A field path is ``$.`` followed by object keys separated by dots, each optionally followed by
``[*]`` (every element of the array found there): ``$.email``, ``$.card.number``,
``$.items[*].sku``, ``$.tags[*]``. No indexes, no filters, no quoting: a key is any run of
characters other than ``.``, ``[`` and ``]``.

:func:`mask_json` is pure: bytes in, bytes out, and it never raises on a value. Masking fails
closed: a value is masked field by field only when it parses strictly (:func:`strict_json`:
UTF-8 without a BOM, exactly one JSON value with nothing but whitespace after it, no
NaN/Infinity, no duplicate key in any object, no lone surrogate in any string, not nested too
deeply) and is at most ``MASKED_VALUE_BYTES_MAX`` long (a longer one is not even parsed: one
parse must not hold a server for long). Any other non-empty value is replaced whole by the
redaction (the first mask's replacement as a JSON string), because a laxer parser downstream (a SmartModule, a client)
might read a masked field out of it. A strict JSON value that is not an object holds no
``$.`` path, so it comes back unchanged, as does an empty value; the very same ``bytes``
object comes back whenever nothing was replaced.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Iterable, Sequence


DEFAULT_REPLACEMENT = "***"
# A value longer than this in a masked topic is redacted whole for a masked reader, unparsed
# (parsing costs up to ~0.25 µs a byte on the SPU's loop: 64 KiB is ~15 ms at worst).
MASKED_VALUE_BYTES_MAX = 64 << 10
FIELD_PATH_CHARS_MAX = 1000

# One step of a path: ("key", name) or ("all", "") for [*].
Step = tuple[str, str]

_STEP = re.compile(r"\.([^.\[\]]+)|\[\*\]")


class FieldPathError(ValueError):
    """A field path that is not ``$.key(.key|[*])*``; the message says what is wrong with it
    (the caller names the path)."""


@functools.lru_cache(maxsize=4096)
def parse_field_path(path: str) -> tuple[Step, ...]:
    """The steps of ``path``, or :class:`FieldPathError` naming the problem."""
    if not isinstance(path, str):
        raise FieldPathError(f"{path!r} is not a string")
    if len(path) > FIELD_PATH_CHARS_MAX:
        raise FieldPathError(f"{len(path)} characters is more than {FIELD_PATH_CHARS_MAX}")
    if not path.startswith("$."):
        raise FieldPathError("must start with $. (for example $.email)")
    steps: list[Step] = []
    pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            rest = path[pos:]
            hint = ("only [*] (every element) is supported inside brackets" if rest.startswith("[")
                    else "a key cannot be empty" if rest.startswith(".") else "unexpected characters")
            raise FieldPathError(f"at {json.dumps(rest)}: {hint}")
        steps.append(("key", m.group(1)) if m.group(1) is not None else ("all", ""))
        pos = m.end()
    return tuple(steps)


def _mask(node: Any, steps: Sequence[Step], i: int, replacement: str) -> bool:
    """Replace what ``steps[i:]`` reaches from ``node``; True if anything was replaced."""
    kind, key = steps[i]
    last = i == len(steps) - 1
    if kind == "key":
        if not isinstance(node, dict) or key not in node:
            return False
        if last:
            node[key] = replacement
            return True
        return _mask(node[key], steps, i + 1, replacement)
    if not isinstance(node, list) or not node:
        return False
    if last:
        node[:] = [replacement] * len(node)
        return True
    hit = False
    for element in node:
        hit = _mask(element, steps, i + 1, replacement) or hit
    return hit


class _NotStrict(ValueError):
    """Raised inside the strict parse: the value is not strict JSON."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a duplicate key (parsers disagree on which one wins)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _NotStrict("duplicate key")
    return obj


def _refuse_constant(name: str) -> Any:
    raise _NotStrict(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # an escape that may decode to a surrogate
_SURROGATE = re.compile("[\ud800-\udfff]")
_WALK_NODES_MAX = 1 << 22  # a bound on the walk; a value with more nodes is not shown clean, so not strict


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether any string of ``doc`` (key or value) holds a surrogate code point: an escaped
    ``\\ud800`` without its pair is legal JSON text but not a Unicode string. Iterative, so
    depth cannot make it raise."""
    stack = [doc]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _WALK_NODES_MAX:
            return True  # cannot be shown clean: treat as not strict
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return True
        elif isinstance(node, dict):
            for k, v in node.items():
                if _SURROGATE.search(k):
                    return True
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return False


NOT_STRICT = object()  # what strict_json gives for a value that is not strict JSON


def strict_json(value: bytes) -> Any:
    """The JSON value ``value`` holds if it parses strictly, else :data:`NOT_STRICT`. Never
    raises.

    Strict: the bytes decode as UTF-8 (strictly: no BOM, no encoded surrogates), they hold
    exactly one JSON value with only JSON whitespace around it, no ``NaN``/``Infinity``, no
    object with a duplicate key, no string holding a lone surrogate, and nesting shallow
    enough for the parser (Python's recursion limit).
    """
    try:
        text = value.decode("utf-8")  # strict: invalid UTF-8 and encoded surrogates raise
        if text.startswith("\ufeff"):
            return NOT_STRICT
        doc = _DECODER.decode(text)  # one value, whitespace only after it ("Extra data" raises)
        if _MAYBE_SURROGATE.search(text) and _has_lone_surrogate(doc):
            return NOT_STRICT
        return doc
    except (ValueError, TypeError, RecursionError, MemoryError):
        # JSONDecodeError, UnicodeDecodeError, _NotStrict and int's digit limit are ValueErrors.
        return NOT_STRICT


def redaction(paths: Sequence[tuple[str, str]]) -> bytes:
    """What replaces a whole value that cannot be masked field by field: the first mask's
    replacement as a JSON string (``b'"***"'`` by default). Valid UTF-8 whatever the
    replacement holds."""
    replacement = paths[0][1] if paths else DEFAULT_REPLACEMENT
    try:
        return json.dumps(replacement, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate in the replacement itself: escape it
        return json.dumps(replacement).encode()


def mask_json(value: bytes, paths: Iterable[tuple[str, str]]) -> bytes:
    """``value`` with every field at the given ``(path, replacement)`` pairs replaced.

    Key order is kept; a changed value is written back compactly (no spaces), numbers in
    their shortest form, as valid UTF-8. A value that is not strict JSON (:func:`strict_json`)
    is replaced whole by :func:`redaction`, and so is any value longer than
    :data:`MASKED_VALUE_BYTES_MAX`, unparsed. An empty value, a strict JSON value that is not an
    object, and an object where no path matches come back as the very same bytes.
    """
    pairs = list(paths)
    parsed = [(parse_field_path(p), r) for p, r in pairs]
    if not parsed or not value:
        return value
    if len(value) > MASKED_VALUE_BYTES_MAX:
        return redaction(pairs)  # not parsed at all: its parse alone would hold the server too long
    doc = strict_json(value)
    if doc is NOT_STRICT:
        return redaction(pairs)
    if not isinstance(doc, dict):
        return value
    try:
        hit = False
        for steps, replacement in parsed:
            hit = _mask(doc, steps, 0, replacement) or hit
        if not hit:
            return value
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError, MemoryError):
        # A number too large for a float (1e400 reads as inf, which JSON cannot write), or a
        # replacement that cannot be encoded: the whole value goes.
        return redaction(pairs)
