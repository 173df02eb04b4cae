import { test } from "node:test";
import assert from "node:assert/strict";
import { CLASSES, CLASS_BY_CODE, CODES, OUTCOME_UNKNOWN, RETRIABLE } from "../src/gen/codes.js";
import {
  ERROR_CLASSES, KolkError, NotLeaderError, RequestTimeoutError, ClusterUnavailableError, TooManyConnectionsError,
  TooManyStreamsError, InvalidRequestError, abortError, errorFromWire,
} from "../src/errors.js";

test("errors.ts has exactly the classes of errors.py, with the same hierarchy", () => {
  assert.deepEqual(Object.keys(ERROR_CLASSES).sort(), Object.keys(CLASSES).sort());
  for (const [name, info] of Object.entries(CLASSES)) {
    const cls = ERROR_CLASSES[name];
    assert.equal(cls.name, name);
    const parent = Object.getPrototypeOf(cls);
    if (info.parent === null) assert.equal(parent, Error);
    else assert.equal(parent, ERROR_CLASSES[info.parent], `${name} extends ${info.parent}`);
    const e = new cls("m");
    assert.equal(e.code, info.code);
    assert.equal(e.retriable, info.retriable);
    assert.equal(e.outcomeUnknown, info.outcomeUnknown);
    assert.equal(e.name, name);
  }
});

test("errorFromWire gives the class errors.py gives, for every code", () => {
  assert.equal(CODES.length, Object.keys(CLASS_BY_CODE).length, "errors.py maps every code");
  for (const code of CODES) {
    const e = errorFromWire({ code, message: `msg ${code}`, leader: code === "notLeader" ? "127.0.0.1:9" : null });
    const cls = ERROR_CLASSES[CLASS_BY_CODE[code]];
    assert.equal(Object.getPrototypeOf(e), cls.prototype, code);
    assert.ok(e instanceof KolkError && e instanceof Error);
    assert.equal(e.code, code);
    assert.equal(e.message, `msg ${code}`);
    assert.equal(e.retriable, RETRIABLE.has(code) || CLASSES[CLASS_BY_CODE[code]].retriable, code);
    assert.equal(e.outcomeUnknown, OUTCOME_UNKNOWN.has(code) || CLASSES[CLASS_BY_CODE[code]].outcomeUnknown, code);
  }
  const nl = errorFromWire({ code: "notLeader", message: "x", leader: "127.0.0.1:9" });
  assert.ok(nl instanceof NotLeaderError);
  assert.equal(nl.leader, "127.0.0.1:9");
  assert.ok(errorFromWire({ code: "timeout", message: "t" }) instanceof RequestTimeoutError);
  assert.ok(errorFromWire({ code: "noLeader", message: "t" }) instanceof ClusterUnavailableError);
  const tmc = errorFromWire({ code: "tooManyConnections", message: "t" });
  assert.ok(tmc instanceof TooManyConnectionsError && tmc instanceof TooManyStreamsError);
  assert.ok(errorFromWire({ code: "tooLarge", message: "t" }) instanceof InvalidRequestError);
});

test("the wire's retriable and outcomeUnknown flags are kept", () => {
  const e = errorFromWire({ code: "notFound", message: "m", retriable: true, outcomeUnknown: true });
  assert.equal(e.retriable, true);
  assert.equal(e.outcomeUnknown, true);
});

test("an unknown code is a KolkError, not retriable unless the wire says so", () => {
  const e = errorFromWire({ code: "someFutureCode", message: "new" });
  assert.equal(Object.getPrototypeOf(e), KolkError.prototype);
  assert.equal(e.code, "someFutureCode");
  assert.equal(e.retriable, false);
  assert.equal(e.outcomeUnknown, false);
  assert.equal(e.leader, null);
  const r = errorFromWire({ code: "someFutureCode", message: "new", retriable: true });
  assert.equal(r.retriable, true);
});

test("abortError is an AbortError", () => {
  const e = abortError();
  assert.equal(e.name, "AbortError");
  assert.ok(e instanceof Error);
});
