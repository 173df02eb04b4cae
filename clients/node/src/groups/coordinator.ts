// Finding a group's coordinator and calling it, with the retries of core/client/coordinator.py:
// the coordinator is the leader of `_consumer_offsets-(crc32c(group) % P)`; notCoordinator,
// coordinatorLoading, any other retriable error, a lost connection, a timeout and the offsets
// topic not existing yet are retried after 50-200 ms (jittered, doubling), the offsets topic's
// leaders forgotten each time, until the call's deadline (10 s by default); then the last error
// with "(gave up on the coordinator of group G after N s)". Non-retriable answers at once.

import type { CallOptions, Connection } from "../connection.js";
import { crc32c } from "../crc32c.js";
import { AlreadyExistsError, ClusterUnavailableError, InvalidRequestError, KolkError, NotFoundError } from "../errors.js";
import { backoffMs } from "./core.js";
import { OFFSETS_TOPIC, groupPartitionOf, groupProblem } from "./names.js";

export const GROUP_CALL_DEADLINE_MS = 10_000;

/** What the group code needs from the client: its metadata cache and connection pool. */
export interface GroupHost {
  /** How many partitions `topic` has (cached metadata); NotFoundError when it does not exist. */
  partitionCount(topic: string, signal?: AbortSignal): Promise<number>;
  /** The connection to the leader of `topic`-`partition`, and its address. */
  leader(topic: string, partition: number, signal?: AbortSignal): Promise<{ conn: Connection; address: string }>;
  /** Forget the cached leaders of `topic` (the next leader() asks the SC). */
  forgetLeaders(topic: string): void;
  /** Drop a pooled connection that failed. */
  dropConnection(address: string): void;
  /** Ask the SC to create `topic` with its own settings (AlreadyExistsError when it exists). */
  createTopic(topic: string): Promise<void>;
}

export interface GroupCallOptions { deadlineMs?: number; attemptMs?: number; signal?: AbortSignal; write?: boolean }

const ENCODER = new TextEncoder();

export function checkGroup(group: unknown): string {
  const problem = groupProblem(group);
  if (problem !== null) throw new InvalidRequestError(problem);
  return group as string;
}

/** Partitions of `_consumer_offsets`; the first time, asks the SC to create it (as Kafka's first
 * FindCoordinator does) and throws the retriable ClusterUnavailableError meanwhile. */
export async function offsetsPartitions(host: GroupHost, signal?: AbortSignal, create = true): Promise<number> {
  let n: number;
  try {
    n = await host.partitionCount(OFFSETS_TOPIC, signal);
  } catch (e) {
    if (!(e instanceof NotFoundError) || !create) throw e;
    try {
      await host.createTopic(OFFSETS_TOPIC);
    } catch (c) {
      if (!(c instanceof AlreadyExistsError)) throw c;
    }
    host.forgetLeaders(OFFSETS_TOPIC);
    throw new ClusterUnavailableError(`${OFFSETS_TOPIC} is being created for the first consumer group`);
  }
  if (n < 1) throw new ClusterUnavailableError(`${OFFSETS_TOPIC} has no partitions yet`);
  return n;
}

export async function coordinatorOf(host: GroupHost, group: string, signal?: AbortSignal): Promise<{ conn: Connection; address: string }> {
  const p = groupPartitionOf(crc32c(ENCODER.encode(group)), await offsetsPartitions(host, signal));
  return host.leader(OFFSETS_TOPIC, p, signal);
}

/** `call` on `group`'s coordinator, retried as the module comment says. */
export function groupCall<T>(host: GroupHost, group: string, call: (conn: Connection, opts: CallOptions) => Promise<T>,
  opts: GroupCallOptions = {}): Promise<T> {
  checkGroup(group);
  return retrying(host, (signal) => coordinatorOf(host, group, signal), call, `the coordinator of group ${group}`, opts);
}

/** `call` on the leader of `_consumer_offsets-partition` (listGroups asks each). */
export function offsetsLeaderCall<T>(host: GroupHost, partition: number, call: (conn: Connection, opts: CallOptions) => Promise<T>,
  opts: GroupCallOptions = {}): Promise<T> {
  return retrying(host, (signal) => host.leader(OFFSETS_TOPIC, partition, signal), call, `the leader of ${OFFSETS_TOPIC}-${partition}`, opts);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(signal.reason ?? abortLike()); return; }
    const onAbort = () => { clearTimeout(t); reject(abortLike()); };
    const t = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function abortLike(): Error {
  return new DOMException("The operation was aborted", "AbortError");
}

async function retrying<T>(host: GroupHost, locate: (signal?: AbortSignal) => Promise<{ conn: Connection; address: string }>,
  call: (conn: Connection, opts: CallOptions) => Promise<T>, what: string, opts: GroupCallOptions): Promise<T> {
  const started = Date.now();
  const end = started + (opts.deadlineMs ?? GROUP_CALL_DEADLINE_MS);
  let maybeApplied = false;
  for (let attempt = 0; ; attempt++) {
    let address: string | null = null;
    try {
      let where: { conn: Connection; address: string };
      try {
        where = await locate(opts.signal);
      } catch (e) {
        if (e instanceof NotFoundError) throw new ClusterUnavailableError(`${what} is not known yet: ${e.message}`);
        throw e;
      }
      address = where.address;
      const left = Math.max(10, end - Date.now());
      const timeoutMs = opts.attemptMs === undefined ? left : Math.min(left, opts.attemptMs);
      return await call(where.conn, { timeoutMs, signal: opts.signal, write: opts.write });
    } catch (e) {
      if (!(e instanceof KolkError)) throw e; // an AbortError, or a bug
      if (e instanceof ClusterUnavailableError && address !== null) host.dropConnection(address);
      if (maybeApplied && !e.outcomeUnknown) {
        e.outcomeUnknown = true;
        e.message = `${e.message} (an earlier attempt may have been applied: the outcome is unknown)`;
      }
      maybeApplied = maybeApplied || (Boolean(opts.write) && e.outcomeUnknown);
      if (!e.retriable) throw e;
      host.forgetLeaders(OFFSETS_TOPIC);
      const pause = backoffMs(attempt);
      if (Date.now() + pause >= end) {
        e.message = `${e.message} (gave up on ${what} after ${((Date.now() - started) / 1000).toFixed(1)} s)`;
        throw e;
      }
      await sleep(pause, opts.signal);
    }
  }
}
