"""What ``kolk cluster diagnostics`` collects from one node, and the redaction every part of it
passes (docs/operations.md "Diagnostics"). Pure: no I/O, no clock; the node's edge
(core/observe/node_diagnostics.py) gathers the inputs, the CLI (core/cli/diagnostics.py) runs
the same redaction again over everything before it writes the archive.

Redaction, the one definition both sides use:

- **By name.** A mapping key whose words (split at ``_``, ``-``, ``.``, spaces and camelCase)
  include a word of :data:`SENSITIVE_WORDS` (secret, password, token, key, credential, ...)
  has its value replaced by :data:`REDACTED`, whatever the value is, unless its last word is
  one of :data:`NEUTRAL_LAST_WORDS`: ``key_file`` names where a key is (its content is never
  read), ``cleaner_key_map_bytes`` is a size. ``private_address`` is not a secret: "private"
  alone is not a sensitive word (``private_key`` is, by its ``key``).
- **By value.** Every PEM block of a private key (``-----BEGIN ... PRIVATE KEY-----`` to its
  END line, or to the end of the text when cut) is replaced, in text and in every string of a
  JSON value, keys included; so is every occurrence of a known secret (the cluster secret, the
  lines of the node's own key file), numbers whose digits hold one included.
  Replacing can make a new occurrence out of the text around it; after
  :data:`SCRUB_ROUNDS_MAX` rounds a string that still holds a secret is replaced whole. A
  secret that is a part of the word ``<redacted>`` itself gets :data:`SHORT_MARKER` instead.
- Secrets shorter than :data:`SECRET_CHARS_MIN` are not searched for (they would cut up
  ordinary text); the cluster secret has at least 16 characters (core/node/secret.py).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..security.tls import TlsConfig

REDACTED = "<redacted>"
SHORT_MARKER = "<?>"  # shorter than SECRET_CHARS_MIN: no secret searched for can be inside it
SENSITIVE_WORDS = frozenset({
    "secret", "secrets", "password", "passwords", "passwd", "passphrase", "token", "tokens", "key", "keys",
    "privatekey", "apikey", "credential", "credentials", "cookie", "authorization"})
# The last word of a name that says what the value is: where something is, or how much.
NEUTRAL_LAST_WORDS = frozenset({"file", "path", "dir", "bytes", "ms", "s", "max", "min", "count", "size", "mib"})
SECRET_CHARS_MIN = 8
SCRUB_ROUNDS_MAX = 4
PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                             re.DOTALL)
PEM_LINE_CHARS_MIN = 16  # a base64 line of a key file this long or longer is searched for as a secret
DEPTH_MAX = 64  # nesting of a value redacted; deeper is replaced whole (a node's answer is never this deep)
_WORDS = re.compile(r"[A-Za-z][a-z0-9]*|[0-9]+")


def name_words(name: str) -> list[str]:
    """``clusterSecret`` and ``cluster_secret`` -> ["cluster", "secret"]."""
    return [w.lower() for w in _WORDS.findall(name)]


def sensitive_name(name: str) -> bool:
    """Whether the value under ``name`` is never shown (the rule in the module's doc)."""
    words = name_words(name)
    if not words or words[-1] in NEUTRAL_LAST_WORDS:
        return False
    joined = "".join(words)
    return any(w in SENSITIVE_WORDS for w in words) or "privatekey" in joined or "apikey" in joined


def usable_secrets(secrets: Iterable[str | None]) -> tuple[str, ...]:
    """The secrets worth searching for, longest first (so a secret inside another goes with it)."""
    found = {s for s in secrets if s and len(s) >= SECRET_CHARS_MIN}
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


def key_file_lines(pem_text: str) -> list[str]:
    """The lines of a PEM private key file worth searching for as secrets (its base64 body)."""
    return [line.strip() for line in pem_text.splitlines()
            if len(line.strip()) >= PEM_LINE_CHARS_MIN and not line.startswith("-----")]


def marker(secrets: Sequence[str] = ()) -> str:
    """What stands where something was taken out: :data:`REDACTED`, or :data:`SHORT_MARKER`
    when a secret is a part of that word (it is shorter than any secret searched for)."""
    return REDACTED if not any(s in REDACTED for s in secrets) else SHORT_MARKER


def redact_text(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without private key PEM blocks or any of ``secrets`` (from :func:`usable_secrets`)."""
    mark = marker(secrets)
    if "PRIVATE KEY-----" in text:
        text = PEM_PRIVATE_KEY.sub(mark, text)
    for _ in range(SCRUB_ROUNDS_MAX):
        present = [s for s in secrets if s in text]
        if not present:
            return text
        for s in present:
            text = text.replace(s, mark)
    return text if not any(s in text for s in secrets) else mark


def redact_value(value: Any, secrets: Sequence[str] = (), depth: int = 0) -> Any:
    """A JSON value with sensitive names' values, private keys and ``secrets`` taken out."""
    if depth > DEPTH_MAX:
        return marker(secrets)
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        text = json.dumps(value)
        return value if redact_text(text, secrets) == text else marker(secrets)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = redact_text(str(k), secrets)
            out[name] = marker(secrets) if sensitive_name(str(k)) else redact_value(v, secrets, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact_value(v, secrets, depth + 1) for v in value]
    return redact_text(str(value), secrets)


def render_json(value: Any, secrets: Sequence[str] = ()) -> str:
    """``value`` redacted and written as JSON, then the text redacted once more: a secret that
    only the joining of two strings would form does not survive either."""
    return redact_text(json.dumps(redact_value(value, secrets), indent=2, sort_keys=True), secrets)


# ---------------------------------------------------------------- settings


def settings_of(config: Any, depth: int = 0) -> Any:
    """A node's config dataclass as JSON values: nested dataclasses as objects, enums by value,
    bytes by their length only (never their content), callables and other objects by type
    name, TLS settings as the paths of their files. Sensitive names are redacted here already
    (:func:`redact_value` does it again)."""
    if depth > DEPTH_MAX:
        return REDACTED
    if isinstance(config, TlsConfig):
        return tls_files(config.ca, config.cert, config.key)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: REDACTED if sensitive_name(f.name) else settings_of(getattr(config, f.name), depth + 1)
                for f in dataclasses.fields(config)}
    if isinstance(config, enum.Enum):
        return settings_of(config.value, depth + 1)
    if config is None or isinstance(config, (bool, int, float, str)):
        return config
    if isinstance(config, (bytes, bytearray, memoryview)):
        return f"<{len(config)} bytes>"
    if isinstance(config, Mapping):
        return {str(k): REDACTED if sensitive_name(str(k)) else settings_of(v, depth + 1) for k, v in config.items()}
    if isinstance(config, (list, tuple, set, frozenset)):
        items = sorted(config, key=repr) if isinstance(config, (set, frozenset)) else config
        return [settings_of(v, depth + 1) for v in items]
    return f"<{type(config).__name__}>"


def tls_files(ca: str | None, cert: str | None, key: str | None) -> dict[str, str | None]:
    """Where a node's TLS files are (paths only: their contents never leave the node)."""
    return {"ca_file": ca, "cert_file": cert, "key_file": key}


# ---------------------------------------------------------------- the answer


@dataclass(frozen=True)
class NodeFacts:
    """What a node says of itself besides its settings, logs and metrics."""

    node: str  # sc-N or spu-N
    pid: int
    python: str
    platform: str
    versions: Mapping[str, str | None]  # distribution -> version (None: not installed)
    started_s: float | None  # the process's start, seconds since the epoch (None: unknown)


@dataclass(frozen=True)
class Diagnostics:
    """One node's answer to ``nodeDiagnostics``, as it travels (JSON) and as the CLI files it."""

    info: dict[str, Any]
    log_lines: list[str]
    metrics: str

    def to_json(self) -> str:
        return json.dumps({"info": self.info, "log_lines": self.log_lines, "metrics": self.metrics})

    @classmethod
    def from_json(cls, text: str) -> "Diagnostics":
        """ValueError naming what is wrong with an answer that is not one."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"the answer is a JSON {type(d).__name__}, not an object")
        info, lines, metrics = d.get("info"), d.get("log_lines"), d.get("metrics")
        if not isinstance(info, dict) or not isinstance(lines, list) or not isinstance(metrics, str):
            raise ValueError("the answer lacks info (an object), log_lines (a list) or metrics (a string)")
        return cls(info, [str(line) for line in lines], metrics)


def build_answer(facts: NodeFacts, now_s: float, settings: Any, log_lines: Sequence[str], metrics: str,
                 notes: Sequence[str], secrets: Sequence[str], bytes_max: int, lines_max: int) -> Diagnostics:
    """The node's answer, redacted, in at most ``bytes_max`` bytes of JSON: the newest
    ``lines_max`` log lines, fewer (the oldest go first) when the answer would be larger, and
    the metrics text cut at a line when even without logs it would be."""
    notes = list(notes)
    info = redact_value({
        "node": facts.node, "pid": facts.pid, "python": facts.python, "platform": facts.platform,
        "versions": dict(facts.versions), "started_s": facts.started_s,
        "uptime_s": None if facts.started_s is None else round(max(0.0, now_s - facts.started_s), 3),
        "settings": settings}, secrets)
    metrics = redact_text(metrics, secrets)
    envelope = len(Diagnostics(info, [], "").to_json()) + 1024  # the notes added below, with room
    room = bytes_max - envelope
    if len(json.dumps(metrics)) > room // 2:
        cut = metrics[:room // 4].rsplit("\n", 1)[0] + "\n"  # JSON may escape a character to 6
        notes.append(f"metrics cut to {len(cut)} of {len(metrics)} characters to fit {bytes_max} bytes")
        metrics = cut
    room -= len(json.dumps(metrics))
    kept: list[str] = []
    wanted = list(log_lines[-lines_max:]) if lines_max > 0 else []
    for line in reversed(wanted):
        line = redact_text(line, secrets)
        size = len(json.dumps(line)) + 2
        if size > room:
            break
        room -= size
        kept.append(line)
    kept.reverse()
    if len(kept) < len(wanted):
        notes.append(f"log cut to the newest {len(kept)} of {len(wanted)} lines to fit {bytes_max} bytes")
    info["notes"] = [redact_text(n, secrets)[:500] for n in notes[:8]]
    return Diagnostics(info, kept, metrics)
