// A member's state in its group as plain functions: the heartbeat loop's decisions of
// core/client/group_membership.py without the I/O (src/groups/heartbeat.ts runs them).
//
// Events in: a heartbeat's answer or error, the consumer's reconcile (what it holds now), its
// taking of lost partitions. Effects out: the next heartbeat's fields, when to send it, whether
// to wake the consumer, the plan of a reconcile (partitions to stop, to start).

import {
  HEARTBEAT_WAIT_MS_MAX, readPartitions, setEquals, setMinus, setUnion, tpOf, wirePartitions,
  type PartitionSet, type WireTopicPartitions,
} from "./names.js";

export const HEARTBEAT_INTERVAL_MS_DEFAULT = 3_000; // when a coordinator's answer names none
export const ANSWER_MARGIN_MS = 3_000;              // a held heartbeat's answer may come this long after its waitMs
export const MIN_HEARTBEAT_GAP_MS = 50;             // never heartbeat faster unless what the member holds changed
export const LEAVE = -1;                            // a clean leave: the partitions are free at once
export const LEAVE_STATIC = -2;                     // a static member's leave: its partitions wait a session timeout

export interface MemberConfig {
  group: string; topics: string[]; instanceId: string | null; sessionTimeoutMs: number;
  rebalanceTimeoutMs: number; assignor: string;
}

export interface MemberState {
  readonly memberId: string;              // "" until joined (and after a fence)
  readonly epoch: number;                 // the last memberEpoch answered; 0 to join
  readonly intervalMs: number;            // the coordinator's heartbeat interval; 0 before the first answer
  readonly owned: PartitionSet;           // what the consumer holds, as it last said
  readonly target: { parts: PartitionSet; epoch: number } | null; // the assignment while it differs from owned
  readonly lost: PartitionSet;            // dropped by a fence, not yet by the consumer
  readonly lostEpoch: number;
  readonly incarnation: number;           // +1 at every fence: a reconcile straddling one gives up its result
  readonly error: WireFailure | null;     // the loop stopped: raised from every later poll
  readonly failures: number;              // retriable failures in a row (the backoff's attempt)
  readonly heartbeats: number;            // answered heartbeats
}

export const INITIAL: MemberState = Object.freeze({
  memberId: "", epoch: 0, intervalMs: 0, owned: new Set<string>(), target: null, lost: new Set<string>(), lostEpoch: 0,
  incarnation: 0, error: null, failures: 0, heartbeats: 0,
});

export interface HeartbeatFields {
  group: string; memberId: string; instanceId: string; memberEpoch: number; topics: string[];
  owned: WireTopicPartitions[]; sessionTimeoutMs: number; rebalanceTimeoutMs: number; assignor: string; waitMs: number;
}

export function joined(s: MemberState): boolean {
  return s.memberId !== "";
}

/** The long poll's wait: the coordinator's interval (capped); 0 for a join. */
export function waitMsOf(s: MemberState): number {
  return joined(s) ? Math.min(s.intervalMs || HEARTBEAT_INTERVAL_MS_DEFAULT, HEARTBEAT_WAIT_MS_MAX) : 0;
}

/** The next heartbeat: fields, how long one attempt may wait, and the call's whole deadline. */
export function heartbeatRequest(s: MemberState, c: MemberConfig): { fields: HeartbeatFields; attemptMs: number; deadlineMs: number } {
  const waitMs = waitMsOf(s);
  return {
    fields: fieldsOf(s, c, s.epoch, waitMs, s.owned),
    attemptMs: waitMs + ANSWER_MARGIN_MS,
    deadlineMs: Math.max(c.sessionTimeoutMs, waitMs + ANSWER_MARGIN_MS),
  };
}

/** The leave: epoch -1 (-2 for a static member), nothing owned; null when never joined. */
export function leaveRequest(s: MemberState, c: MemberConfig): HeartbeatFields | null {
  if (!joined(s)) return null;
  return fieldsOf(s, c, c.instanceId ? LEAVE_STATIC : LEAVE, 0, new Set());
}

function fieldsOf(s: MemberState, c: MemberConfig, epoch: number, waitMs: number, owned: PartitionSet): HeartbeatFields {
  return {
    group: c.group, memberId: s.memberId, instanceId: c.instanceId ?? "", memberEpoch: epoch, topics: c.topics,
    owned: wirePartitions(owned), sessionTimeoutMs: c.sessionTimeoutMs, rebalanceTimeoutMs: c.rebalanceTimeoutMs,
    assignor: c.assignor, waitMs,
  };
}

/** An error as the loop sees it: the KolkError's class name and whether it is retriable. */
export interface WireFailure { name: string; message: string; retriable: boolean; error?: unknown }

export interface HeartbeatAnswer {
  memberId: string; memberEpoch: number; assignment: WireTopicPartitions[]; heartbeatIntervalMs: number;
}

/** What the loop does next. "now": send at once. "ownedOrInterval": wait until the consumer
 * reconciled (setOwned) or one interval passed. "pause": sleep ms then send. "stop": end the loop. */
export type Next = { kind: "now" } | { kind: "ownedOrInterval"; ms: number } | { kind: "pause"; ms: number } | { kind: "stop" };

export interface Step { state: MemberState; next: Next; wake: boolean; log?: { level: "info" | "warn" | "error"; line: string } }

/** A heartbeat's answer. `elapsedMs`: how long it took; `sentOwned`: the owned it carried. */
export function onAnswer(s: MemberState, r: HeartbeatAnswer, elapsedMs: number, sentOwned: PartitionSet): Step {
  const assignment = readPartitions(r.assignment);
  const base = { ...s, memberId: r.memberId, epoch: r.memberEpoch, failures: 0, heartbeats: s.heartbeats + 1,
    intervalMs: r.heartbeatIntervalMs || HEARTBEAT_INTERVAL_MS_DEFAULT };
  if (!setEquals(assignment, s.owned)) {
    return { state: { ...base, target: { parts: assignment, epoch: r.memberEpoch } }, wake: true,
      next: { kind: "ownedOrInterval", ms: base.intervalMs } };
  }
  const state = { ...base, target: null };
  const quick = elapsedMs < MIN_HEARTBEAT_GAP_MS && setEquals(s.owned, sentOwned);
  return { state, wake: false, next: quick ? { kind: "pause", ms: MIN_HEARTBEAT_GAP_MS } : { kind: "now" } };
}

/** A heartbeat's failure (after the coordinator call's own retries). `backoff(attempt)` gives the pause. */
export function onFailure(s: MemberState, f: WireFailure, backoff: (attempt: number) => number): Step {
  const who = s.memberId || "(joining)";
  if (f.name === "FencedInstanceError") {
    // Another process took over this static member: drop everything, do not rejoin.
    return { state: { ...fence(s), error: f }, wake: true, next: { kind: "stop" }, log: { level: "error", line: f.message } };
  }
  if (f.name === "StaleMemberError") {
    return { state: fence(s), wake: true, next: { kind: "pause", ms: MIN_HEARTBEAT_GAP_MS },
      log: { level: "info", line: `member ${s.memberId || "-"} was removed (${f.message}); dropping ${s.owned.size} partition(s) without committing and joining again` } };
  }
  if (f.retriable) {
    return { state: { ...s, failures: s.failures + 1 }, wake: false,
      next: { kind: "pause", ms: Math.max(MIN_HEARTBEAT_GAP_MS, backoff(s.failures)) },
      log: { level: "warn", line: `heartbeat of member ${who} failed (${f.message}); still trying` } };
  }
  return { state: { ...s, error: f }, wake: true, next: { kind: "stop" }, log: { level: "error", line: `heartbeat refused: ${f.message}` } };
}

/** The coordinator removed the member: all it holds is lost; join again from scratch. */
export function fence(s: MemberState): MemberState {
  return { ...s, lost: setUnion(s.lost, s.owned), lostEpoch: s.epoch, owned: new Set(), target: null, memberId: "", epoch: 0,
    incarnation: s.incarnation + 1 };
}

/** The consumer now holds `owned` (a reconcile that began at `incarnation`). ok false, and
 * `owned` counted as lost, when a fence came in between. `changed`: the loop's wait ends. */
export function setOwned(s: MemberState, owned: PartitionSet, incarnation: number): { state: MemberState; ok: boolean } {
  if (incarnation !== s.incarnation) return { state: { ...s, lost: setUnion(s.lost, owned) }, ok: false };
  const target = s.target !== null && setEquals(s.target.parts, owned) ? null : s.target;
  return { state: { ...s, owned: new Set(owned), target }, ok: true };
}

export function takeLost(s: MemberState): { state: MemberState; lost: PartitionSet; epoch: number } {
  return { state: { ...s, lost: new Set() }, lost: s.lost, epoch: s.lostEpoch };
}

/** What a reconcile toward the target does: stop `revoke` (commit them first), then start `add`
 * (only partitions of the consumer's topics). null when there is no target. */
export function reconcilePlan(s: MemberState, topics: readonly string[]): { revoke: Set<string>; add: Set<string>; epoch: number; incarnation: number } | null {
  if (s.target === null) return null;
  const add = new Set([...setMinus(s.target.parts, s.owned)].filter((k) => topics.includes(tpOf(k).topic)));
  return { revoke: setMinus(s.owned, s.target.parts), add, epoch: s.target.epoch, incarnation: s.incarnation };
}

/** After a reconcile: the set the consumer holds given what it revoked and what started. */
export function afterReconcile(held: PartitionSet, revoked: PartitionSet, started: PartitionSet): Set<string> {
  return setUnion(setMinus(held, revoked), started);
}
