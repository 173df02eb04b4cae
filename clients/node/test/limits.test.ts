/** src/limits.ts copies values of core/protocol/limits.py (and two of metadata/topic_config.py):
 * each must equal the Python one. */
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as limits from "../src/limits.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const python = process.env.KOLK_PYTHON ?? resolve(root, ".venv/bin/python");

it("every limit equals core/protocol/limits.py's (or metadata/topic_config.py's)", () => {
  // Two names differ here: the decoder's own BATCH_BYTES_MAX (batch-format.ts) is another limit.
  const pythonName: Record<string, string> = { MAX_MESSAGE_BYTES_DEFAULT: "BATCH_BYTES_MAX", TOPIC_DEFAULTS_NAME: "DEFAULTS_NAME" };
  const names = Object.keys(limits);
  const out = execFileSync(python, ["-c", `import json, sys; from kolk.protocol import limits as l; from kolk.metadata import topic_config as t; print(json.dumps([getattr(l, n, getattr(t, n, None)) for n in sys.argv[1:]]))`,
    ...names.map((n) => pythonName[n] ?? n)], { cwd: root, encoding: "utf8" });
  const py = JSON.parse(out) as Array<number | string | null>;
  names.forEach((n, i) => {
    const here = (limits as Record<string, number | string>)[n];
    assert.equal(here, py[i], `${n}: ${here} here, ${py[i]} in Python (${pythonName[n] ?? n})`);
  });
});
