"""Reading a policy file: TOML text in, a checked :class:`PolicySpec` out (docs/policy.md).

Pure: no I/O but the text given. Every error is a :class:`PolicyError` whose message names the
file, the line and the field, like a compiler's::

    policy.toml:14: rule 3: actions: "prodcue" is not an action (one of produce, consume, ...)

``tomllib`` gives no line numbers for values, so :class:`_Lines` finds them in the text: the
n-th ``[[rule]]`` header, the key's line inside that table, and for a list the line holding the
offending string. Everything is bounded (the ``*_MAX`` limits below) before it is compiled.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

from .jsonmask import DEFAULT_REPLACEMENT, FieldPathError, parse_field_path
from .policy_kinds import ACTIONS, ANYONE, NAMED_KINDS, misfit

# ---------------------------------------------------------------- limits (unit last)
POLICY_BYTES_MAX = 4 << 20
INTEGER_DIGITS_MAX = 4300  # Python's int() limit (sys.int_info.default_max_str_digits)
RULES_MAX = 10_000
MASKS_MAX = 10_000
IDENTITIES_MAX = 10_000
REGIONS_MAX = 1_000
REGION_NETWORKS_MAX = 1_000
PATTERN_CHARS_MAX = 1_000
VERSION_MAX = 2**63 - 1
# Arrays and inline tables inside one another. tomllib recurses once per level and a few
# thousand levels end in RecursionError (issue 17: a 5,000-deep array gave 3,002 lines of
# traceback); no policy needs more than a list of strings in a table.
NESTING_MAX = 32

EFFECTS = ("allow", "deny")
ANONYMOUS = "anonymous"
TOP_LEVEL = ("version", "description", "regions", "identities", "rule", "mask")
RULE_KEYS = ("effect", "roles", "identities", "actions", "resources", "regions", "not_regions", "description")
MASK_KEYS = ("roles", "identities", "topics", "fields", "with", "regions", "not_regions", "description")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """A policy file that cannot be enforced. ``str(e)`` is ``FILE:LINE: FIELD: PROBLEM``."""

    def __init__(self, filename: str, line: int, field: str, problem: str) -> None:
        super().__init__(f"{filename}:{line}: {field + ': ' if field else ''}{problem}")
        self.filename, self.line, self.field, self.problem = filename, line, field, problem


@dataclass(frozen=True)
class RuleSpec:
    number: int  # 1-based, in file order; decisions name rules by it
    line: int
    effect: str
    roles: tuple[str, ...]
    identities: tuple[str, ...]
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    regions: tuple[str, ...] | None  # None: any region
    not_regions: tuple[str, ...]
    description: str | None


@dataclass(frozen=True)
class MaskSpec:
    number: int
    line: int
    roles: tuple[str, ...]
    identities: tuple[str, ...]
    topics: tuple[str, ...]
    fields: tuple[str, ...]
    replacement: str
    regions: tuple[str, ...] | None
    not_regions: tuple[str, ...]
    description: str | None


@dataclass(frozen=True)
class PolicySpec:
    filename: str
    source: str
    sha256: str  # of the UTF-8 source
    version: int
    description: str | None
    regions: dict[str, tuple[Network, ...]]  # in file order
    identities: dict[str, tuple[str, ...]]  # identity or pattern -> roles, in file order
    rules: tuple[RuleSpec, ...]
    masks: tuple[MaskSpec, ...]
    warnings: tuple[str, ...]  # FILE:LINE: ... for things that are legal but probably wrong


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def glob_regex(pattern: str) -> str:
    """A regex (for ``re.match``) that matches exactly what the glob ``pattern`` matches.

    Only ``*`` (any run of characters, also none) and ``?`` (one character) are special;
    every other character, ``[`` included, stands for itself. Segments between stars are
    matched at their leftmost place inside atomic groups, as ``fnmatch`` does since 3.11,
    so a pattern with many stars cannot make matching slow (no backtracking into them)."""
    def segment(s: str) -> str:
        return "".join("." if c == "?" else re.escape(c) for c in s)

    parts = pattern.split("*")
    if len(parts) == 1:
        return f"(?s:{segment(pattern)})\\Z"
    middle = "".join(f"(?>.*?{segment(p)})" for p in parts[1:-1] if p)
    return f"(?s:{segment(parts[0])}{middle}.*{segment(parts[-1])})\\Z"


class _Lines:
    """Where things are in the text: table headers, keys inside a table, strings in a value."""

    _ARRAY = re.compile(r"\s*\[\[\s*([A-Za-z0-9_-]+)\s*\]\]\s*(?:#.*)?$")
    _TABLE = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(?:#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, bool, str]] = []  # (line, is_array, name)
        for n, line in enumerate(self.lines, 1):
            m = self._ARRAY.match(line)
            if m or (m := self._TABLE.match(line)):
                self.headers.append((n, line.lstrip().startswith("[["), m.group(1)))

        ends = [h[0] for h in self.headers[1:]] + [len(self.lines) + 1]
        self.top = (1, (self.headers[0][0] if self.headers else len(self.lines) + 1) - 1)
        self.sections: dict[str, list[tuple[int, int]]] = {}  # name -> (first, last) of each table
        for (line, _array, name), end in zip(self.headers, ends):
            self.sections.setdefault(name, []).append((line, end - 1))

    def section(self, name: str | None, index: int = 0) -> tuple[int, int]:
        """Lines ``(first, last)`` of the index-th ``[[name]]`` (or ``[name]``); None: top level."""
        if name is None:
            return self.top
        found = self.sections.get(name, [])
        if index < len(found):
            return found[index]
        key = self.key(self.top, name)  # e.g. rule = [{...}, ...] at the top level
        return key, key

    def key(self, section: tuple[int, int], key: str) -> int:
        k = re.escape(key)
        pattern = re.compile(rf"\s*(?:{k}|\"{k}\"|'{k}')\s*=")
        first, last = section
        for n in range(first, min(last, len(self.lines)) + 1):
            if pattern.match(self.lines[n - 1]):
                return n
        if first == 1:  # the top level: the key may be a table, [key] or [[key]], anywhere
            for line, _array, header in self.headers:
                if header == key:
                    return line
        return max(first, 1)

    def value(self, section: tuple[int, int], key: str, literal: Any) -> int:
        """The line of ``literal`` (a string) in ``key``'s value, else the key's line."""
        start = self.key(section, key)
        if isinstance(literal, str):
            needles = (json.dumps(literal, ensure_ascii=False), f"'{literal}'")
            for n in range(start, min(section[1], len(self.lines)) + 1):
                if any(s in self.lines[n - 1] for s in needles):
                    return n
        return start


def _quoted(items: Any, limit: int = 12) -> str:
    items = list(items)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


class _Reader:
    """Checks one parsed document; ``fail`` raises with the line found in the text."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.where = _Lines(text)
        self.warnings: list[str] = []

    def fail(self, section: tuple[int, int], field: str, problem: str, key: str | None = None,
             literal: Any = None) -> PolicyError:
        line = section[0] if key is None else self.where.value(section, key, literal)
        return PolicyError(self.filename, line, field, problem)

    def warn(self, line: int, text: str) -> None:
        self.warnings.append(f"{self.filename}:{line}: {text}")

    def strings(self, table: dict, key: str, section: tuple[int, int], label: str, *, required: bool,
                check: Callable[[str], str | None] | None = None) -> tuple[str, ...] | None:
        """The list of strings at ``table[key]``, each passing ``check`` (which returns a problem)."""
        field = f"{label}: {key}" if label else key
        if key not in table:
            if required:
                raise self.fail(section, field, "missing")
            return None
        value = table[key]
        if isinstance(value, str):
            raise self.fail(section, field, f"must be a list: write [{json.dumps(value)}]", key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(section, field, "must be a list of strings", key)
        if not value:
            raise self.fail(section, field, "is empty: leave it out or name at least one", key)
        for v in value:
            problem = "is empty" if not v else (f"is {len(v)} characters, more than {PATTERN_CHARS_MAX}"
                                                if len(v) > PATTERN_CHARS_MAX else check(v) if check else None)
            if problem:
                raise self.fail(section, field, f"{json.dumps(v)} {problem}", key, v)
        return tuple(dict.fromkeys(value))

    def text(self, table: dict, key: str, section: tuple[int, int], label: str) -> str | None:
        if key in table and not isinstance(table[key], str):
            raise self.fail(section, f"{label}: {key}" if label else key, "must be a string", key)
        return table.get(key)

    def unknown_keys(self, table: dict, known: tuple[str, ...], section: tuple[int, int], label: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, 1)
                hint = f" (did you mean {close[0]}?)" if close else f" (one of {', '.join(known)})"
                what = "unknown key" if label else "unknown top-level key"
                raise self.fail(section, f"{label}: {key}" if label else key, what + hint, key)


def _load(text: str | bytes, filename: str) -> str:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > POLICY_BYTES_MAX:
        raise PolicyError(filename, 1, "", f"{size} bytes is more than {POLICY_BYTES_MAX} ({POLICY_BYTES_MAX >> 20} "
                                           "MiB), the largest policy file")
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(filename, text.count(b"\n", 0, e.start) + 1, "", "not UTF-8 text") from None
    return text


# What changes the nesting depth of TOML text, and what must be skipped to see it: strings
# (which may hold brackets) and comments. Multi-line delimiters come first.
_NESTING_TOKEN = re.compile(r'"""|\'\'\'|"|\'|#|[\[\]{}]')
_STRING_END = {'"""': re.compile(r'(?:[^\\]|\\.)*?"""', re.S), "'''": re.compile(r".*?'''", re.S),
               '"': re.compile(r'(?:[^"\\\n]|\\.)*"'), "'": re.compile(r"[^'\n]*'")}


def _check_nesting(text: str, filename: str) -> None:
    """PolicyError naming the line where arrays or inline tables nest deeper than NESTING_MAX.
    A scan, not a parse: an unterminated string or an unbalanced bracket is left for tomllib
    to report with its own words."""
    depth = 0
    pos = 0
    while (m := _NESTING_TOKEN.search(text, pos)) is not None:
        token = m.group()
        pos = m.end()
        if token in _STRING_END:
            end = _STRING_END[token].match(text, pos)
            if end is None:
                return
            pos = end.end()
        elif token == "#":
            newline = text.find("\n", pos)
            if newline < 0:
                return
            pos = newline + 1
        elif token in "[{":
            depth += 1
            if depth > NESTING_MAX:
                raise PolicyError(filename, text.count("\n", 0, m.start()) + 1, "",
                                  f"arrays and inline tables nest more than {NESTING_MAX} deep")
        else:
            depth = max(0, depth - 1)


# A decimal integer of more digits than Python converts (4,300 by default): tomllib raises
# a bare ValueError for it, without a line.
_LONG_INTEGER = re.compile(r"[0-9](?:_?[0-9]){%d,}" % (INTEGER_DIGITS_MAX,))


def _long_integer(text: str, filename: str) -> PolicyError:
    """PolicyError naming the line of the first integer longer than INTEGER_DIGITS_MAX digits."""
    m = _LONG_INTEGER.search(text)
    line = text.count("\n", 0, m.start()) + 1 if m else 1
    digits = sum(c.isdigit() for c in m.group()) if m else 0
    what = f"an integer of {digits:,} digits" if m else "an integer too long to read"
    return PolicyError(filename, line, "", f"{what}: integers have at most {INTEGER_DIGITS_MAX:,} digits")


def parse_spec(text: str | bytes, filename: str = "<policy>") -> PolicySpec:
    """Check a policy file and return it as plain values; raises :class:`PolicyError`."""
    text = _load(text, filename)
    _check_nesting(text, filename)
    try:
        doc = tomllib.loads(text)
    except RecursionError:  # not reached past _check_nesting; kept so that no input gives a traceback
        raise PolicyError(filename, 1, "", f"arrays and inline tables nest more than {NESTING_MAX} deep") from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = int(m.group(1)) if m else max(1, len(text.splitlines()))
        problem = msg[: m.start()].strip() + f" (column {m.group(2)})" if m else msg
        raise PolicyError(filename, line, "", f"TOML syntax: {problem}") from None
    except ValueError:  # an integer too long for int() (sys.get_int_max_str_digits()); the text is TOML
        raise _long_integer(text, filename) from None
    r = _Reader(text, filename)
    top = r.where.section(None)
    r.unknown_keys(doc, TOP_LEVEL, top, "")
    if "version" not in doc:
        raise r.fail(top, "version", "missing: every policy has version = N (an integer, 1 or more, "
                                     "higher than the version in force)")
    version = doc["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION_MAX:
        raise r.fail(top, "version", f"{json.dumps(version, default=str)} is not an integer from 1 to "
                                     f"{VERSION_MAX}", "version")
    description = r.text(doc, "description", top, "")
    regions = _regions(r, doc.get("regions", {}))
    identities = _identities(r, doc.get("identities", {}))
    assigned = {role for roles in identities.values() for role in roles}
    used_roles: set[str] = set()
    used_regions: set[str] = set()
    rules = tuple(_rule(r, i, t, regions, assigned, used_roles, used_regions)
                  for i, t in enumerate(_tables(r, doc, "rule", RULES_MAX)))
    masks = tuple(_mask(r, i, t, regions, assigned, used_roles, used_regions)
                  for i, t in enumerate(_tables(r, doc, "mask", MASKS_MAX)))
    ident_section = r.where.section("identities")
    for identity, roles in identities.items():
        for role in roles:
            if role not in used_roles:
                r.warn(r.where.value(ident_section, identity, role),
                       f"identities: {identity}: role {role} is used by no rule or mask")
    region_section = r.where.section("regions")
    for name in regions:
        if name not in used_regions:
            r.warn(r.where.key(region_section, name), f"regions: {name} is used by no rule or mask")
    source_bytes = text.encode("utf-8", "surrogatepass")
    return PolicySpec(filename, text, hashlib.sha256(source_bytes).hexdigest(), version, description, regions,
                      identities, rules, masks, tuple(dict.fromkeys(r.warnings)))


def _table(r: _Reader, doc: dict, key: str) -> tuple[dict, tuple[int, int]]:
    section = r.where.section(key)
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise r.fail(section, key, f"must be a table: write [{key}] and one line per entry")
    return value, section


def _regions(r: _Reader, value: Any) -> dict[str, tuple[Network, ...]]:
    table, section = _table(r, {"regions": value}, "regions")
    if len(table) > REGIONS_MAX:
        name = list(table)[REGIONS_MAX]
        raise r.fail(section, f"regions: {name}", f"more than {REGIONS_MAX:,} regions", name)
    out: dict[str, tuple[Network, ...]] = {}
    for name, networks in table.items():
        nets = r.strings(table, name, section, "regions", required=True)
        assert nets is not None
        if len(nets) > REGION_NETWORKS_MAX:
            raise r.fail(section, f"regions: {name}", f"more than {REGION_NETWORKS_MAX:,} networks", name)
        parsed = []
        for text in nets:
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as e:
                raise r.fail(section, f"regions: {name}", f"{json.dumps(text)} is not a network ({e})",
                             name, text) from None
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
                # ::ffff:a.b.c.d/N is an IPv4 network: client addresses are mapped the same way.
                net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
            parsed.append(net)
        out[name] = tuple(parsed)
    return out


def _identities(r: _Reader, value: Any) -> dict[str, tuple[str, ...]]:
    table, section = _table(r, {"identities": value}, "identities")
    if len(table) > IDENTITIES_MAX:
        name = list(table)[IDENTITIES_MAX]
        raise r.fail(section, f"identities: {name}", f"more than {IDENTITIES_MAX:,} identities", name)
    out: dict[str, tuple[str, ...]] = {}
    for identity, roles in table.items():
        if len(identity) > PATTERN_CHARS_MAX or not identity:
            raise r.fail(section, "identities", f"{json.dumps(identity[:40])}: an identity is 1 to "
                                                f"{PATTERN_CHARS_MAX} characters", identity)
        if roles == []:
            out[identity] = ()
            continue
        names = r.strings(table, identity, section, "identities", required=True,
                          check=lambda v: "is not a role name: a role name has no * or ?" if has_wildcard(v) else None)
        assert names is not None
        out[identity] = names
    return out


def _tables(r: _Reader, doc: dict, key: str, limit: int) -> list[dict]:
    value = doc.get(key, [])
    if isinstance(value, dict):
        raise r.fail(r.where.section(key), key, f"write each {key} as a [[{key}]] table (two brackets)")
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise r.fail(r.where.section(None), key, f"must be [[{key}]] tables", key)
    if len(value) > limit:
        raise r.fail(r.where.section(key, limit), f"{key} {limit + 1}", f"more than {limit:,} {key}s in one policy")
    return value


def _who(r: _Reader, t: dict, section: tuple[int, int], label: str, assigned: set[str],
         used_roles: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def known_role(role: str) -> str | None:
        if role == ANYONE:
            return None
        if has_wildcard(role):
            rx = re.compile(glob_regex(role))
            matched = {a for a in assigned if rx.match(a)}
        else:
            matched = {role} & assigned
        if not matched:
            close = difflib.get_close_matches(role, sorted(assigned), 1)
            hint = (f"; did you mean {close[0]}?" if close
                    else f" (roles: {_quoted(sorted(assigned))})" if assigned else "")
            return f"is not a role of any identity in [identities]: it would never apply{hint}"
        used_roles.update(matched)
        return None

    roles = r.strings(t, "roles", section, label, required=False, check=known_role) or ()
    identities = r.strings(t, "identities", section, label, required=False) or ()
    if ANYONE in roles:
        used_roles.update(assigned)
    if not roles and not identities:
        raise r.fail(section, label, 'give roles or identities: who this is for ("*" for anyone)')
    return roles, identities


def _where(r: _Reader, t: dict, section: tuple[int, int], label: str, regions: dict,
           used: set[str]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    def known(name: str) -> str | None:
        if name in regions:
            used.add(name)
            return None
        close = difflib.get_close_matches(name, list(regions), 1)
        hint = f"; did you mean {close[0]}?" if close else f" ({_quoted(regions)})" if regions else ""
        return f"is not a region in [regions]{hint}"

    inside = r.strings(t, "regions", section, label, required=False, check=known)
    outside = r.strings(t, "not_regions", section, label, required=False, check=known) or ()
    return inside, outside


def _check_resource(pattern: str) -> str | None:
    if pattern in (ANYONE, "cluster"):
        return None
    kind, sep, name = pattern.partition(":")
    if sep and name and kind in NAMED_KINDS:
        return None
    return "is not a resource (topic:PATTERN, smartmodule:PATTERN, group:PATTERN, cluster, or * for every resource)"


def _check_action(action: str) -> str | None:
    if action == ANYONE or action in ACTIONS:
        return None
    return f"is not an action (one of {', '.join(ACTIONS)}, or * for all)"


def _rule(r: _Reader, i: int, t: dict, regions: dict, assigned: set[str], used_roles: set[str],
          used_regions: set[str]) -> RuleSpec:
    label = f"rule {i + 1}"
    section = r.where.section("rule", i)
    r.unknown_keys(t, RULE_KEYS, section, label)
    effect = t.get("effect")
    if effect is None:
        raise r.fail(section, f"{label}: effect", 'missing: effect = "allow" or "deny"')
    if effect not in EFFECTS:
        raise r.fail(section, f"{label}: effect", f'{json.dumps(effect, default=str)} is not "allow" or "deny"',
                     "effect", effect)
    roles, identities = _who(r, t, section, label, assigned, used_roles)
    actions = r.strings(t, "actions", section, label, required=True, check=_check_action)
    resources = r.strings(t, "resources", section, label, required=True, check=_check_resource)
    assert actions is not None and resources is not None
    wrong = misfit(actions, resources)  # e.g. read on topic:*, consume on group:*
    if wrong is not None:
        key, literal, problem = wrong
        raise r.fail(section, f"{label}: {key}", problem, key, literal)
    inside, outside = _where(r, t, section, label, regions, used_regions)
    return RuleSpec(i + 1, section[0], effect, roles, identities, actions, resources, inside, outside,
                    r.text(t, "description", section, label))


def _mask(r: _Reader, i: int, t: dict, regions: dict, assigned: set[str], used_roles: set[str],
          used_regions: set[str]) -> MaskSpec:
    label = f"mask {i + 1}"
    section = r.where.section("mask", i)
    r.unknown_keys(t, MASK_KEYS, section, label)
    roles, identities = _who(r, t, section, label, assigned, used_roles)
    topics = r.strings(t, "topics", section, label, required=True)

    def path_problem(path: str) -> str | None:
        try:
            parse_field_path(path)
        except FieldPathError as e:
            return f"is not a field path: {e}"
        return None

    fields = r.strings(t, "fields", section, label, required=True, check=path_problem)
    replacement = r.text(t, "with", section, label)
    inside, outside = _where(r, t, section, label, regions, used_regions)
    assert topics is not None and fields is not None
    return MaskSpec(i + 1, section[0], roles, identities, topics, fields,
                    DEFAULT_REPLACEMENT if replacement is None else replacement, inside, outside,
                    r.text(t, "description", section, label))
