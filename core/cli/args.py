"""What the ``kolk`` command line accepts: numbers within their limits, and usage errors as one line.

A number given to a flag is checked when the command line is parsed, before anything is read,
written or sent: ``-p 1000000000000000000000000000000`` is refused as
``kolk topic create: argument -p/--partitions: 1000000000000000000000000000000 is out of range:
1 to 1000``, not by a traceback from the wire encoder. The ranges come from the one definition
of each limit (metadata/specs.py for topics and SPU ids, core/protocol/limits.py for the wire).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn

from ..metadata.specs import PARTITIONS_MAX, REPLICATION_FACTOR_MAX, SPU_ID_LIMIT
from .local_cluster import SPUS_MAX as LOCAL_SPUS_MAX

INT64_MAX = 2**63 - 1  # offsets, counts and timestamps travel as 64-bit integers
INT64_MIN = -(2**63)
ARGUMENT_CHARS_SHOWN = 40  # a value quoted in an error is cut to this many characters


def _shown(text: str) -> str:
    return text if len(text) <= ARGUMENT_CHARS_SHOWN else text[:ARGUMENT_CHARS_SHOWN] + "..."


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``lo`` to ``hi``, or a one-line refusal."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range: {lo} to {hi}")
        return value
    parse.__name__ = "whole number"
    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``lo`` to ``hi``, or a one-line refusal."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)!r} is not a number") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range: {lo:g} to {hi:g}")
        return value
    parse.__name__ = "number"
    return parse


PARTITIONS = int_in(1, PARTITIONS_MAX)
REPLICATION_FACTOR = int_in(1, REPLICATION_FACTOR_MAX)
PARTITION = int_in(0, PARTITIONS_MAX - 1)
SPU_ID = int_in(0, SPU_ID_LIMIT - 1)
OFFSET = int_in(0, INT64_MAX)
COUNT = int_in(1, INT64_MAX)
LOCAL_SPUS = int_in(1, LOCAL_SPUS_MAX)
CERT_DAYS_MAX = 36_500  # a hundred years; X.509 dates end in 9999
CERT_DAYS = int_in(1, CERT_DAYS_MAX)
LINGER_MS_MAX = 60_000.0
LINGER_MS = float_in(0.0, LINGER_MS_MAX)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2): the
    command, what was wrong, and where help is. Subparsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message.splitlines()[0] if message else 'bad arguments'} "
                     f"(see {self.prog} --help)\n")
