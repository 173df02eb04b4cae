"""The cleaner's worker process: ``python -m kolk.segments.clean_worker``.

Reads one :class:`CleanPlan` as JSON on stdin, runs :func:`execute_plan` (clean_exec.py) and
writes the :class:`CleanResult` as JSON on stdout. On failure: no output, exit status 1 and
one line on stderr naming what went wrong (a bad plan: exit status 2).
"""

from __future__ import annotations

import sys

from .clean_exec import execute_plan
from .clean_plan import CleanPlan
from .errors import StorageError

PLAN_BYTES_MAX = 16 << 20


def main() -> int:
    raw = sys.stdin.buffer.read(PLAN_BYTES_MAX + 1)
    if len(raw) > PLAN_BYTES_MAX:
        print(f"clean_worker: the plan is more than {PLAN_BYTES_MAX} bytes", file=sys.stderr)
        return 2
    try:
        plan = CleanPlan.from_json(raw)
    except ValueError as e:
        print(f"clean_worker: {e}", file=sys.stderr)
        return 2
    try:
        result = execute_plan(plan)
    except (StorageError, OSError) as e:
        print(f"clean_worker: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    sys.stdout.write(result.to_json())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
