"""clients/node/src/gen/kolk.ts is generated from core/protocol/kolk.capnp and committed: it
must be what `npm run gen` writes now (needs the `capnp` compiler, Debian's capnproto)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_DIR = os.path.join(ROOT, "clients", "node")


def test_generated_schema_is_current() -> None:
    assert shutil.which("capnp"), "the capnp compiler is needed: apt-get install capnproto"
    if not os.path.exists(os.path.join(NODE_DIR, "node_modules", ".kolk-stamp")):
        setup = subprocess.run(["make", "-s", "node-setup"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert setup.returncode == 0, f"make node-setup failed:\n{setup.stdout}\n{setup.stderr}"
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(["node", "scripts/gen-schema.mjs", out], cwd=NODE_DIR, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"gen-schema failed:\n{r.stdout}\n{r.stderr}"
        with open(os.path.join(out, "kolk.ts"), encoding="utf-8") as f:
            fresh = f.read()
    with open(os.path.join(NODE_DIR, "src", "gen", "kolk.ts"), encoding="utf-8") as f:
        committed = f.read()
    assert fresh == committed, ("clients/node/src/gen/kolk.ts is out of date with core/protocol/kolk.capnp: "
                                "run `npm run gen` in clients/node and commit the result")
