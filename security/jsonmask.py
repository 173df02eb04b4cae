"""Field masking of JSON record values (DESIGN.md §7, docs/policy.md "Masks").

A field path is ``$.`` followed by object keys separated by dots, each optionally followed by
``[*]`` (every element of the array found there): ``$.email``, ``$.card.number``,
``$.items[*].sku``, ``$.tags[*]``. No indexes, no filters, no quoting: a key is any run of
characters other than ``.``, ``[`` and ``]``.

:func:`mask_json` is pure: bytes in, bytes out. It never raises on a value: a value that is not
a JSON object is returned unchanged, and the same ``bytes`` object comes back when no path
matched. A value nested too deeply to parse is replaced whole by the replacement (as a JSON
string), because it cannot be shown to hold no masked field: masking fails closed.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Iterable, Sequence

DEFAULT_REPLACEMENT = "***"
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


def mask_json(value: bytes, paths: Iterable[tuple[str, str]]) -> bytes:
    """``value`` with every field at the given ``(path, replacement)`` pairs replaced.

    Key order is kept; a changed value is written back compactly (no spaces), numbers in
    their shortest form. Anything but a JSON object, and an object where no path matches,
    comes back as the very same bytes.
    """
    parsed = [(parse_field_path(p), r) for p, r in paths]
    if not parsed or not value:
        return value
    try:
        doc = json.loads(value)
    except RecursionError:
        return json.dumps(parsed[0][1], ensure_ascii=False).encode()
    except (ValueError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return value
    if not isinstance(doc, dict):
        return value
    hit = False
    for steps, replacement in parsed:
        hit = _mask(doc, steps, 0, replacement) or hit
    if not hit:
        return value
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
