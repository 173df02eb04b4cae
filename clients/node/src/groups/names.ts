// Group names, the offsets topic, partition sets and the group limits: the Node side of
// core/groups/names.py and core/protocol/limits.py (the group limits). docs/consumers.md.

export const OFFSETS_TOPIC = "_consumer_offsets";
export const ASSIGNORS = ["sticky", "range", "roundrobin"] as const;
export type Assignor = (typeof ASSIGNORS)[number];
export const DEFAULT_ASSIGNOR: Assignor = "sticky";

// core/protocol/limits.py's numbers (and group_core.py's AUTO_COMMIT_INTERVAL_MS_MAX);
// tests/test_node_groups_limits_drift.py fails when the two sides differ.
export const GROUP_NAME_CHARS_MAX = 255;
export const INSTANCE_ID_CHARS_MAX = 255;
export const COMMIT_OFFSETS_MAX = 10_000;
export const HEARTBEAT_WAIT_MS_MAX = 5_000;
export const SESSION_TIMEOUT_MS_MIN = 1_000;
export const SESSION_TIMEOUT_MS_MAX = 600_000;
export const SESSION_TIMEOUT_MS_DEFAULT = 10_000;
export const REBALANCE_TIMEOUT_MS_MIN = 1_000;
export const REBALANCE_TIMEOUT_MS_MAX = 1_800_000;
export const REBALANCE_TIMEOUT_MS_DEFAULT = 60_000;
export const AUTO_COMMIT_INTERVAL_MS_MAX = 3_600_000;

export interface TopicPartition { topic: string; partition: number }

const NAME = /^[A-Za-z0-9._-]+$/;

/** Why `name` is not a group name (one line), or null. The same lines as Python's group_problem. */
export function groupProblem(name: unknown): string | null {
  if (typeof name !== "string" || name === "") return "the group name is empty: use 1-255 of A-Z a-z 0-9 . _ -";
  if (name.length > GROUP_NAME_CHARS_MAX) {
    return `the group name has ${name.length} characters, more than ${GROUP_NAME_CHARS_MAX}: use 1-255 of A-Z a-z 0-9 . _ -`;
  }
  if (name === "." || name === ".." || !NAME.test(name)) {
    return `group name ${JSON.stringify(name.slice(0, 100))} is invalid: use 1-${GROUP_NAME_CHARS_MAX} of A-Z a-z 0-9 . _ - (and not '.' or '..')`;
  }
  return null;
}

/** The partition of `_consumer_offsets` whose leader coordinates a group, given crc32c of the
 * group name's UTF-8 bytes (unsigned): that hash modulo the partition count. */
export function groupPartitionOf(crc: number, partitions: number): number {
  if (!Number.isInteger(partitions) || partitions < 1) throw new RangeError("the offsets topic has no partitions");
  return (crc >>> 0) % partitions;
}

/** A partition's key in a PartitionSet: topic names cannot hold "\n". */
export function tpKey(tp: TopicPartition): string {
  return `${tp.topic}\n${tp.partition}`;
}

export function tpOf(key: string): TopicPartition {
  const i = key.lastIndexOf("\n");
  return { topic: key.slice(0, i), partition: Number(key.slice(i + 1)) };
}

export function tpName(tp: TopicPartition): string {
  return `${tp.topic}-${tp.partition}`;
}

/** An immutable set of partitions (keys of tpKey). */
export type PartitionSet = ReadonlySet<string>;

export function partitionSet(tps: Iterable<TopicPartition>): PartitionSet {
  const out = new Set<string>();
  for (const tp of tps) out.add(tpKey(tp));
  return out;
}

export function setEquals(a: PartitionSet, b: PartitionSet): boolean {
  if (a.size !== b.size) return false;
  for (const k of a) if (!b.has(k)) return false;
  return true;
}

export function setMinus(a: PartitionSet, b: PartitionSet): Set<string> {
  const out = new Set<string>();
  for (const k of a) if (!b.has(k)) out.add(k);
  return out;
}

export function setUnion(a: PartitionSet, b: PartitionSet): Set<string> {
  return new Set([...a, ...b]);
}

/** Sorted partitions (topic, then partition): for callbacks, logs and the wire. */
export function sortedPartitions(s: PartitionSet): TopicPartition[] {
  return [...s].map(tpOf).sort((x, y) => (x.topic < y.topic ? -1 : x.topic > y.topic ? 1 : x.partition - y.partition));
}

export interface WireTopicPartitions { topic: string; partitions: number[] }

/** A set as the wire's List(TopicPartitions): topics and partitions sorted. */
export function wirePartitions(s: PartitionSet): WireTopicPartitions[] {
  const byTopic = new Map<string, number[]>();
  for (const tp of sortedPartitions(s)) {
    const ps = byTopic.get(tp.topic) ?? [];
    ps.push(tp.partition);
    byTopic.set(tp.topic, ps);
  }
  return [...byTopic].map(([topic, partitions]) => ({ topic, partitions }));
}

export function readPartitions(wire: Iterable<WireTopicPartitions>): PartitionSet {
  const out = new Set<string>();
  for (const t of wire) for (const p of t.partitions) out.add(tpKey({ topic: t.topic, partition: Number(p) }));
  return out;
}
