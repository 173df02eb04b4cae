"""Configuration files for ``kolk sc`` and ``kolk spu``: ``--config FILE.toml`` (docs/configuration.md).

A file is one flat TOML table whose keys are the long names of the command's flags without
the leading ``--`` (``data-dir = "/var/lib/kolk"``, ``heartbeat-timeout-ms = 3000``). The keys
are derived from the argparse parser, so a flag added to ``kolk sc`` or ``kolk spu`` has its
key at once; ``--config`` itself and ``--help`` have none.

A file stands for command-line flags: :func:`file_argv` turns its text into the argv it means
(pure: text and parser in, argv or :class:`ConfigFileError` out), and :func:`with_config_file`
puts that argv *before* the command line's, so a flag on the command line overrides the file
(argparse keeps the last value). A repeatable flag (``--peer``) given on the command line
replaces the file's list instead of adding to it. Every value is checked against its flag here,
with the file and line in the error, before argparse sees it.

Whose file: the one edge with I/O is :func:`read_config_text`. It refuses a file anyone may
write (world-writable; a config file names the secret file and the TLS key, so whoever can
write it can make the node trust their CA), as ssh does; a file owned by another user (root's
``/etc/kolk/sc.toml``, a Kubernetes ConfigMap) is fine.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Literal, NoReturn

CONFIG_FLAG = "--config"
CONFIG_BYTES_MAX = 1 << 20  # a config file is a few hundred bytes; 1 MiB is far past any real one
KEYS_SHOWN_MAX = 60  # keys listed in an "unknown key" error
VALUE_CHARS_SHOWN = 40  # a value quoted in an error is cut to this many characters
EXCLUDED = frozenset({"config", "help"})  # flags with no key

Kind = Literal["switch", "list", "int", "float", "str"]


class ConfigFileError(ValueError):
    """A config file that cannot be used: one line naming the file (and line, when known)."""


@dataclass(frozen=True)
class Key:
    """One key of a config file: the flag it stands for and the TOML type it takes."""

    name: str  # "data-dir"
    option: str  # "--data-dir"
    kind: Kind
    action: argparse.Action

    @property
    def what(self) -> str:
        return {"switch": "true or false", "list": "an array of strings, such as [\"a\", \"b\"]",
                "int": "a whole number (a TOML integer, without quotes)",
                "float": "a number (without quotes)", "str": "a string (in quotes)"}[self.kind]


def add_config_argument(p: argparse.ArgumentParser) -> None:
    """``--config FILE``, for ``kolk sc`` and ``kolk spu`` (read before the rest is parsed)."""
    p.add_argument(CONFIG_FLAG, metavar="FILE.toml",
                   help="read flags from this TOML file: one flat table, each key a flag's long name without "
                        "'--' (data-dir = \"/var/lib/kolk\"); flags on the command line override it "
                        "(docs/configuration.md)")


def keys_of(parser: argparse.ArgumentParser) -> dict[str, Key]:
    """Every key a config file for ``parser``'s command may hold, by name, in the parser's order."""
    keys: dict[str, Key] = {}
    for action in parser._actions:  # argparse has no public list of its actions
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or longs[0][2:] in EXCLUDED:
            continue
        option = longs[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind: Kind = "switch"
        elif isinstance(action, argparse._AppendAction):
            kind = "list"
        elif type(action) is argparse._StoreAction and action.nargs is None:
            kind = "int" if _returns(action, int) else "float" if _returns(action, float) else "str"
        else:  # a programmer error: tests/test_config_file.py derives the keys of both parsers
            raise TypeError(f"{option}: a config file has no way to give a {type(action).__name__}")
        keys[option[2:]] = Key(option[2:], option, kind, action)
    return keys


def _returns(action: argparse.Action, kind: type) -> bool:
    """Whether the flag's ``type`` makes numbers of ``kind``: ``int``/``float`` themselves, or the
    ranged ones of core/cli/args.py (``int_in``, ``float_in``, named "whole number", "number")."""
    named = {int: "whole number", float: "number"}[kind]
    return action.type is kind or getattr(action.type, "__name__", None) == named


def key_line(text: str, key: str) -> int | None:
    """The 1-based line where ``key`` is set or its table opens (bare or quoted), or None."""
    quoted = re.escape(key)
    pattern = re.compile(rf"^\s*(?:\[\[?\s*)?(?:{quoted}|\"{quoted}\"|'{quoted}')\s*(?:=|\.|\]|$)")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def file_argv(text: str, path: str, parser: argparse.ArgumentParser,
              given: frozenset[str] = frozenset()) -> list[str]:
    """The flags the file's text stands for, as argv (``--data-dir=/var/lib/kolk``), checked.

    ``given`` holds the options (``--peer``) the command line gives: a repeatable one there
    replaces the file's list. ConfigFileError (one line, ``path:line: ...``) for the first fault."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{path}: {e}") from None
    except RecursionError:  # tomllib recurses per level of nested arrays and inline tables
        raise ConfigFileError(f"{path}: arrays or tables nested too deeply; a config file is one flat table of "
                              f"flags") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ConfigFileError(f"{path}: {e}") from None
    keys = keys_of(parser)
    argv: list[str] = []
    for name, value in table.items():
        def where(name: str = name) -> str:
            """path:line, found only for an error (a scan of the text per key made a 1 MiB file of
            blank lines take seconds)."""
            line = key_line(text, name)
            return f"{path}:{line}" if line else path

        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            raise ConfigFileError(f"{where()}: {_shown(name)} is a table; a config file is one flat table of flags "
                                  f"(write each flag as key = value at the top, such as tls-ca = \"ca.pem\")")
        key = keys.get(name)
        if key is None:
            raise ConfigFileError(f"{where()}: {_unknown(name, keys)}")
        argv.extend(_flags(key, value, where, given))
    return argv


def _unknown(name: str, keys: dict[str, Key]) -> str:
    if name in EXCLUDED:
        return f"'{name}' cannot be set in a config file"
    close = difflib.get_close_matches(name.replace("_", "-"), list(keys), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    known = list(keys)[:KEYS_SHOWN_MAX]
    more = ", ..." if len(keys) > KEYS_SHOWN_MAX else ""
    return f"unknown key {_shown(name)} ({hint}known keys: {', '.join(known)}{more})"


def _flags(key: Key, value: Any, where: Callable[[], str], given: frozenset[str]) -> list[str]:
    def bad(why: str) -> NoReturn:
        raise ConfigFileError(f"{where()}: {key.name}: {why}")

    if key.kind == "switch":
        if not isinstance(value, bool):
            bad(f"must be {key.what}, not {_shown(value)}")
        # A switch turned off in the file is simply not given (its default).
        return [key.option] if value != (isinstance(key.action, argparse._StoreFalseAction)) else []
    if key.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad(f"must be {key.what}, not {_shown(value)}")
        if key.option in given:
            return []  # the command line's list replaces the file's
        return [f"{key.option}={_checked(key, v, bad)}" for v in value]
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}[key.kind]
    if not ok(value):
        bad(f"must be {key.what}, not {_shown(value)}")
    return [f"{key.option}={_checked(key, value, bad)}"]


def _checked(key: Key, value: Any, bad: Any) -> str:
    """``value`` as text, after the flag's own type and choices accept it (as argparse would)."""
    text = str(value)
    if callable(key.action.type):
        try:
            key.action.type(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            bad(str(e) if isinstance(e, argparse.ArgumentTypeError) else f"{_shown(value)} is not valid")
    if key.action.choices is not None and value not in key.action.choices:
        bad(f"{_shown(value)} is not one of {', '.join(map(str, key.action.choices))}")
    return text


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= VALUE_CHARS_SHOWN else text[:VALUE_CHARS_SHOWN] + "..."


# ---------------------------------------------------------------- the edge: the file and the argv


def read_config_text(path: str) -> str:
    """The file's text. ConfigFileError (one line naming the file) when it is missing, not
    readable, not a regular file (a directory, a FIFO: opened without blocking), larger than
    CONFIG_BYTES_MAX, writable by anyone, or not UTF-8. Symbolic links are followed (a
    Kubernetes ConfigMap is one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read the config file: {_reason(e)}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigFileError(f"{path}: the config file is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigFileError(f"{path}: the config file is not a regular file (a FIFO, socket or device)")
        if st.st_size > CONFIG_BYTES_MAX:
            raise ConfigFileError(f"{path}: the config file is {st.st_size} bytes, more than the "
                                  f"{CONFIG_BYTES_MAX} a config file may be")
        if st.st_mode & stat.S_IWOTH:
            raise ConfigFileError(f"{path}: the config file is writable by anyone (mode {stat.S_IMODE(st.st_mode):o}); "
                                  f"it names keys and secrets, so it is refused: chmod o-w {path}")
        data = b""
        while len(data) <= CONFIG_BYTES_MAX:  # the file may grow after fstat: read one byte past the cap
            chunk = os.read(fd, CONFIG_BYTES_MAX + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > CONFIG_BYTES_MAX:
            raise ConfigFileError(f"{path}: the config file is more than the {CONFIG_BYTES_MAX} bytes a config "
                                  f"file may be")
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read the config file: {_reason(e)}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{path}: the config file is not UTF-8 text (byte {e.start})") from None


def _reason(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)


def options_given(argv: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str | None]]:
    """The options in a command's argv as ``(option, value)``, resolved as argparse resolves
    them (``--opt=v``, ``--opt v``, a unique abbreviation); a value that looks like an option
    (``--ready-file --config``) is a value, not an option."""
    by_option = {o: a for a in parser._actions for o in a.option_strings if o.startswith("--")}
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name, eq, inline = token.partition("=")
        matches = [name] if name in by_option else [o for o in by_option if o.startswith(name)]
        if len(matches) != 1:
            continue  # argparse reports it
        action = by_option[matches[0]]
        value: str | None = inline if eq else None
        if not eq and action.nargs is None and not isinstance(
                action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and i < len(argv):
            value = argv[i]
            i += 1
        out.append((matches[0], value))
    return out


def with_config_file(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """A command's argv (after ``sc``/``spu``) with its ``--config`` file's flags put first,
    so that the command line overrides them. Exits 2 with one line on stderr (as argparse
    does) when the file cannot be used. Unchanged without ``--config``."""
    given = options_given(argv, parser)
    paths = [value for option, value in given if option == CONFIG_FLAG]
    if not paths:
        return argv
    try:
        if len(paths) > 1:
            raise ConfigFileError(f"{CONFIG_FLAG} given {len(paths)} times; a node reads one config file")
        if not paths[0]:
            raise ConfigFileError(f"{CONFIG_FLAG} needs a file name")
        text = read_config_text(paths[0])
        return file_argv(text, paths[0], parser, frozenset(o for o, _ in given)) + argv
    except ConfigFileError as e:
        parser.exit(2, f"{parser.prog}: {e}\n")


def expand_argv(argv: list[str], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``kolk``'s argv with the config file of ``kolk sc`` / ``kolk spu`` expanded (core/cli/main.py)."""
    if argv and argv[0] in parsers:
        return [argv[0], *with_config_file(argv[1:], parsers[argv[0]])]
    return argv
