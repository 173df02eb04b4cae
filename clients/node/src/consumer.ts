/**
 * The consumer (mirrors core/client/consumer.py): one SPU `stream` per partition (all the
 * topic's partitions when none is given), with credit: the stream starts with `windowBytes` and
 * each push's bytes are granted back once its last batch is taken, so at most the window plus
 * one push waits per partition. A push is decoded one batch at a time, as its records are taken
 * (each batch may expand to 64 MiB; a whole push of gzip batches could expand to ~16 GB). A
 * stream that breaks (leader change, lost connection, retriable error, an END with status ok)
 * is reopened on the partition's current leader from the next offset; `return()` on the
 * iterator, close() or the abort signal CANCEL every stream.
 */
import type { KolkClient } from "./client.js";
import type { Connection, SpuStream } from "./connection.js";
import { abortError, InvalidRequestError, KolkError, OffsetOutOfRangeError, OverloadedError, PartitionOfflineError, TooManyStreamsError } from "./errors.js";
import { Isolation } from "./gen/kolk.js";
import { STREAM_WINDOW_BYTES_MAX } from "./limits.js";
import { checkOptions } from "./options.js";
import { decodeBatchAt, type ConsumerRecord } from "./records.js";
import { normalizeChain, writeChain, type ChainStage, type Stage } from "./smartmodules.js";

export const RETRY_BACKOFF_MS = 200;
export const REOPENS_MAX = 50; // reopens in a row without a push before the error surfaces
/** With no push for this long, check that the stream's SPU still answers and leads (Python's
 * IDLE_PROBE_S): a leader that hangs sends no END and no error, and its stream would wait forever. */
export const IDLE_PROBE_MS = 1_000;
export const PROBE_TIMEOUT_MS = 5_000;

export class Offset {
  private constructor(readonly kind: "beginning" | "end" | "absolute" | "fromEnd" | "timestamp", readonly value: bigint = 0n) {}
  static beginning(): Offset { return new Offset("beginning"); }
  static end(): Offset { return new Offset("end"); }
  static absolute(n: bigint | number): Offset {
    const v = int64("an absolute offset", n);
    if (v < 0n) throw new InvalidRequestError(`an absolute offset is >= 0, got ${v}`);
    return new Offset("absolute", v);
  }
  static fromEnd(n: bigint | number): Offset {
    const v = int64("fromEnd's n", n);
    if (v < 0n) throw new InvalidRequestError(`fromEnd takes n >= 0, got ${v}`);
    return new Offset("fromEnd", v);
  }
  static timestamp(ms: number): Offset { return new Offset("timestamp", int64("a timestamp (ms)", ms)); }
}

/** An offset or timestamp as the wire's Int64: a bigint or a safe integer (not NaN, 1.5, "3"). */
function int64(what: string, n: unknown): bigint {
  const v = typeof n === "bigint" ? n : typeof n === "number" && Number.isSafeInteger(n) ? BigInt(n) : null;
  if (v === null || v >= 2n ** 63n || v < -(2n ** 63n)) {
    throw new InvalidRequestError(`${what} is an integer (a bigint, or a number up to 2^53), not ${typeof n === "string" ? JSON.stringify(n) : String(n)}`);
  }
  return v;
}

export interface ConsumerOptions {
  partition?: number; offset?: Offset; isolation?: "committed" | "uncommitted";
  smartmodules?: ChainStage[]; windowBytes?: number; signal?: AbortSignal;
}
export const CONSUMER_OPTIONS: readonly string[] = ["partition", "offset", "isolation", "smartmodules", "windowBytes", "signal"];

class PartitionStream {
  stream: SpuStream | null = null;
  conn: Connection | null = null;
  highWatermark = -1n;
  accumulators: Uint8Array[] | null = null;
  private waiting: ReturnType<SpuStream["next"]> | null = null; // the stream's next push, across probes
  /** The push being handed out batch by batch (its credit is granted back after its last batch):
   * at most one batch of it is expanded at a time. */
  private held: { data: Uint8Array; pos: number; bytes: number; nextOffset: bigint } | null = null;
  constructor(private readonly c: Consumer, readonly partition: number, public offset: bigint) {}

  private async open(): Promise<void> {
    const { client, topic } = this.c;
    const { conn } = await client.leader(topic, this.partition);
    this.conn = conn;
    this.stream = await conn.openStream((q) => {
      const s = q._initStream();
      s.topic = topic; s.partition = this.partition; s.offset = this.offset; s.windowBytes = this.c.windowBytes;
      s.isolation = this.c.isolation === "uncommitted" ? Isolation.UNCOMMITTED : Isolation.COMMITTED;
      const list = s._initSmartmodules(this.c.chain.length);
      writeChain(list, this.c.chain);
      this.c.chain.forEach((_, i) => {
        const acc = this.accumulators?.[i];
        if (acc) { const inv = list.get(i); inv.hasAccumulator = true; inv._initAccumulator(acc.length).copyBuffer(acc); }
      });
    }, { timeoutMs: client.timeoutMs, signal: this.c.stopper.signal });
  }

  close(): void { this.stream?.cancel(); this.stream = null; this.waiting = null; this.held = null; }

  /** The records of the held push's next batch that has any at or after `offset` (none when it
   * has no more), moving `offset` past it; after the push's last batch its credit is granted back. */
  private fromHeld(): ConsumerRecord[] {
    const h = this.held!;
    let records: ConsumerRecord[] = [];
    try {
      while (records.length === 0 && h.pos < h.data.length) {
        const b = decodeBatchAt(h.data, h.pos, this.partition, this.offset);
        h.pos = b.end;
        records = b.records;
        if (b.nextOffset > this.offset) this.offset = b.nextOffset;
      }
    } catch (e) {
      this.close(); // a batch that does not decode: the error surfaces, the stream is not read on
      throw e;
    }
    if (h.pos >= h.data.length) {
      this.held = null;
      if (h.nextOffset > this.offset) this.offset = h.nextOffset;
      this.stream?.grant(h.bytes); // taken: the SPU may send as much again
    }
    return records;
  }

  /** The stream's next push, or "idle" after IDLE_PROBE_MS without one once the leader has
   * answered an `offsets` probe (a failed probe throws: the stream is opened again). */
  private async nextOrIdle(): Promise<Awaited<ReturnType<SpuStream["next"]>> | "idle"> {
    if (this.waiting === null) {
      this.waiting = this.stream!.next();
      this.waiting.catch(() => undefined); // awaited below, or dropped with its stream
    }
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<"idle">((r) => { timer = setTimeout(() => r("idle"), IDLE_PROBE_MS); });
    const got = await Promise.race([this.waiting, idle]).finally(() => clearTimeout(timer));
    if (got !== "idle") { this.waiting = null; return got; }
    const { topic } = this.c;
    const r = await this.conn!.spuCall((q) => { const o = q._initOffsets(); o.topic = topic; o.partition = this.partition; },
      (s) => s.offsets, { timeoutMs: PROBE_TIMEOUT_MS, signal: this.c.stopper.signal });
    this.highWatermark = r.highWatermark;
    return "idle";
  }

  /** The records of the next batch (possibly none: a keepalive), reopening a broken stream. */
  async next(): Promise<ConsumerRecord[]> {
    let reopens = 0;
    for (;;) {
      if (this.c.stopper.signal.aborted) throw abortError("the consumer was closed");
      if (this.held !== null) return this.fromHeld();
      let endedOk = false;
      try {
        if (this.stream === null) await this.open();
        const got = await this.nextOrIdle();
        if (got === "idle") return []; // the leader answered: as a keepalive
        if (got === null) { // ended ok (e.g. the leader stepped down): reopened after a back-off, counted
          endedOk = true;
          throw new KolkError(`the stream of ${this.c.topic}-${this.partition} ended`, { retriable: true });
        }
        const { push, bytes } = got;
        this.highWatermark = push.highWatermark;
        if (push.accumulators.length) {
          this.accumulators = [];
          for (let i = 0; i < push.accumulators.length; i++) this.accumulators.push(new Uint8Array(push.accumulators.get(i).toUint8Array()));
        }
        // A view, not a copy: capnp-es already copied the message's segments out of the frame.
        this.held = { data: push.records.toUint8Array(), pos: 0, bytes, nextOffset: push.nextOffset };
        return this.fromHeld();
      } catch (e) {
        this.close();
        if (!(e instanceof KolkError) || !e.retriable || e instanceof TooManyStreamsError || e instanceof OverloadedError ||
            e instanceof OffsetOutOfRangeError || this.c.stopper.signal.aborted || ++reopens > REOPENS_MAX) throw e;
        if (!(e instanceof PartitionOfflineError) && !endedOk) this.conn?.close();
        this.c.client.forgetLeaders(this.c.topic);
        await new Promise((r) => setTimeout(r, RETRY_BACKOFF_MS));
      }
    }
  }
}

export class Consumer implements AsyncIterable<ConsumerRecord> {
  readonly partition?: number; readonly start: Offset; readonly isolation: "committed" | "uncommitted";
  readonly chain: Stage[]; readonly windowBytes: number; readonly signal?: AbortSignal;
  private streams: PartitionStream[] | null = null;
  // Each stream's read in progress; a failed read settles with its error (it never rejects), so
  // that it is taken out too: a rejected read left here would be raced again by every later call
  // and fail it at once, a loop without I/O for a caller that retries.
  private pending = new Map<PartitionStream, Promise<[PartitionStream, ConsumerRecord[], unknown]>>();
  private closed = false;
  private readonly aborted: Promise<never>;
  private onAbort: (() => void) | null = null; // removed by close(): a long-lived signal keeps no closed consumer
  /** @internal Aborted by close(): ends each stream's open, reopen or wait, so none is left open. */
  readonly stopper = new AbortController();

  constructor(readonly client: KolkClient, readonly topic: string, o: ConsumerOptions = {}) {
    checkOptions("consumer", o, CONSUMER_OPTIONS);
    this.partition = o.partition; this.start = o.offset ?? Offset.beginning();
    if (!(this.start instanceof Offset)) {
      throw new InvalidRequestError(`offset is Offset.beginning(), Offset.end(), Offset.absolute(n), Offset.fromEnd(n) or Offset.timestamp(ms), not ${String(o.offset)}`);
    }
    this.isolation = o.isolation ?? "committed";
    if (this.isolation !== "committed" && this.isolation !== "uncommitted") {
      throw new InvalidRequestError(`isolation is committed or uncommitted, not ${JSON.stringify(this.isolation)}`);
    }
    this.chain = normalizeChain(o.smartmodules);
    this.windowBytes = o.windowBytes ?? 4 << 20;
    if (!Number.isInteger(this.windowBytes) || this.windowBytes < 1 || this.windowBytes > STREAM_WINDOW_BYTES_MAX) {
      throw new InvalidRequestError(`windowBytes is 1-${STREAM_WINDOW_BYTES_MAX}, not ${this.windowBytes}`);
    }
    this.signal = o.signal;
    this.aborted = new Promise<never>((_, reject) => {
      this.onAbort = () => { this.close(); reject(abortError()); };
      this.signal?.addEventListener("abort", this.onAbort, { once: true });
    });
    this.aborted.catch(() => undefined);
  }

  private async resolve(): Promise<PartitionStream[]> {
    if (this.streams) return this.streams;
    const parts = await this.client.partitions(this.topic);
    if (this.partition !== undefined && !(Number.isInteger(this.partition) && this.partition >= 0 && this.partition < parts.length)) {
      throw new InvalidRequestError(`topic ${this.topic} has partitions 0-${parts.length - 1}, not ${this.partition}`);
    }
    const indexes = this.partition !== undefined ? [this.partition] : parts.map((p) => p.partition);
    const out: PartitionStream[] = [];
    for (const p of indexes) {
      const { logStart, highWatermark: hw, logEnd } = await this.client.offsets(this.topic, p);
      const s = this.start;
      let offset: bigint;
      if (s.kind === "beginning") offset = logStart;
      else if (s.kind === "end") offset = hw;
      else if (s.kind === "absolute") {
        if (s.value < logStart || s.value > logEnd) {
          throw new OffsetOutOfRangeError(`offset ${s.value} is out of range for ${this.topic}-${p}: it holds ${logStart}-${logEnd}`);
        }
        offset = s.value;
      } else if (s.kind === "fromEnd") offset = hw - s.value > logStart ? hw - s.value : logStart;
      else offset = await this.client.offsetForTimestamp(this.topic, p, Number(s.value));
      const ps = new PartitionStream(this, p, offset);
      ps.highWatermark = hw;
      out.push(ps);
    }
    this.streams = out;
    return out;
  }

  /** The records of the next push of any partition (an empty list: a keepalive). */
  async nextBatch(): Promise<ConsumerRecord[]> {
    if (this.signal?.aborted) throw abortError();
    if (this.closed) throw new InvalidRequestError("the consumer is closed");
    const streams = await this.resolve();
    if (this.closed) throw abortError("the consumer was closed"); // while it looked its partitions up
    for (const s of streams) {
      if (!this.pending.has(s)) {
        this.pending.set(s, s.next().then((r) => [s, r, undefined] as [PartitionStream, ConsumerRecord[], unknown],
          (e: unknown) => [s, [], e ?? new KolkError("a read failed")] as [PartitionStream, ConsumerRecord[], unknown]));
      }
    }
    const [s, records, error] = await this.first([...this.pending.values()]);
    this.pending.delete(s);
    if (error !== undefined) throw error;
    return records;
  }

  /** The first of `racers` to settle, or an AbortError once the signal fires. Not a race
   * against `this.aborted`: a promise that never settles keeps one reaction per race, and each
   * reaction keeps that call's records alive (every record read, for as long as the consumer
   * lives). The abort listener is removed when the race ends. */
  private first<T>(racers: Promise<T>[]): Promise<T> {
    const signal = this.signal;
    if (!signal) return Promise.race(racers);
    return new Promise<T>((resolve, reject) => {
      if (signal.aborted) { reject(abortError()); return; }
      const onAbort = () => reject(abortError());
      signal.addEventListener("abort", onAbort, { once: true });
      Promise.race(racers).then((v) => { signal.removeEventListener("abort", onAbort); resolve(v); },
        (e) => { signal.removeEventListener("abort", onAbort); reject(e); });
    });
  }

  /** Each non-empty batch's records as one array (a push is decoded batch by batch as they are taken). */
  async *batches(): AsyncGenerator<ConsumerRecord[]> {
    try {
      // close() ends the iteration (as Python's consumer); only the abort signal rejects it
      while (!this.closed) {
        let b: ConsumerRecord[];
        try {
          b = await this.nextBatch();
        } catch (e) {
          if (this.closed && !this.signal?.aborted) return;
          throw e;
        }
        if (b.length) yield b;
      }
    } finally {
      this.close();
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ConsumerRecord> {
    for await (const b of this.batches()) yield* b;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.onAbort) this.signal?.removeEventListener("abort", this.onAbort);
    this.stopper.abort();
    for (const s of this.streams ?? []) s.close();
    this.pending.clear();
  }
}
