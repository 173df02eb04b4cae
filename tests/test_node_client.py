"""The Node.js client's own suite (clients/node, `npm test`: build, then node --test against
real SC and SPU processes the tests start themselves). Fails with npm's output when it fails.
`make test` runs `make node-setup` first (npm ci); this test runs it too when node_modules is
missing, so it is never skipped."""

from __future__ import annotations

import os
import shutil
import signal
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
    # A session of its own: npm, node and the SC and SPU processes the suite starts share its process
    # group, so a suite past its deadline (a test whose loop never yields cannot time out inside
    # Node) is stopped whole, by that group's id, and leaves nothing running.
    proc = subprocess.Popen(["npm", "test", "--silent"], cwd=NODE_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"npm test ran past {SUITE_TIMEOUT_S} s and was stopped:\n{out[-20000:]}\n{err[-5000:]}")
    finally:
        try:  # the suite's group, its own id: whatever a failed teardown left running stops too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait()
    assert proc.returncode == 0, f"npm test failed (exit {proc.returncode}):\n{out[-20000:]}\n{err[-5000:]}"
    assert "# fail 0" in out and "# pass " in out, out[-5000:]
