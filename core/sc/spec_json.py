"""Reading an object's spec (``putObject.specJson``) from a client: JSON, bounded. The
standard parser recurses once per nesting level (100,000 levels raise RecursionError) and
refuses integers past Python's digit limit with a bare ValueError; both are input errors,
so they are found here first and reported in one line (docs/protocol.md, limits).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..protocol.limits import SPEC_JSON_DEPTH_MAX, SPEC_JSON_DIGITS_MAX

__all__ = ["SpecJsonError", "parse_spec_json"]

# What changes the depth, and strings (which may hold brackets) to skip.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_LONG_INTEGER = re.compile(r"-?[0-9]{%d,}" % (SPEC_JSON_DIGITS_MAX + 1))


class SpecJsonError(ValueError):
    """specJson that is not a spec this server reads; ``str(e)`` is one line."""


def _depth_past_limit(text: str) -> bool:
    depth = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > SPEC_JSON_DEPTH_MAX:
                return True
        elif c in "]}":
            depth -= 1
    return False


def parse_spec_json(text: str) -> Any:
    """The value of ``text``; SpecJsonError naming the problem if it is not JSON, nests
    deeper than SPEC_JSON_DEPTH_MAX or holds an integer of more than SPEC_JSON_DIGITS_MAX digits."""
    if _depth_past_limit(text):
        raise SpecJsonError(f"specJson nests arrays and objects more than {SPEC_JSON_DEPTH_MAX} deep")
    try:
        return json.loads(text)
    except RecursionError:  # not reached past the depth check; kept so that no input gives a traceback
        raise SpecJsonError(f"specJson nests arrays and objects more than {SPEC_JSON_DEPTH_MAX} deep") from None
    except json.JSONDecodeError as e:
        raise SpecJsonError(f"specJson is not JSON: {e}") from None
    except ValueError:  # an integer past int()'s digit limit
        m = _LONG_INTEGER.search(text)
        digits = f"{len(m.group().lstrip('-')):,} digits" if m else "too many digits"
        raise SpecJsonError(f"specJson holds an integer of {digits}; at most {SPEC_JSON_DIGITS_MAX:,}") from None
