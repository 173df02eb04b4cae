/** SmartModule chains are validated as Python's normalize_chain, each bad input on its own. */
import { it } from "node:test";
import assert from "node:assert/strict";
import { InvalidRequestError } from "../src/errors.js";
import { normalizeChain } from "../src/smartmodules.js";

it("normalizes names and params", () => {
  assert.deepEqual(normalizeChain(["a@1", { name: "b", params: { n: 10, t: true, s: "x" } }]),
    [{ name: "a@1", params: [] }, { name: "b", params: [["n", "10"], ["t", "true"], ["s", "x"]] }]);
  assert.deepEqual(normalizeChain(undefined), []);
});
it("refuses more than 16 stages", () => {
  assert.throws(() => normalizeChain(Array(17).fill("a")), (e: Error) => e instanceof InvalidRequestError && /17 stages; at most 16/.test(e.message));
});
it("refuses more than 64 params", () => {
  const params = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"]));
  assert.throws(() => normalizeChain([{ name: "a", params }]), /65 params; at most 64/);
});
it("refuses a stage that is not a name", () => {
  assert.throws(() => normalizeChain([42 as never]), /NAME\[@VERSION\]/);
  assert.throws(() => normalizeChain([""]), /NAME\[@VERSION\]/);
});
it("refuses a param value that is not text", () => {
  assert.throws(() => normalizeChain([{ name: "a", params: { k: {} as never } }]), /parameter values are text/);
});
it("refuses a chain that is not a list", () => {
  assert.throws(() => normalizeChain("a@1" as never), /smartmodules is a list of stages/);
});
