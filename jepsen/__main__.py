"""``python -m jepsen run ...``: see jepsen/run.py."""

import sys

from .run import main

sys.exit(main())
