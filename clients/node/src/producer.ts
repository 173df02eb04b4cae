/**
 * The producer (mirrors core/client/producer.py): records are placed on a partition (the one
 * asked for, else crc32c(key) mod partitions, else round robin), gathered into batches of up to
 * `batchBytes` for up to `lingerMs`, and sent in order, at most `maxInFlight` requests per
 * partition. Idempotent (the default with acks "all", as Python): a producer id from the SC per
 * partition, sequences numbered per partition, a batch built once so a retry sends the same
 * bytes; the leader answers a retry of a batch it holds with `duplicate`. Retries: every
 * retriable error, up to `retries` times, via KolkClient.withLeader, each attempt with its own
 * deadline (`timeoutMs`, the SPU's; the client waits 1 s more), all of them within
 * `deliveryTimeoutMs` of the batch's creation (Python's request_timeout_ms and
 * delivery_timeout_ms). An idempotent producer re-sends a batch whose outcome is unknown (the
 * leader de-duplicates it); a non-idempotent one retries only what surely was not written. A batch that fails for
 * good leaves a gap in its partition's sequence: the partition takes a fresh producer id.
 * Memory: at most `bufferBytes` of records wait; send() waits for room beyond that.
 */
import type { KolkClient } from "./client.js";
import { crc32c } from "./crc32c.js";
import { InvalidRequestError, KolkError, RequestTimeoutError } from "./errors.js";
import { Acks } from "./gen/kolk.js";
import { PRODUCE_BYTES_MAX } from "./limits.js";
import { checkOptions } from "./options.js";
import { encodeBatchAsync, type Codec, type Header, type ProducerRecord } from "./records.js";
import { normalizeChain, writeChain, type ChainStage, type Stage } from "./smartmodules.js";

export const RECORD_OVERHEAD_BYTES = 29;
export const BATCH_HEADER_BYTES = 61;
/** One record alone in a batch of the SPU's batch_bytes_max (4 MiB), as Python. */
export const RECORD_BYTES_MAX = (4 << 20) - BATCH_HEADER_BYTES;
export const SEQUENCE_WRAP = 2 ** 31;
export const BATCHES_KEPT = 5; // batches per producer the leader remembers for duplicates

export type AcksName = "none" | "leader" | "all";
const ACKS: Record<AcksName, Acks> = { none: Acks.NONE, leader: Acks.LEADER, all: Acks.ALL };

export interface ProducerOptions {
  acks?: AcksName; compression?: Codec; lingerMs?: number; batchBytes?: number; maxInFlight?: number;
  idempotent?: boolean; timeoutMs?: number; retries?: number; bufferBytes?: number;
  partitioner?: "key" | "round_robin"; smartmodules?: ChainStage[]; deliveryTimeoutMs?: number;
}
export const PRODUCER_OPTIONS: readonly string[] = ["acks", "compression", "lingerMs", "batchBytes", "maxInFlight", "idempotent",
  "timeoutMs", "retries", "bufferBytes", "partitioner", "smartmodules", "deliveryTimeoutMs"];
/** How much longer than the SPU's `timeoutMs` the client waits for its answer (as Python). */
export const ANSWER_GRACE_MS = 1000;
export interface SendOptions { key?: Uint8Array | string | null; headers?: Header[]; timestamp?: number; partition?: number }
export interface RecordMetadata { topic: string; partition: number; offset: bigint }

interface Batch {
  partition: number; records: ProducerRecord[]; nbytes: number;
  /** Each record's promise's settle functions, in record order (two arrays: no object per record). */
  resolves: Array<(m: RecordMetadata) => void>; rejects: Array<(e: Error) => void>;
  timer: NodeJS.Timeout | null;
  /** When its first record came (ms): the batch fails past created + deliveryTimeoutMs. */
  created: number;
}

const bytes = (x: Uint8Array | string | null | undefined): Uint8Array | null =>
  x === undefined || x === null ? null : typeof x === "string" ? new TextEncoder().encode(x) : x;

/** A record's fields are what the wire carries: found at send(), not in a batch whose other
 * records would then fail with it. */
function checkRecord(key: unknown, value: unknown, opts: SendOptions): void {
  const what = (x: unknown) => (x === null ? "null" : typeof x === "object" ? (x as object).constructor?.name ?? "object" : typeof x);
  if (value !== null && !(value instanceof Uint8Array)) {
    throw new InvalidRequestError(`a record's value is a Uint8Array, a string or null, not ${what(value)}`);
  }
  if (key !== null && !(key instanceof Uint8Array)) {
    throw new InvalidRequestError(`a record's key is a Uint8Array, a string or null, not ${what(key)}`);
  }
  if (opts.timestamp !== undefined && !Number.isSafeInteger(opts.timestamp)) {
    throw new InvalidRequestError(`a record's timestamp is an integer of ms since the epoch, not ${String(opts.timestamp)}`);
  }
  const hs = opts.headers;
  if (hs === undefined) return;
  if (!Array.isArray(hs)) throw new InvalidRequestError(`a record's headers are a list of {key, value}, not ${what(hs)}`);
  for (const h of hs) {
    if (h === null || typeof h !== "object" || typeof h.key !== "string" ||
        (h.value !== null && h.value !== undefined && !(h.value instanceof Uint8Array))) {
      throw new InvalidRequestError("a record's header is {key: string, value: Uint8Array | null}");
    }
  }
}

/** A promise executor shared by every send(): it hands the settle functions over in `captured`
 * (read right after `new Promise(capture)`), so no closure is made per record. */
const captured: { resolve: ((m: RecordMetadata) => void) | null; reject: ((e: Error) => void) | null } = { resolve: null, reject: null };
function capture(resolve: (m: RecordMetadata) => void, reject: (e: Error) => void): void {
  captured.resolve = resolve; captured.reject = reject;
}

export function partitionForKey(key: Uint8Array, count: number): number { return crc32c(key) % count; }

export class Producer {
  readonly acks: AcksName; readonly compression: Codec; readonly lingerMs: number; readonly batchBytes: number;
  readonly maxInFlight: number; readonly idempotent: boolean; readonly timeoutMs: number; readonly retries: number;
  readonly bufferBytes: number; readonly partitioner: "key" | "round_robin"; private readonly chain: Stage[];
  readonly deliveryTimeoutMs: number;
  private count: number | null = null;
  private rr = 0;
  private buffered = 0;
  private roomWaiters: Array<() => void> = [];
  private readonly open = new Map<number, Batch>();
  private readonly ready = new Map<number, Batch[]>();
  private readonly inFlight = new Map<number, number>();
  private readonly ids = new Map<number, { pid: Promise<bigint>; seq: number }>();
  private readonly idle: Array<() => void> = [];
  private closed = false;
  private counting: Promise<number> | null = null; // the one lookup of the partition count
  private entering = 0; // send() calls not yet in a batch (waiting for room or the count)
  private entered: Array<() => void> = [];

  constructor(private readonly client: KolkClient, readonly topic: string, o: ProducerOptions = {}) {
    checkOptions("producer", o, PRODUCER_OPTIONS);
    this.acks = o.acks ?? "all";
    if (typeof this.acks !== "string" || !Object.hasOwn(ACKS, this.acks)) throw new InvalidRequestError(`acks must be one of none, leader, all; got ${JSON.stringify(this.acks)}`);
    this.compression = o.compression ?? "none";
    if (!["none", "gzip", "zstd"].includes(this.compression)) {
      throw new InvalidRequestError(`compression must be one of none, gzip, zstd; got ${JSON.stringify(this.compression)}`);
    }
    this.partitioner = o.partitioner ?? "key";
    if (this.partitioner !== "key" && this.partitioner !== "round_robin") throw new InvalidRequestError("partitioner must be 'key' or 'round_robin'");
    this.lingerMs = o.lingerMs ?? 5; this.batchBytes = o.batchBytes ?? 256 << 10; this.maxInFlight = o.maxInFlight ?? 4;
    this.timeoutMs = o.timeoutMs ?? 30_000; this.retries = o.retries ?? 20; this.bufferBytes = o.bufferBytes ?? 64 << 20;
    this.deliveryTimeoutMs = o.deliveryTimeoutMs ?? 120_000;
    if (!(this.maxInFlight >= 1 && this.maxInFlight <= 64) || this.batchBytes < 1024 || this.bufferBytes < this.batchBytes ||
        this.batchBytes > PRODUCE_BYTES_MAX || !(this.lingerMs >= 0)) {
      throw new InvalidRequestError("need 1 <= maxInFlight <= 64, 1 KiB <= batchBytes <= 16 MiB, bufferBytes >= batchBytes, lingerMs >= 0");
    }
    // NaN passes every comparison above, and an unbounded buffer is no buffer: whole numbers only.
    for (const [name, v] of [["maxInFlight", this.maxInFlight], ["batchBytes", this.batchBytes], ["bufferBytes", this.bufferBytes],
      ["lingerMs", this.lingerMs], ["timeoutMs", this.timeoutMs], ["retries", this.retries],
      ["deliveryTimeoutMs", this.deliveryTimeoutMs]] as Array<[string, number]>) {
      if (!(name === "lingerMs" ? Number.isFinite(v) : Number.isSafeInteger(v)) || v < 0 || (name === "timeoutMs" && v < 1)) {
        throw new InvalidRequestError(`${name} is a whole number${name === "timeoutMs" ? " >= 1" : " >= 0"}, not ${String(v)}`);
      }
    }
    if (this.deliveryTimeoutMs < this.timeoutMs + this.lingerMs) {
      throw new InvalidRequestError(`deliveryTimeoutMs (${this.deliveryTimeoutMs}) must be at least timeoutMs + lingerMs (${this.timeoutMs + this.lingerMs})`);
    }
    this.chain = normalizeChain(o.smartmodules);
    this.idempotent = o.idempotent ?? (this.acks === "all" && this.chain.length === 0);
    if (this.idempotent && this.chain.length) {
      throw new InvalidRequestError("a produce-side SmartModule chain changes the batches the sequence numbers count: use idempotent: false with smartmodules");
    }
    if (this.idempotent && this.maxInFlight > BATCHES_KEPT) {
      throw new InvalidRequestError(`an idempotent producer has at most ${BATCHES_KEPT} batches in flight per partition: the leader remembers that many for retries`);
    }
    if (this.idempotent && this.acks !== "all") {
      throw new InvalidRequestError("an idempotent producer needs acks 'all': with fewer acks a failover can lose a batch and leave a gap in the sequence (pass idempotent: false)");
    }
    // Partitions the client already looked up: send() then takes its fast path from the first call.
    this.count = client.knownPartitions(topic)?.length ?? null;
  }

  /** Queues one record; resolves to its partition and offset once acknowledged. */
  send(value: Uint8Array | string | null, opts: SendOptions = {}): Promise<RecordMetadata> {
    // Not an async function: the fast path makes one promise per record, not three (an async
    // function's own, and the one it resolves with); every refusal is still a rejected promise.
    try {
      return this.place(value, opts);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private place(value: Uint8Array | string | null, opts: SendOptions): Promise<RecordMetadata> {
    if (this.closed) throw new InvalidRequestError("the producer is closed");
    const key = bytes(opts.key); const val = bytes(value);
    checkRecord(key, val, opts);
    let size = RECORD_OVERHEAD_BYTES + (key?.length ?? 0) + (val?.length ?? 0);
    for (const h of opts.headers ?? []) size += 8 + Buffer.byteLength(h.key, "utf8") + (h.value?.length ?? 0);
    if (size > RECORD_BYTES_MAX) {
      throw new InvalidRequestError(`a record of ${size} bytes is more than the largest batch an SPU accepts (${RECORD_BYTES_MAX} bytes with its header)`);
    }
    if (this.count !== null && this.buffered < this.bufferBytes && this.entering === 0) return this.append(key, val, opts, size, this.count);
    return this.enter().then((count) => this.append(key, val, opts, size, count));
  }

  /** Puts one checked record into its partition's open batch. */
  private append(key: Uint8Array | null, val: Uint8Array | null, opts: SendOptions, size: number, count: number): Promise<RecordMetadata> {
    let partition = opts.partition;
    if (partition === undefined) {
      partition = key !== null && this.partitioner === "key" ? partitionForKey(key, count) : (this.rr++ % count);
    } else if (!Number.isInteger(partition) || partition < 0 || partition >= count) {
      throw new InvalidRequestError(`topic ${this.topic} has partitions 0-${count - 1}, not ${partition}`);
    }
    let batch = this.open.get(partition);
    if (batch && batch.nbytes + size > this.batchBytes) { this.seal(partition); batch = undefined; }
    if (!batch) {
      batch = { partition, records: [], nbytes: 0, resolves: [], rejects: [], timer: null, created: Date.now() };
      this.open.set(partition, batch);
      const p = partition;
      batch.timer = setTimeout(() => this.seal(p), this.lingerMs);
    }
    batch.records.push({ key, value: val, headers: opts.headers, timestamp: opts.timestamp ?? Date.now() });
    batch.nbytes += size;
    this.buffered += size;
    const done = new Promise<RecordMetadata>(capture);
    batch.resolves.push(captured.resolve!); batch.rejects.push(captured.reject!);
    if (batch.nbytes >= this.batchBytes || this.lingerMs === 0) this.seal(partition);
    return done;
  }

  /** The slow way into send(): waits for buffer room and the partition count (one lookup for
   * every send that races for it). Counted in `entering` until the caller's record is in a
   * batch (the next turn of the event loop), so that flush() waits for it too. */
  private async enter(): Promise<number> {
    this.entering++;
    try {
      while (this.buffered >= this.bufferBytes) await new Promise<void>((r) => this.roomWaiters.push(r));
      if (this.count !== null) return this.count;
      if (this.counting === null) {
        const c = this.client.partitions(this.topic).then((parts) => (this.count = parts.length));
        this.counting = c;
        c.catch(() => { if (this.counting === c) this.counting = null; }); // the next send asks again
      }
      return await this.counting;
    } finally {
      // Counted out on the next turn of the loop: by then send() has put the record in its batch.
      setImmediate(() => { if (--this.entering === 0) for (const w of this.entered.splice(0)) w(); });
    }
  }

  /** Sends what waits and resolves once every record sent so far has its answer (send()s still
   * waiting for buffer room or the topic's partition count included). */
  async flush(): Promise<void> {
    for (;;) {
      for (const p of [...this.open.keys()]) this.seal(p);
      if (this.entering > 0) await new Promise<void>((r) => this.entered.push(r));
      else if ([...this.inFlight.values()].some((n) => n > 0) || [...this.ready.values()].some((q) => q.length > 0)) {
        await new Promise<void>((r) => this.idle.push(r));
      } else return;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }

  private seal(partition: number): void {
    const batch = this.open.get(partition);
    if (!batch) return;
    this.open.delete(partition);
    if (batch.timer) clearTimeout(batch.timer);
    const q = this.ready.get(partition) ?? [];
    q.push(batch);
    this.ready.set(partition, q);
    this.drain(partition);
  }

  private drain(partition: number): void {
    const q = this.ready.get(partition) ?? [];
    while (q.length > 0 && (this.inFlight.get(partition) ?? 0) < this.maxInFlight) {
      // A partition waiting for a fresh producer id sends nothing until its older batches end.
      if (this.idempotent && !this.ids.has(partition) && (this.inFlight.get(partition) ?? 0) > 0) return;
      const batch = q.shift()!;
      this.inFlight.set(partition, (this.inFlight.get(partition) ?? 0) + 1);
      void this.sendBatch(batch);
    }
  }

  /** The batch's identity, taken in send order so sequences follow the order of batches. */
  private identity(partition: number, n: number): { pid: Promise<bigint>; baseSequence: number } | undefined {
    if (!this.idempotent) return undefined;
    let id = this.ids.get(partition);
    if (!id) {
      const pid = this.client.admin.allocateProducerIds(1);
      pid.catch(() => undefined);
      id = { pid, seq: 0 };
      this.ids.set(partition, id);
    }
    const baseSequence = id.seq;
    id.seq = (id.seq + n) % SEQUENCE_WRAP;
    return { pid: id.pid, baseSequence };
  }

  private async sendBatch(batch: Batch): Promise<void> {
    const { partition } = batch;
    try {
      const ident = this.identity(partition, batch.records.length);
      const identity = ident ? { producerId: await ident.pid, producerEpoch: 0, baseSequence: ident.baseSequence } : undefined;
      // gzip in node:zlib's thread pool, off the event loop (compressAsync); zstd stays sync.
      const data = await encodeBatchAsync(batch.records, { codec: this.compression, identity });
      if (data.length > PRODUCE_BYTES_MAX) throw new InvalidRequestError(`a produce request of ${data.length} bytes is more than the SPU accepts (${PRODUCE_BYTES_MAX})`);
      const deadline = batch.created + this.deliveryTimeoutMs;
      const r = await this.client.withLeader(this.topic, partition, async (conn) => {
        const left = Math.min(this.timeoutMs + ANSWER_GRACE_MS, deadline - Date.now());
        if (left <= 0) {
          throw new RequestTimeoutError(`${batch.records.length} record(s) for ${this.topic}-${partition} were not acknowledged within ` +
            `deliveryTimeoutMs (${this.deliveryTimeoutMs} ms)`, { outcomeUnknown: false, retriable: false });
        }
        return conn.spuCall((q) => {
          const p = q._initProduce();
          p.topic = this.topic; p.partition = partition; p.acks = ACKS[this.acks]; p.timeoutMs = this.timeoutMs;
          p._initRecords(data.length).copyBuffer(data);
          writeChain(p._initSmartmodules(this.chain.length), this.chain);
        }, (s) => s.produce, { timeoutMs: left, write: true });
      }, this.retries, true, deadline, this.idempotent);
      // One read of the answer's base offset: each capnp-es getter call builds pointer objects.
      const base = r.baseOffset;
      batch.resolves.forEach((resolve, i) => resolve({ topic: this.topic, partition, offset: base + BigInt(i) }));
    } catch (e) {
      if (this.idempotent) this.ids.delete(partition); // a gap in the sequence: a fresh id next
      const err = e instanceof KolkError ? e : new KolkError(String((e as Error)?.message ?? e));
      batch.rejects.forEach((reject) => reject(err));
    } finally {
      this.buffered -= batch.nbytes;
      while (this.buffered < this.bufferBytes && this.roomWaiters.length) this.roomWaiters.shift()!();
      this.inFlight.set(partition, (this.inFlight.get(partition) ?? 1) - 1);
      this.drain(partition);
      if (![...this.inFlight.values()].some((n) => n > 0)) for (const w of this.idle.splice(0)) w();
    }
  }
}
