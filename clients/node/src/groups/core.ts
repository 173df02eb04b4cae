// The group consumer's pure decisions: its options, where a new partition starts, what a commit
// carries, the coordinator backoff. Mirrors core/client/group_core.py and coordinator.backoff_s.

import {
  ASSIGNORS, AUTO_COMMIT_INTERVAL_MS_MAX, DEFAULT_ASSIGNOR, INSTANCE_ID_CHARS_MAX, OFFSETS_TOPIC,
  REBALANCE_TIMEOUT_MS_DEFAULT, REBALANCE_TIMEOUT_MS_MAX, REBALANCE_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_DEFAULT,
  SESSION_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MIN, groupProblem, type Assignor, type TopicPartition,
} from "./names.js";

export type StartKind = "beginning" | "end";

export interface GroupOptions {
  group: string;
  start?: StartKind;                 // a partition with no (usable) commit: "beginning" (default) or "end"
  autoCommit?: boolean;              // true
  autoCommitIntervalMs?: number;     // 5000
  sessionTimeoutMs?: number;         // 10000
  rebalanceTimeoutMs?: number;       // 60000
  groupInstanceId?: string | null;   // static membership
  assignor?: Assignor;               // "sticky"
  onAssigned?: (partitions: TopicPartition[], generation: number) => unknown;
  onRevoked?: (partitions: TopicPartition[], generation: number) => unknown;
  onLost?: (partitions: TopicPartition[], generation: number) => unknown;
  signal?: AbortSignal;
  partition?: number;                // refused: the coordinator assigns
}

export interface CheckedGroupOptions {
  group: string; start: StartKind; autoCommit: boolean; autoCommitIntervalMs: number; sessionTimeoutMs: number;
  rebalanceTimeoutMs: number; groupInstanceId: string | null; assignor: Assignor;
}

/** The options after the construction checks, or the one-line reason of the first problem
 * (the caller throws it as InvalidRequestError). The same checks and lines as check_options. */
export function checkGroupOptions(topic: string, o: GroupOptions): CheckedGroupOptions | string {
  if (o === null || typeof o !== "object") return "the group consumer's options must be an object";
  if (o.partition !== undefined) return "partition and group exclude each other: the group's coordinator assigns the partitions";
  if (topic === OFFSETS_TOPIC) return `${OFFSETS_TOPIC} is internal: a group cannot subscribe to it (read it with a plain consumer)`;
  const problem = groupProblem(o.group);
  if (problem !== null) return problem;
  const start = o.start ?? "beginning";
  if (start !== "beginning" && start !== "end") {
    return `a group consumer starts a partition without a commit at "beginning" or "end", not ${show(start)}`;
  }
  const assignor = o.assignor ?? DEFAULT_ASSIGNOR;
  if (!(ASSIGNORS as readonly string[]).includes(assignor)) return `unknown assignor ${show(assignor)}: use one of ${ASSIGNORS.join(", ")}`;
  const numbers: [string, unknown, number, number][] = [
    ["sessionTimeoutMs", o.sessionTimeoutMs ?? SESSION_TIMEOUT_MS_DEFAULT, SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX],
    ["rebalanceTimeoutMs", o.rebalanceTimeoutMs ?? REBALANCE_TIMEOUT_MS_DEFAULT, REBALANCE_TIMEOUT_MS_MIN, REBALANCE_TIMEOUT_MS_MAX],
    ["autoCommitIntervalMs", o.autoCommitIntervalMs ?? 5000, 1, AUTO_COMMIT_INTERVAL_MS_MAX],
  ];
  for (const [name, v, lo, hi] of numbers) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) return `${name} must be ${lo}-${hi}, not ${show(v)}`;
  }
  const id = o.groupInstanceId ?? null;
  if (id !== null && (typeof id !== "string" || id === "" || id.length > INSTANCE_ID_CHARS_MAX)) {
    return `groupInstanceId must be 1-${INSTANCE_ID_CHARS_MAX} characters, not ${show(id)}`;
  }
  if (o.autoCommit !== undefined && typeof o.autoCommit !== "boolean") return `autoCommit must be true or false, not ${show(o.autoCommit)}`;
  return {
    group: o.group, start, autoCommit: o.autoCommit ?? true, autoCommitIntervalMs: (o.autoCommitIntervalMs ?? 5000),
    sessionTimeoutMs: o.sessionTimeoutMs ?? SESSION_TIMEOUT_MS_DEFAULT,
    rebalanceTimeoutMs: o.rebalanceTimeoutMs ?? REBALANCE_TIMEOUT_MS_DEFAULT, groupInstanceId: id, assignor: assignor as Assignor,
  };
}

function show(v: unknown): string {
  let s: string;
  try { s = typeof v === "bigint" ? `${v}n` : JSON.stringify(v) ?? String(v); } catch { s = String(v); }
  return s.length > 100 ? s.slice(0, 100) + "…" : s;
}

export const PAST_END_WAIT_MS = 10_000; // a committed offset past the partition's end is asked about again this long

/** Where a newly assigned partition is read from, and whether the commit was out of range (the
 * caller warns). null: ask again (the SPU holds less than the group read) — as start_offset. */
export function startOffset(committed: bigint | undefined, logStart: bigint, highWatermark: bigint, logEnd: bigint,
  start: StartKind, waitedMs = 0): [bigint | null, boolean] {
  if (committed !== undefined && logStart <= committed && committed <= logEnd) return [committed, false];
  if (committed !== undefined && committed > logEnd) return waitedMs < PAST_END_WAIT_MS ? [null, false] : [highWatermark, true];
  return [start === "beginning" ? logStart : highWatermark, committed !== undefined];
}

/** The positions that moved since the last successful commit. */
export function toCommit(positions: ReadonlyMap<number, bigint>, committed: ReadonlyMap<number, bigint>): Map<number, bigint> {
  const out = new Map<number, bigint>();
  for (const [p, o] of positions) if (committed.get(p) !== o) out.set(p, o);
  return out;
}

/** commit(offsets): {partition: offset} checked; the one-line reason on a bad entry. */
export function checkCommitOffsets(topic: string, offsets: unknown): Map<number, bigint> | string {
  const entries: [unknown, unknown][] = offsets instanceof Map ? [...offsets] :
    offsets !== null && typeof offsets === "object" ? Object.entries(offsets) : [];
  if (entries.length === 0 && !(offsets instanceof Map || (offsets !== null && typeof offsets === "object"))) {
    return `commit offsets must be a Map or an object of partition -> offset, not ${show(offsets)}`;
  }
  const out = new Map<number, bigint>();
  for (const [k, v] of entries) {
    const p = typeof k === "string" && /^[0-9]+$/.test(k) ? Number(k) : k;
    if (typeof p !== "number" || !Number.isInteger(p) || p < 0) return `${show(k)} is not a partition of ${topic}, which this consumer reads`;
    if (!(typeof v === "bigint" || (typeof v === "number" && Number.isSafeInteger(v))) || BigInt(v as bigint) < 0n) {
      return `the offset to commit for ${topic}-${p} must be an integer >= 0, not ${show(v)}`;
    }
    out.set(p, BigInt(v as bigint));
  }
  return out;
}

export const BACKOFF_MIN_MS = 50;
export const BACKOFF_MAX_MS = 200;

/** The pause before retry `attempt` (0-based): 50 ms doubling to 200 ms, jittered into [half, whole]. */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const top = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt, 8));
  return Math.max(BACKOFF_MIN_MS, top * (0.5 + random() / 2));
}
