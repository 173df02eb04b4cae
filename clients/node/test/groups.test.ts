// Consumer groups, pure parts: names, options, start offsets, commits, and the membership state
// machine under seeded random sequences of coordinator answers, errors and reconciles.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  groupProblem, groupPartitionOf, partitionSet, readPartitions, setEquals, tpKey, tpOf, wirePartitions,
  type PartitionSet,
} from "../src/groups/names.js";
import { backoffMs, checkCommitOffsets, checkGroupOptions, startOffset, toCommit } from "../src/groups/core.js";
import {
  INITIAL, afterReconcile, heartbeatRequest, leaveRequest, onAnswer, onFailure, reconcilePlan, setOwned, takeLost,
  type MemberConfig, type MemberState, type WireFailure,
} from "../src/groups/membership.js";

function rng(seed: number): () => number { // mulberry32
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("group names: each kind of bad name has its own line", () => {
  assert.equal(groupProblem("billing.v2_x-1"), null);
  assert.match(groupProblem("")!, /the group name is empty/);
  assert.match(groupProblem(undefined)!, /the group name is empty/);
  assert.match(groupProblem("x".repeat(256))!, /has 256 characters, more than 255/);
  assert.equal(groupProblem("x".repeat(255)), null);
  for (const bad of [".", "..", "a/b", "a\nb", "grüppe", "a b"]) assert.match(groupProblem(bad)!, /is invalid: use 1-255/);
});

test("the coordinator's partition is crc32c modulo the partition count", () => {
  assert.equal(groupPartitionOf(0xffffffff, 8), 0xffffffff % 8);
  assert.equal(groupPartitionOf(-1, 8), 0xffffffff % 8); // a signed crc is read as unsigned
  assert.throws(() => groupPartitionOf(5, 0), /no partitions/);
});

test("partition sets go to the wire and back (seeded random)", () => {
  const r = rng(7);
  for (let i = 0; i < 200; i++) {
    const tps = Array.from({ length: Math.floor(r() * 20) }, () => ({ topic: ["a", "b.c", "d_e-f"][Math.floor(r() * 3)], partition: Math.floor(r() * 50) }));
    const s = partitionSet(tps);
    const wire = wirePartitions(s);
    assert.ok(setEquals(readPartitions(wire), s));
    for (const t of wire) assert.deepEqual(t.partitions, [...t.partitions].sort((x, y) => x - y));
    for (const tp of tps) assert.deepEqual(tpOf(tpKey(tp)), tp);
  }
});

test("options: every bad option is refused with one line naming it", () => {
  const ok = checkGroupOptions("orders", { group: "g" });
  assert.equal(typeof ok, "object");
  assert.deepEqual(ok, { group: "g", start: "beginning", autoCommit: true, autoCommitIntervalMs: 5000, sessionTimeoutMs: 10000,
    rebalanceTimeoutMs: 60000, groupInstanceId: null, assignor: "sticky" });
  const cases: [object, RegExp, string?][] = [
    [{ group: "g", partition: 0 }, /partition and group exclude each other/],
    [{ group: "g" }, /_consumer_offsets is internal/, "_consumer_offsets"],
    [{ group: "" }, /the group name is empty/],
    [{ group: "a/b" }, /is invalid/],
    [{ group: "g", start: "middle" }, /at "beginning" or "end", not "middle"/],
    [{ group: "g", assignor: "fair" }, /unknown assignor "fair": use one of sticky, range, roundrobin/],
    [{ group: "g", sessionTimeoutMs: 999 }, /sessionTimeoutMs must be 1000-600000, not 999/],
    [{ group: "g", sessionTimeoutMs: 600001 }, /sessionTimeoutMs must be 1000-600000/],
    [{ group: "g", sessionTimeoutMs: 1500.5 }, /sessionTimeoutMs must be/],
    [{ group: "g", rebalanceTimeoutMs: 1_800_001 }, /rebalanceTimeoutMs must be 1000-1800000/],
    [{ group: "g", autoCommitIntervalMs: 0 }, /autoCommitIntervalMs must be 1-3600000, not 0/],
    [{ group: "g", autoCommitIntervalMs: "5" }, /autoCommitIntervalMs must be 1-3600000, not "5"/],
    [{ group: "g", groupInstanceId: "" }, /groupInstanceId must be 1-255 characters/],
    [{ group: "g", groupInstanceId: "i".repeat(256) }, /groupInstanceId must be 1-255 characters/],
    [{ group: "g", autoCommit: "yes" }, /autoCommit must be true or false/],
  ];
  for (const [o, line, topic] of cases) {
    const got = checkGroupOptions(topic ?? "orders", o as never);
    assert.equal(typeof got, "string", JSON.stringify(o));
    assert.match(got as string, line);
    assert.ok(!(got as string).includes("\n"));
  }
});

test("where a new partition starts", () => {
  assert.deepEqual(startOffset(5n, 0n, 10n, 10n, "end"), [5n, false]);          // a usable commit
  assert.deepEqual(startOffset(10n, 0n, 10n, 10n, "beginning"), [10n, false]);  // at the end: waits there
  assert.deepEqual(startOffset(undefined, 3n, 10n, 12n, "beginning"), [3n, false]);
  assert.deepEqual(startOffset(undefined, 3n, 10n, 12n, "end"), [10n, false]);   // the high watermark
  assert.deepEqual(startOffset(1n, 3n, 10n, 12n, "beginning"), [3n, true]);     // below the log start: start, warned
  assert.deepEqual(startOffset(20n, 3n, 10n, 12n, "beginning", 0), [null, false]); // past the end: ask again
  assert.deepEqual(startOffset(20n, 3n, 10n, 12n, "beginning", 10_000), [10n, true]); // then the high watermark
});

test("commits carry the positions that moved; commit(offsets) is checked", () => {
  assert.deepEqual(toCommit(new Map([[0, 5n], [1, 7n], [2, 0n]]), new Map([[0, 5n], [1, 6n]])), new Map([[1, 7n], [2, 0n]]));
  assert.deepEqual(checkCommitOffsets("t", { 0: 5, 3: 7n }), new Map([[0, 5n], [3, 7n]]));
  assert.deepEqual(checkCommitOffsets("t", new Map([[1, 2n]])), new Map([[1, 2n]]));
  assert.match(checkCommitOffsets("t", new Map([[-1, 2n]])) as string, /-1 is not a partition of t/);
  assert.match(checkCommitOffsets("t", { x: 1 }) as string, /"x" is not a partition of t/);
  assert.match(checkCommitOffsets("t", { 0: -1 }) as string, /offset to commit for t-0 must be an integer >= 0, not -1/);
  assert.match(checkCommitOffsets("t", { 0: 1.5 }) as string, /offset to commit for t-0 must be an integer/);
  assert.match(checkCommitOffsets("t", 5) as string, /must be a Map or an object/);
});

test("backoff is 50-200 ms, jittered, doubling", () => {
  const r = rng(3);
  for (let a = 0; a < 20; a++) {
    const ms = backoffMs(a, r);
    assert.ok(ms >= 50 && ms <= 200, String(ms));
  }
  assert.equal(backoffMs(0, () => 1), 50);
  assert.equal(backoffMs(5, () => 1), 200);
});

const CFG: MemberConfig = { group: "g", topics: ["t"], instanceId: null, sessionTimeoutMs: 10000, rebalanceTimeoutMs: 60000, assignor: "sticky" };

// One member against a model coordinator, for many seeds. The model hands out random
// assignments (partitions of "t", and of "u" the member does not read), with a new epoch at
// every change, and random errors; the consumer model reconciles at random times, some
// partitions failing to start, and a fence may land in the middle of a reconcile.
test("membership: seeded random sequences keep the invariants", () => {
  for (let seed = 1; seed <= 300; seed++) runSequence(seed);
});

function runSequence(seed: number): void {
  const r = rng(seed);
  const pick = (n: number) => Math.floor(r() * n);
  let s: MemberState = INITIAL;
  let running = new Set<string>();              // partitions the consumer reads now
  const startedIn = new Map<string, number>();  // partition -> incarnation it was started in
  const committed = new Set<string>();          // partitions whose position was committed at their revoke
  let coordinatorEpoch = 0;
  let lastAssignment: PartitionSet = new Set();
  let announced = new Set<string>();            // reported owned in this incarnation
  let lastEpochSent = -1;
  let lastIncarnation = 0;
  let lastGeneration = -1;
  let stopped = false;
  const randomAssignment = () => {
    const out = new Set<string>();
    for (let p = 0; p < 6; p++) if (r() < 0.5) out.add(tpKey({ topic: "t", partition: p }));
    if (r() < 0.2) out.add(tpKey({ topic: "u", partition: pick(3) }));
    return out;
  };
  for (let step = 0; step < 200 && !stopped; step++) {
    const event = r();
    if (event < 0.45) {
      // A heartbeat goes out and is answered.
      const req = heartbeatRequest(s, CFG);
      const owned = readPartitions(req.fields.owned);
      for (const k of owned) assert.ok(running.has(k), `seed ${seed}: reports ${k} it does not read`);
      if (s.incarnation !== lastIncarnation) { announced = new Set(); lastEpochSent = -1; lastIncarnation = s.incarnation; }
      for (const k of announced) {
        if (!owned.has(k)) {
          assert.ok(!running.has(k), `seed ${seed}: hands back ${k} while still reading it`);
          assert.ok(committed.has(k), `seed ${seed}: hands back ${k} before committing it`);
        }
      }
      for (const k of running) if (announced.has(k)) assert.ok(owned.has(k), `seed ${seed}: ${k} read but not reported`);
      announced = new Set(owned);
      if (req.fields.memberId === "") assert.equal(req.fields.memberEpoch, 0);
      assert.ok(req.fields.memberEpoch >= lastEpochSent, `seed ${seed}: epoch went back`);
      lastEpochSent = req.fields.memberEpoch;
      const change = r() < 0.4 || s.memberId === "";
      const assignment = change ? randomAssignment() : lastAssignment;
      if (change && !setEquals(assignment, lastAssignment)) coordinatorEpoch++;
      lastAssignment = assignment;
      const st = onAnswer(s, { memberId: s.memberId || `m${seed}-${s.incarnation}`, memberEpoch: coordinatorEpoch,
        assignment: wirePartitions(assignment), heartbeatIntervalMs: 1000 }, pick(100), owned);
      s = st.state;
      assert.equal(st.wake, !setEquals(assignment, s.owned));
      assert.equal(s.target === null, setEquals(assignment, s.owned));
    } else if (event < 0.6) {
      const kinds: WireFailure[] = [
        { name: "StaleMemberError", message: "not a member", retriable: false },
        { name: "NotCoordinatorError", message: "moved", retriable: true },
        { name: "RequestTimeoutError", message: "slow", retriable: true },
        { name: "FencedInstanceError", message: "fenced", retriable: false },
        { name: "PermissionDeniedError", message: "denied", retriable: false },
      ];
      const f = kinds[r() < 0.97 ? pick(3) : 3 + pick(2)];
      const before = s;
      const st = onFailure(s, f, (a) => backoffMs(a, r));
      s = st.state;
      if (f.name === "StaleMemberError" || f.name === "FencedInstanceError") {
        assert.equal(s.memberId, ""); assert.equal(s.epoch, 0); assert.equal(s.owned.size, 0);
        assert.equal(s.incarnation, before.incarnation + 1);
        for (const k of before.owned) assert.ok(s.lost.has(k));
        lastAssignment = new Set();
      }
      if (f.retriable) assert.ok(st.next.kind === "pause" && st.next.ms >= 50 && st.next.ms <= 200);
      if (st.next.kind === "stop") stopped = true;
    } else {
      // A poll boundary: drop what was lost (no commit), then reconcile toward the target.
      const tl = takeLost(s);
      s = tl.state;
      for (const k of tl.lost) { running.delete(k); startedIn.delete(k); }
      const plan = reconcilePlan(s, CFG.topics);
      if (plan === null) continue;
      const assigned = s.target!.parts;
      assert.ok(plan.epoch >= lastGeneration || plan.incarnation !== lastIncarnation);
      lastGeneration = plan.epoch;
      for (const k of plan.add) assert.equal(tpOf(k).topic, "t");
      let held: PartitionSet = s.owned;
      for (const k of plan.revoke) { running.delete(k); committed.add(k); startedIn.delete(k); }
      if (plan.revoke.size) {
        const so = setOwned(s, afterReconcile(held, plan.revoke, new Set()), plan.incarnation);
        s = so.state;
        held = afterReconcile(held, plan.revoke, new Set());
        if (!so.ok) continue;
      }
      if (r() < 0.1) s = onFailure(s, { name: "StaleMemberError", message: "gone", retriable: false }, () => 50).state; // a fence mid-reconcile
      const started = new Set([...plan.add].filter(() => r() < 0.8)); // some partitions have no leader now
      for (const k of started) {
        assert.ok(s.incarnation !== plan.incarnation || s.target?.parts.has(k), `seed ${seed}: starts ${k} it was not assigned`);
        running.add(k); startedIn.set(k, plan.incarnation); committed.delete(k);
      }
      const so = setOwned(s, afterReconcile(held, new Set(), started), plan.incarnation);
      s = so.state;
      if (so.ok) {
        for (const k of s.owned) assert.ok(assigned.has(k), `seed ${seed}: still holds ${k} after a reconcile that took it away`);
      } else {
        for (const k of started) assert.ok(s.lost.has(k), `seed ${seed}: ${k} started for a fenced member is not lost`);
      }
    }
    // Every partition the consumer reads was assigned to it in this incarnation, or is lost and
    // waits for the next boundary to be dropped.
    for (const k of running) assert.ok(s.owned.has(k) || s.lost.has(k) || (s.target?.parts.has(k) ?? false),
      `seed ${seed}: reads ${k} that is neither owned nor lost`);
    for (const k of s.owned) assert.ok(running.has(k), `seed ${seed}: owned ${k} is not read`);
  }
}

test("the leave carries epoch -1, or -2 for a static member, and nothing owned", () => {
  assert.equal(leaveRequest(INITIAL, CFG), null);
  const s: MemberState = { ...INITIAL, memberId: "m", epoch: 4, owned: partitionSet([{ topic: "t", partition: 1 }]) };
  assert.deepEqual([leaveRequest(s, CFG)!.memberEpoch, leaveRequest(s, CFG)!.owned], [-1, []]);
  assert.equal(leaveRequest(s, { ...CFG, instanceId: "i1" })!.memberEpoch, -2);
  assert.equal(leaveRequest(s, { ...CFG, instanceId: "i1" })!.instanceId, "i1");
});

test("a join waits 0 ms; a member waits its interval, capped at 5 s", () => {
  assert.equal(heartbeatRequest(INITIAL, CFG).fields.waitMs, 0);
  const s: MemberState = { ...INITIAL, memberId: "m", epoch: 1, intervalMs: 9000 };
  assert.equal(heartbeatRequest(s, CFG).fields.waitMs, 5000);
  assert.equal(heartbeatRequest(s, CFG).attemptMs, 8000);
  assert.equal(heartbeatRequest(s, CFG).deadlineMs, 10000);
});

test("a quick answer with nothing changed pauses 50 ms; a slow one sends at once", () => {
  const s: MemberState = { ...INITIAL, memberId: "m", epoch: 1 };
  const a = { memberId: "m", memberEpoch: 1, assignment: [], heartbeatIntervalMs: 1000 };
  assert.deepEqual(onAnswer(s, a, 10, new Set()).next, { kind: "pause", ms: 50 });
  assert.deepEqual(onAnswer(s, a, 900, new Set()).next, { kind: "now" });
  const b = { ...a, memberEpoch: 2, assignment: [{ topic: "t", partitions: [0] }] };
  assert.deepEqual(onAnswer(s, b, 10, new Set()).next, { kind: "ownedOrInterval", ms: 1000 });
});

// groupCall's retries, against a stand-in for the client's metadata (the calls themselves are
// the cluster test's): which errors are retried, the offsets topic created the first time, the
// deadline's message, outcome unknown after a lost write.
import { groupCall, type GroupHost } from "../src/groups/coordinator.js";
import { AlreadyExistsError, PermissionDeniedError, NotCoordinatorError, NotFoundError, RequestTimeoutError, StaleMemberError, InvalidRequestError } from "../src/errors.js";
import type { Connection } from "../src/connection.js";

function fakeHost(topicExists = true): GroupHost & { created: number; forgotten: number; asked: number[] } {
  let exists = topicExists;
  const h = {
    created: 0, forgotten: 0, asked: [] as number[],
    partitionCount: async () => { if (!exists) throw new NotFoundError("topic _consumer_offsets does not exist"); return 8; },
    leader: async (_t: string, p: number) => { h.asked.push(p); return { conn: {} as Connection, address: "127.0.0.1:1" }; },
    forgetLeaders: () => { h.forgotten++; },
    dropConnection: () => undefined,
    createTopic: async () => { h.created++; if (exists) throw new AlreadyExistsError("exists"); exists = true; },
  };
  return h;
}

test("groupCall retries what is retriable, refuses the rest at once, and names the deadline", async () => {
  const h = fakeHost(false);
  let calls = 0;
  const got = await groupCall(h, "billing", async () => { if (++calls < 3) throw new NotCoordinatorError("moved"); return "ok"; });
  assert.equal(got, "ok");
  assert.equal(h.created, 1); // the first lookup asked the SC to create _consumer_offsets
  assert.ok(h.forgotten >= 3);
  assert.ok(h.asked.every((p) => p === h.asked[0] && p >= 0 && p < 8));
  await assert.rejects(groupCall(h, "billing", async () => { throw new StaleMemberError("not a member"); }), StaleMemberError);
  await assert.rejects(groupCall(h, "billing", async () => { throw new PermissionDeniedError("no"); }), PermissionDeniedError);
  await assert.rejects(groupCall(h, "billing", async () => { throw new NotCoordinatorError("moved"); }, { deadlineMs: 300 }),
    /moved \(gave up on the coordinator of group billing after 0\.\d s\)/);
  let n = 0;
  await assert.rejects(groupCall(h, "billing", async () => {
    if (n++ === 0) throw new RequestTimeoutError("slow", { outcomeUnknown: true });
    throw new StaleMemberError("gone");
  }, { write: true }), (e: StaleMemberError) => e.outcomeUnknown && /the outcome is unknown/.test(e.message));
  assert.throws(() => groupCall(h, "bad/name", async () => 1), InvalidRequestError);
});

test("groupCall stops at once when its signal aborts", async () => {
  const h = fakeHost();
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await assert.rejects(groupCall(h, "g", async () => { throw new NotCoordinatorError("moved"); }, { signal: ac.signal }), { name: "AbortError" });
});
