// Consumer groups for operators: list, describe, delete (core/client/groups_admin.py and
// coordinator.list_groups; docs/consumers.md "Operations"). Groups live on SPUs, so these are
// calls of the client, not of the SC admin.

import type { KolkClient } from "../client.js";
import { InUseError, KolkError, NotFoundError } from "../errors.js";
import { GROUP_CALL_DEADLINE_MS, checkGroup, groupCall, offsetsLeaderCall, offsetsPartitions, sleep } from "./coordinator.js";
import { backoffMs } from "./core.js";
import { hostOf } from "./consumer.js";
import { OFFSETS_TOPIC } from "./names.js";
import { deleteCall, describeCall, listCall } from "./wire.js";

export interface GroupListing { group: string; state: string; members: number; coordinator: number | null; [k: string]: unknown }

/** Every group of the cluster, sorted by name: each SPU leading a partition of
 * `_consumer_offsets` is asked once, all at once. [] before any group was used. All or nothing:
 * one coordinator that does not answer within the deadline fails the call. */
export async function listGroups(client: KolkClient, deadlineMs = GROUP_CALL_DEADLINE_MS): Promise<GroupListing[]> {
  const host = hostOf(client);
  const end = Date.now() + deadlineMs;
  let n = 0;
  for (let attempt = 0; ; attempt++) {
    try {
      n = await offsetsPartitions(host, undefined, false);
      break;
    } catch (e) {
      if (e instanceof NotFoundError) return []; // no group was ever used
      if (!(e instanceof KolkError) || !e.retriable || Date.now() + 50 >= end) throw e;
      await sleep(backoffMs(attempt));
    }
  }
  // One partition per distinct leader is enough: an SPU answers for every group it coordinates.
  const byLeader = new Map<number | null, number>();
  const parts = await client.partitions(OFFSETS_TOPIC);
  parts.forEach((p, i) => { if (!byLeader.has(p.leader)) byLeader.set(p.leader, i); });
  const ask = byLeader.has(null) ? [...Array(n).keys()] : [...byLeader.values()];
  const answers = await Promise.all(ask.map((p) => offsetsLeaderCall(host, p, (c, o) => listCall(c, o), { deadlineMs: Math.max(100, end - Date.now()) })));
  const seen = new Map<string, GroupListing>();
  for (const text of answers) {
    let rows: unknown;
    try {
      rows = JSON.parse(text || "[]");
    } catch (e) {
      throw new KolkError(`listGroups answered text that is not JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(rows)) throw new KolkError(`listGroups answered ${typeof rows}, not a list`);
    for (const row of rows) if (row !== null && typeof row === "object" && typeof row.group === "string") seen.set(row.group, row as GroupListing);
  }
  return [...seen.keys()].sort().map((g) => seen.get(g)!);
}

/** The coordinator's description of the group (state, epoch, assignor, coordinator, members,
 * offsets: its JSON as docs/consumers.md "Protocol" lists it). NotFoundError for a group with
 * no members and no committed offsets. */
export async function describeGroup(client: KolkClient, group: string, deadlineMs = GROUP_CALL_DEADLINE_MS): Promise<Record<string, any>> {
  checkGroup(group);
  const text = await groupCall(hostOf(client), group, (c, o) => describeCall(c, group, o), { deadlineMs });
  let d: unknown;
  try {
    d = JSON.parse(text);
  } catch (e) {
    throw new KolkError(`group ${group}: the coordinator's description is not JSON: ${(e as Error).message}`);
  }
  if (d === null || typeof d !== "object" || Array.isArray(d)) throw new KolkError(`group ${group}: the coordinator described it as ${typeof d}, not an object`);
  return d as Record<string, any>;
}

/** Delete a group and its committed offsets. NotFoundError for an unknown group; InUseError
 * while it has members (checked first; the coordinator checks again). */
export async function deleteGroup(client: KolkClient, group: string, deadlineMs = GROUP_CALL_DEADLINE_MS): Promise<void> {
  checkGroup(group);
  let active = 0;
  try {
    active = ((await describeGroup(client, group, deadlineMs)).members ?? []).length;
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
  }
  if (active) throw new InUseError(`group ${group} has ${active} active member(s): it can be deleted only while it has none (stop its consumers first)`);
  await groupCall(hostOf(client), group, (c, o) => deleteCall(c, group, o), { deadlineMs, write: true });
}
