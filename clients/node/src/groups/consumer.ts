// The group consumer: partitions assigned by the group's coordinator, positions committed to it
// (docs/consumers.md, docs/clients-node.md "Consumer groups"); the I/O edge of
// core/client/group_consumer.py. Membership: heartbeat.ts; pure decisions: core.ts, membership.ts.

import type { KolkClient } from "../client.js";
import { InvalidRequestError, KolkError, abortError } from "../errors.js";
import { checkOptions } from "../options.js";
import type { ConsumerRecord } from "../records.js";
import { checkCommitOffsets, checkGroupOptions, startOffset, toCommit, type CheckedGroupOptions, type GroupOptions } from "./core.js";
import { groupCall, type GroupHost } from "./coordinator.js";
import { HeartbeatLoop, log } from "./heartbeat.js";
import { afterReconcile, reconcilePlan } from "./membership.js";
import { COMMIT_OFFSETS_MAX, partitionSet, sortedPartitions, tpKey, tpOf, wirePartitions, type PartitionSet, type TopicPartition } from "./names.js";
import { PartitionReader, WINDOW_BYTES_DEFAULT } from "./stream.js";
import { commitCall, fetchCall } from "./wire.js";

export const CLOSE_DEADLINE_MS = 5_000;   // close() commits, leaves and stops within this
export const COMMIT_DEADLINE_MS = 10_000; // one commit, retries included
export const RECONCILE_RETRY_MS = 500;    // a partition that could not be started is tried again after this

export interface GroupConsumerOptions extends GroupOptions {
  isolation?: "committed" | "uncommitted";
  windowBytes?: number; // 64 KiB - 64 MiB, default 4 MiB
}
/** `partition` is known only to be refused with its own reason (the coordinator assigns). */
export const GROUP_CONSUMER_OPTIONS: readonly string[] = ["group", "start", "autoCommit", "autoCommitIntervalMs", "sessionTimeoutMs",
  "rebalanceTimeoutMs", "groupInstanceId", "assignor", "onAssigned", "onRevoked", "onLost", "signal", "partition", "isolation", "windowBytes"];

type Chunk = { p: number; records: ConsumerRecord[]; end: bigint };
type Pending = { p: number; reader: PartitionReader; done: boolean; promise: Promise<void>; records?: ConsumerRecord[]; error?: unknown };

/** The client's metadata and connections as the group code needs them. */
export function hostOf(client: KolkClient): GroupHost {
  return {
    partitionCount: async (topic) => (await client.partitions(topic)).length,
    leader: (topic, partition) => client.leader(topic, partition),
    forgetLeaders: (topic) => client.forgetLeaders(topic),
    dropConnection: () => undefined, // the client's pool opens a closed connection again
    createTopic: async (topic) => { await client.admin.createTopic(topic); }, // the SC applies its own settings to _consumer_offsets
  };
}

export class GroupConsumer implements AsyncIterable<ConsumerRecord> {
  readonly group: string;
  private readonly o: CheckedGroupOptions;
  private readonly host: GroupHost;
  private readonly m: HeartbeatLoop;
  private readonly readers = new Map<number, PartitionReader>();
  private readonly pending = new Map<number, Pending>();
  private readonly done = new Map<number, bigint>();       // positions of pushes handed out whole
  private inHand: { p: number; records: ConsumerRecord[]; n: number } | null = null;
  private readonly committed = new Map<number, bigint>();  // last committed, or where a partition started at its commit
  private readonly errors: unknown[] = [];
  private wakeUp: (() => void) | null = null;
  private woken = false; // a wake that came while no one waited (during a boundary) is not lost
  private commitChain: Promise<unknown> = Promise.resolve();
  private autoCommit: Promise<void> | null = null;
  private nextAutoCommit = 0;
  private retryAt = 0;
  private readonly pastEndSince = new Map<number, number>();
  private started = false;
  private closed = false;
  private closing: Promise<void> | null = null;

  constructor(private readonly client: KolkClient, readonly topic: string, private readonly opts: GroupConsumerOptions) {
    checkOptions("groupConsumer", opts, GROUP_CONSUMER_OPTIONS);
    const checked = checkGroupOptions(topic, opts);
    if (typeof checked === "string") throw new InvalidRequestError(checked);
    const wb = opts.windowBytes ?? WINDOW_BYTES_DEFAULT;
    if (!Number.isInteger(wb) || wb < 64 << 10 || wb > 64 << 20) throw new InvalidRequestError(`windowBytes must be 65536-67108864 (64 KiB to 64 MiB), not ${wb}`);
    if (opts.isolation !== undefined && opts.isolation !== "committed" && opts.isolation !== "uncommitted") {
      throw new InvalidRequestError(`isolation must be "committed" or "uncommitted", not ${JSON.stringify(opts.isolation)}`);
    }
    this.o = checked;
    this.group = checked.group;
    this.host = hostOf(client);
    this.m = new HeartbeatLoop(this.host, { group: this.group, topics: [topic], instanceId: checked.groupInstanceId,
      sessionTimeoutMs: checked.sessionTimeoutMs, rebalanceTimeoutMs: checked.rebalanceTimeoutMs, assignor: checked.assignor },
    () => this.wake());
    opts.signal?.addEventListener("abort", () => { void this.close(); }, { once: true });
  }

  get memberId(): string { return this.m.state.memberId; }
  /** The member epoch the coordinator last answered. */
  get generation(): number { return this.m.state.epoch; }
  /** The partitions this consumer holds now. */
  assignment(): TopicPartition[] { return [...this.readers.keys()].sort((a, b) => a - b).map((partition) => ({ topic: this.topic, partition })); }

  /** partition -> the offset after the last record handed out. */
  positions(): Map<number, bigint> {
    const out = new Map(this.done);
    if (this.inHand !== null && this.inHand.n > 0) out.set(this.inHand.p, this.inHand.records[this.inHand.n - 1].offset + 1n);
    return out;
  }

  /** Records that arrive within `timeoutMs` ([] if none, or once closed). */
  async poll(timeoutMs: number): Promise<ConsumerRecord[]> {
    const chunks = await this.next(timeoutMs);
    const out: ConsumerRecord[] = [];
    for (const c of chunks ?? []) { this.done.set(c.p, c.end); out.push(...c.records); }
    return out;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ConsumerRecord> {
    for (let chunks = await this.next(null); chunks !== null; chunks = await this.next(null)) {
      for (const c of chunks) {
        this.inHand = { p: c.p, records: c.records, n: 0 };
        for (const rec of c.records) {
          this.inHand.n++; // handed out: a commit() in the loop's body includes it
          yield rec;
        }
        this.inHand = null;
        this.done.set(c.p, c.end);
      }
    }
  }

  /** Commit the positions handed out (those that moved since the last commit), or `offsets`
   * (partition -> the NEXT offset to read; a Map or an object). */
  async commit(offsets?: Map<number, bigint | number> | Record<number, bigint | number>): Promise<void> {
    if (offsets === undefined) return this.commitNow(toCommit(this.positions(), this.committed), COMMIT_DEADLINE_MS);
    const checked = checkCommitOffsets(this.topic, offsets);
    if (typeof checked === "string") throw new InvalidRequestError(checked);
    return this.commitNow(checked, COMMIT_DEADLINE_MS);
  }

  /** Commit (autoCommit), hand the partitions back (onRevoked), leave the group: within 5 s. */
  close(): Promise<void> {
    if (this.closing === null) this.closing = this.doClose();
    return this.closing;
  }

  // ---------------------------------------------------------------- reading

  private wake(): void {
    this.woken = true;
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private async next(timeoutMs: number | null): Promise<Chunk[] | null> {
    if (this.opts.signal?.aborted) throw abortError();
    if (this.closed) return null;
    if (!this.started) {
      await this.client.partitions(this.topic); // NotFoundError now for a topic that does not exist
      this.started = true;
      this.m.start();
      this.nextAutoCommit = Date.now() + this.o.autoCommitIntervalMs;
    }
    const deadline = timeoutMs === null ? null : Date.now() + timeoutMs;
    for (;;) {
      this.woken = false;
      await this.boundary();
      if (this.opts.signal?.aborted) throw abortError();
      if (this.closed) return null;
      for (const [p, reader] of this.readers) if (!this.pending.has(p)) this.pending.set(p, this.read(p, reader));
      let left = deadline === null ? Infinity : Math.max(0, deadline - Date.now());
      if (this.retryAt) left = Math.min(left, Math.max(10, this.retryAt - Date.now()));
      if (this.o.autoCommit) left = Math.min(left, Math.max(10, this.nextAutoCommit - Date.now()));
      await this.waitAny(left);
      const out: Chunk[] = [];
      let failed: unknown = null;
      for (const [p, pend] of [...this.pending]) {
        if (!pend.done) continue;
        this.pending.delete(p);
        if (this.readers.get(p) !== pend.reader) continue; // revoked meanwhile
        if (pend.error !== undefined) { failed ??= pend.error; continue; }
        if (pend.records!.length) out.push({ p, records: pend.records!, end: pend.reader.offset });
        else this.done.set(p, pend.reader.offset > (this.done.get(p) ?? 0n) ? pend.reader.offset : this.done.get(p)!);
      }
      if (failed !== null) {
        if (!out.length) throw failed;
        this.errors.push(failed); // the records other streams brought first: none is skipped
      }
      if (out.length) return out;
      if (deadline !== null && Date.now() >= deadline) return [];
    }
  }

  private read(p: number, reader: PartitionReader): Pending {
    const pend: Pending = { p, reader, done: false, promise: Promise.resolve() };
    pend.promise = reader.next().then((records) => { pend.records = records; }, (e) => { pend.error = e; })
      .finally(() => { pend.done = true; this.wake(); });
    return pend;
  }

  private waitAny(ms: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => { clearTimeout(timer); if (this.wakeUp === done) this.wakeUp = null; resolve(); };
      if (this.woken || this.closed || [...this.pending.values()].some((x) => x.done)) { resolve(); return; }
      this.wakeUp = done;
      if (ms !== Infinity) timer = setTimeout(done, ms);
    });
  }

  // ---------------------------------------------------------------- the poll boundary

  private async boundary(): Promise<void> {
    if (this.closed) return;
    const st = this.m.state;
    if (st.lost.size) await this.dropLost();
    if (this.m.state.error !== null) throw this.m.state.error.error ?? new KolkError(this.m.state.error.message);
    if (this.errors.length) throw this.errors.shift();
    if (this.m.state.target === null) this.retryAt = 0;
    for (let i = 0; i < 4; i++) { // each pass is one answer of the coordinator
      if (this.m.state.target === null || Date.now() < this.retryAt || this.closed) break;
      await this.reconcile();
    }
    if (this.o.autoCommit && Date.now() >= this.nextAutoCommit) {
      this.nextAutoCommit = Date.now() + this.o.autoCommitIntervalMs;
      const moved = toCommit(this.done, this.committed);
      if (moved.size && this.autoCommit === null) {
        this.autoCommit = this.commitNow(moved, COMMIT_DEADLINE_MS).catch((e) => {
          if (e instanceof KolkError && (e.retriable || e.name === "StaleMemberError")) log("group %s: automatic commit failed (%s)", this.group, e.message);
          else { this.errors.push(e); this.wake(); }
        }).finally(() => { this.autoCommit = null; });
      }
    }
  }

  private async dropLost(): Promise<void> {
    const { lost, epoch } = this.m.takeLost();
    const mine = [...lost].filter((k) => tpOf(k).topic === this.topic && this.readers.has(tpOf(k).partition));
    for (const k of mine) this.drop(tpOf(k).partition);
    log("group %s: lost %d partition(s) (member removed); not committed", this.group, mine.length);
    if (mine.length) await this.report("onLost", new Set(mine), epoch);
  }

  private drop(p: number): void {
    this.readers.get(p)?.close();
    this.readers.delete(p);
    this.pending.delete(p);
    this.done.delete(p);
    this.committed.delete(p);
  }

  private async reconcile(): Promise<void> {
    const plan = reconcilePlan(this.m.state, [this.topic])!;
    let held: PartitionSet = this.m.state.owned;
    if (plan.revoke.size) {
      const revoked = sortedPartitions(plan.revoke).map((tp) => tp.partition);
      for (const p of revoked) { this.readers.get(p)?.close(); this.pending.delete(p); }
      if (this.autoCommit !== null) await this.autoCommit; // an older commit must not land after this one
      if (this.o.autoCommit) {
        const pos = this.positions();
        const mine = new Map([...pos].filter(([p]) => revoked.includes(p)));
        await this.commitQuietly(toCommit(mine, this.committed), COMMIT_DEADLINE_MS);
      }
      for (const p of revoked) this.drop(p);
      await this.report("onRevoked", plan.revoke, plan.epoch);
      held = afterReconcile(held, plan.revoke, new Set());
      if (!this.m.setOwned(held, plan.incarnation)) return;
    }
    if (plan.add.size) {
      const started = await this.start(plan.add);
      if (started.size) {
        held = afterReconcile(held, new Set(), started);
        if (!this.m.setOwned(held, plan.incarnation)) {
          for (const k of started) this.drop(tpOf(k).partition); // given to a member that is gone
          return;
        }
        await this.report("onAssigned", started, plan.epoch);
      }
      if (started.size !== plan.add.size) { this.retryAt = Date.now() + RECONCILE_RETRY_MS; return; }
    }
    this.retryAt = 0;
    if (!plan.revoke.size && !plan.add.size) this.m.setOwned(held, plan.incarnation);
  }

  /** Readers for `added` at their committed offsets; the partitions that started. */
  private async start(added: PartitionSet): Promise<Set<string>> {
    let parts = sortedPartitions(added).map((tp) => tp.partition);
    let committed: Map<number, bigint>;
    try {
      const got = await groupCall(this.host, this.group, (c, o) => fetchCall(c, this.group, wirePartitions(added), o), { deadlineMs: COMMIT_DEADLINE_MS });
      committed = new Map(got.filter((x) => x.topic === this.topic).map((x) => [x.partition, x.offset]));
    } catch (e) {
      if (!(e instanceof KolkError) || !e.retriable) throw e;
      log("group %s: could not read the committed offsets: %s; trying again", this.group, e.message);
      return new Set();
    }
    let known = (await this.client.partitions(this.topic)).length;
    if (parts[parts.length - 1] >= known) {
      this.client.forgetLeaders(this.topic); // partitions were added since the client looked
      known = (await this.client.partitions(this.topic)).length;
      parts = parts.filter((p) => p < known);
    }
    const ranges = await Promise.allSettled(parts.map((p) => this.client.offsets(this.topic, p)));
    const started = new Set<string>();
    parts.forEach((p, i) => {
      const r = ranges[i];
      if (r.status === "rejected") {
        if (!(r.reason instanceof KolkError) || !r.reason.retriable) throw r.reason;
        log("group %s: %s-%d cannot be started now: %s", this.group, this.topic, p, r.reason.message);
        return;
      }
      const now = Date.now();
      const c = committed.get(p);
      const [offset, outOfRange] = startOffset(c, r.value.logStart, r.value.highWatermark, r.value.logEnd, this.o.start, now - (this.pastEndSince.get(p) ?? now));
      if (offset === null) {
        if (!this.pastEndSince.has(p)) this.pastEndSince.set(p, now);
        this.client.forgetLeaders(this.topic);
        return;
      }
      this.pastEndSince.delete(p);
      if (outOfRange) {
        process.emitWarning(`group ${this.group}: the committed offset ${c} of ${this.topic}-${p} is outside the partition's range ` +
          `${r.value.logStart}-${r.value.logEnd}; starting at ${offset}`);
      }
      const reader = new PartitionReader(this.client, this.topic, p, offset, this.opts.windowBytes ?? WINDOW_BYTES_DEFAULT,
        this.opts.isolation === "uncommitted" ? 1 : 0);
      reader.highWatermark = r.value.highWatermark;
      // A committed start needs no commit until it moves; a start chosen by `start` is
      // committed at the next commit, as Kafka does.
      if (c !== undefined && !outOfRange) this.committed.set(p, offset); else this.committed.delete(p);
      this.readers.set(p, reader);
      this.done.set(p, offset);
      started.add(tpKey({ topic: this.topic, partition: p }));
    });
    return started;
  }

  private async report(kind: "onAssigned" | "onRevoked" | "onLost", parts: PartitionSet, epoch: number): Promise<void> {
    const cb = this.opts[kind];
    if (cb === undefined) return;
    try {
      await cb(sortedPartitions(parts), epoch);
    } catch (e) {
      log("group %s: %s threw %s", this.group, kind, String(e));
      this.errors.push(e); // raised from the next poll; the change is completed anyway
    }
  }

  // ---------------------------------------------------------------- commits

  private commitNow(offsets: Map<number, bigint>, deadlineMs: number): Promise<void> {
    if (offsets.size === 0) return Promise.resolve();
    const run = async () => {
      const items = [...offsets].sort((a, b) => a[0] - b[0]);
      for (let i = 0; i < items.length; i += COMMIT_OFFSETS_MAX) {
        const chunk = items.slice(i, i + COMMIT_OFFSETS_MAX);
        const { memberId, epoch } = this.m.state;
        await groupCall(this.host, this.group, (c, o) => commitCall(c, this.group, memberId, epoch,
          chunk.map(([partition, offset]) => ({ topic: this.topic, partition, offset, metadata: "" })), o), { deadlineMs, write: true });
        for (const [p, o] of chunk) this.committed.set(p, o);
      }
    };
    const result = this.commitChain.then(run, run); // one commit at a time, in order
    this.commitChain = result.catch(() => undefined);
    return result;
  }

  private async commitQuietly(offsets: Map<number, bigint>, deadlineMs: number): Promise<void> {
    try {
      await this.commitNow(offsets, Math.max(100, deadlineMs));
    } catch (e) {
      log("group %s: commit of %d partition(s) failed: %s", this.group, offsets.size, String(e));
    }
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    this.wake();
    const end = Date.now() + CLOSE_DEADLINE_MS;
    let timer: NodeJS.Timeout | undefined;
    const work = (async () => {
      await this.m.stop();
      const held = this.assignment();
      if (this.o.autoCommit && this.m.state.memberId !== "" && this.m.state.lost.size === 0) {
        await this.commitQuietly(toCommit(this.positions(), this.committed), end - Date.now());
      }
      for (const r of this.readers.values()) r.close();
      this.readers.clear();
      this.pending.clear();
      if (held.length) await this.report("onRevoked", partitionSet(held), this.m.state.epoch);
      await this.m.leave(Math.max(100, end - Date.now()));
    })();
    try {
      await Promise.race([work, new Promise<void>((resolve) => { timer = setTimeout(() => {
        process.emitWarning(`group ${this.group}: close took longer than ${CLOSE_DEADLINE_MS} ms; the coordinator removes member ` +
          `${this.m.state.memberId || "-"} after its session timeout`);
        resolve();
      }, CLOSE_DEADLINE_MS); })]);
    } finally {
      clearTimeout(timer);
      await this.m.stop();
      for (const r of this.readers.values()) r.close();
      this.readers.clear();
    }
  }
}

