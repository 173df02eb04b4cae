/** src/limits.ts copies numbers of core/protocol/limits.py: each must equal the Python one. */
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as limits from "../src/limits.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const python = process.env.KOLK_PYTHON ?? resolve(root, ".venv/bin/python");

it("every limit equals core/protocol/limits.py's", () => {
  const names = Object.keys(limits);
  const out = execFileSync(python, ["-c", `import json, sys; from kolk.protocol import limits as l; print(json.dumps({n: getattr(l, n, None) for n in sys.argv[1:]}))`, ...names], { cwd: root, encoding: "utf8" });
  const py = JSON.parse(out) as Record<string, number | null>;
  for (const n of names) assert.equal((limits as Record<string, number>)[n], py[n], `${n}: ${(limits as Record<string, number>)[n]} here, ${py[n]} in limits.py`);
});
