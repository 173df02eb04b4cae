// The six group calls on one Connection (core/protocol/kolk.capnp, "consumer groups"): plain
// values in, plain values out. Finding the coordinator and retrying: coordinator.ts.

import type { Connection, CallOptions } from "../connection.js";
import type { SpuResponse, TopicPartitions } from "../gen/kolk.js";
import type * as $ from "capnp-es";
import type { HeartbeatAnswer, HeartbeatFields } from "./membership.js";
import type { WireTopicPartitions } from "./names.js";

export interface Committed { topic: string; partition: number; offset: bigint; metadata: string }

function fillPartitions(list: $.List<TopicPartitions>, from: WireTopicPartitions[]): void {
  from.forEach((t, i) => {
    const s = list.get(i);
    s.topic = t.topic;
    const ps = s._initPartitions(t.partitions.length);
    t.partitions.forEach((p, j) => ps.set(j, p));
  });
}

function readPartitionList(list: $.List<TopicPartitions>): WireTopicPartitions[] {
  const out: WireTopicPartitions[] = [];
  for (let i = 0; i < list.length; i++) {
    const t = list.get(i);
    const ps: number[] = [];
    for (let j = 0; j < t.partitions.length; j++) ps.push(t.partitions.get(j));
    out.push({ topic: t.topic, partitions: ps });
  }
  return out;
}

export async function heartbeatCall(conn: Connection, f: HeartbeatFields, opts: CallOptions): Promise<HeartbeatAnswer> {
  return conn.spuCall((req) => {
    const r = req._initGroupHeartbeat();
    r.group = f.group; r.memberId = f.memberId; r.instanceId = f.instanceId; r.memberEpoch = f.memberEpoch;
    const topics = r._initTopics(f.topics.length);
    f.topics.forEach((t, i) => topics.set(i, t));
    fillPartitions(r._initOwned(f.owned.length), f.owned);
    r.sessionTimeoutMs = f.sessionTimeoutMs; r.rebalanceTimeoutMs = f.rebalanceTimeoutMs; r.assignor = f.assignor; r.waitMs = f.waitMs;
  }, (resp: SpuResponse) => {
    const g = resp.groupHeartbeat;
    if (!g.result.ok) return g; // checkResult throws it
    return { result: g.result, memberId: g.memberId, memberEpoch: g.memberEpoch, assignment: readPartitionList(g.assignment),
      heartbeatIntervalMs: g.heartbeatIntervalMs };
  }, opts) as Promise<HeartbeatAnswer>;
}

export async function commitCall(conn: Connection, group: string, memberId: string, memberEpoch: number,
  offsets: Committed[], opts: CallOptions): Promise<void> {
  await conn.spuCall((req) => {
    const r = req._initOffsetCommit();
    r.group = group; r.memberId = memberId; r.memberEpoch = memberEpoch;
    const list = r._initOffsets(offsets.length);
    offsets.forEach((o, i) => {
      const s = list.get(i);
      s.topic = o.topic; s.partition = o.partition; s.offset = o.offset; s.metadata = o.metadata;
    });
  }, (resp) => resp.offsetCommit, { ...opts, write: true });
}

export async function fetchCall(conn: Connection, group: string, topics: WireTopicPartitions[], opts: CallOptions): Promise<Committed[]> {
  return conn.spuCall((req) => {
    const r = req._initOffsetFetch();
    r.group = group;
    fillPartitions(r._initTopics(topics.length), topics);
  }, (resp) => {
    const f = resp.offsetFetch;
    if (!f.result.ok) return f;
    const out: Committed[] = [];
    for (let i = 0; i < f.offsets.length; i++) {
      const o = f.offsets.get(i);
      out.push({ topic: o.topic, partition: o.partition, offset: o.offset, metadata: o.metadata });
    }
    return out;
  }, opts) as Promise<Committed[]>;
}

export async function describeCall(conn: Connection, group: string, opts: CallOptions): Promise<string> {
  return conn.spuCall((req) => { req._initDescribeGroup().group = group; },
    (resp) => (resp.describeGroup.result.ok ? resp.describeGroup.groupJson : resp.describeGroup), opts) as Promise<string>;
}

export async function listCall(conn: Connection, opts: CallOptions): Promise<string> {
  return conn.spuCall((req) => { req._initListGroups(); },
    (resp) => (resp.listGroups.result.ok ? resp.listGroups.groupsJson : resp.listGroups), opts) as Promise<string>;
}

export async function deleteCall(conn: Connection, group: string, opts: CallOptions): Promise<void> {
  await conn.spuCall((req) => { req._initDeleteGroup().group = group; }, (resp) => resp.deleteGroup, { ...opts, write: true });
}
