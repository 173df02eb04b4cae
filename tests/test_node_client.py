"""The Node.js client's own suite (clients/node, `npm test`: build, then node --test against
real SC and SPU processes the tests start themselves). Fails with npm's output when it fails.
`make test` runs `make node-setup` first (npm ci); this test runs it too when node_modules is
missing, so it is never skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_DIR = os.path.join(ROOT, "clients", "node")
SUITE_TIMEOUT_S = 240


def test_node_client_suite() -> None:
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed: apt-get install nodejs npm"
    if not os.path.exists(os.path.join(NODE_DIR, "node_modules", ".kolk-stamp")):
        setup = subprocess.run(["make", "-s", "node-setup"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert setup.returncode == 0, f"make node-setup failed:\n{setup.stdout}\n{setup.stderr}"
    env = dict(os.environ, KOLK_BIN=os.path.join(os.path.dirname(sys.executable), "kolk"), KOLK_PYTHON=sys.executable)
    r = subprocess.run(["npm", "test", "--silent"], cwd=NODE_DIR, capture_output=True, text=True,
                       timeout=SUITE_TIMEOUT_S, env=env)
    assert r.returncode == 0, f"npm test failed (exit {r.returncode}):\n{r.stdout[-20000:]}\n{r.stderr[-5000:]}"
    assert "# fail 0" in r.stdout and "# pass " in r.stdout, r.stdout[-5000:]
