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
 * leader de-duplicates it); a non-idempotent one retries only what surely was not written.
 * A batch is numbered as it is sent (before any await). One that fails for good leaves a gap
 * in its partition's sequence: the partition takes a fresh producer id once its batches in
 * flight end, and those after the gap fail at the leader's first out-of-sequence answer.
 * Deadlines: every wait of a record (for buffer room, the partition count, a producer id, the
 * leader lookup, the connect, each attempt, the back-offs) ends by its batch's created +
 * `deliveryTimeoutMs`, created being the earliest send() of its records.
 * Memory: at most `bufferBytes` of records in batches; sends beyond that wait in order, at most
 * `bufferBytes` more of them (past that a send is refused with OverloadedError).
 * sendAll(): many records to one partition in one call, as Python's send_all.
 */
import { withinDeadline, type KolkClient } from "./client.js";
import { InvalidRequestError, KolkError, OutOfOrderSequenceError, OverloadedError, RequestTimeoutError } from "./errors.js";
import { Acks } from "./gen/kolk.js";
import { PRODUCE_BYTES_MAX } from "./limits.js";
import { checkOptions } from "./options.js";
import { encodeBatchAsync, type Codec, type Header, type ProducerRecord } from "./records.js";
import { BATCH_HEADER_BYTES, RECORD_OVERHEAD_BYTES, bytes, checkRecord, checkSize, partitionForKey, what, type SendOptions } from "./producer-record.js";
import { SentRecords, type RecordMetadata } from "./sent-records.js";
import { normalizeChain, writeChain, type ChainStage, type Stage } from "./smartmodules.js";

export { SentRecords, type RecordMetadata };
export { BATCH_HEADER_BYTES, RECORD_BYTES_MAX, RECORD_OVERHEAD_BYTES, partitionForKey, type SendOptions } from "./producer-record.js";

export const SEQUENCE_WRAP = 2 ** 31;
export const BATCHES_KEPT = 5; // batches per producer the leader remembers for duplicates

/** `a` comes after `b` on the sequence circle (serial-number arithmetic, as the SPU's). */
const seqAfter = (a: number, b: number): boolean => { const d = (a - b + SEQUENCE_WRAP) % SEQUENCE_WRAP; return d > 0 && d < SEQUENCE_WRAP / 2; };

/** A partition's producer id and next sequence; `gapAt`: the first sequence of the earliest
 * batch under this id that failed for good (the leader refuses every batch after it). */
interface Ident { pid: Promise<bigint>; seq: number; gapAt: number | null }

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

interface Batch {
  partition: number; records: ProducerRecord[]; nbytes: number;
  /** Each send() record's promise's settle functions, in record order (two arrays: no object per
   * record); null for a record of sendAll(), whose call learns of the batch through `parts`. */
  resolves: Array<((m: RecordMetadata) => void) | null>; rejects: Array<((e: Error) => void) | null>;
  parts: Array<{ sent: SentRecords; index: number }> | null;
  timer: NodeJS.Timeout | null;
  /** The earliest send() of its records (ms): the batch fails past created + deliveryTimeoutMs. */
  created: number;
  /** `created` is a record's that waited (for room or the partition count), not the batch's own. */
  waited: boolean;
}

/** A call waiting for buffer room or the partition count: one send() (`one`) or a sendAll(). */
interface Waiting {
  values: Array<Uint8Array | null>; next: number; key: Uint8Array | null; opts: SendOptions;
  /** Bytes of a record beyond its value, and of the values not yet in a batch. */
  overhead: number; bytes: number; since: number; timestamp: number;
  partition: number | undefined;
  one: { resolve: (m: RecordMetadata) => void; reject: (e: Error) => void } | null;
  all: { sent: SentRecords; resolve: (s: SentRecords) => void; reject: (e: Error) => void } | null;
}

/** A promise executor shared by every send(): it hands the settle functions over in `captured`
 * (read right after `new Promise(capture)`), so no closure is made per record. */
const captured: { resolve: ((m: RecordMetadata) => void) | null; reject: ((e: Error) => void) | null } = { resolve: null, reject: null };
function capture(resolve: (m: RecordMetadata) => void, reject: (e: Error) => void): void {
  captured.resolve = resolve; captured.reject = reject;
}

export class Producer {
  readonly acks: AcksName; readonly compression: Codec; readonly lingerMs: number; readonly batchBytes: number;
  readonly maxInFlight: number; readonly idempotent: boolean; readonly timeoutMs: number; readonly retries: number;
  readonly bufferBytes: number; readonly partitioner: "key" | "round_robin"; private readonly chain: Stage[];
  readonly deliveryTimeoutMs: number;
  private count: number | null = null;
  /** The most record bytes one batch holds: batchBytes, lowered to the topic's max_message_bytes
   * (less the batch header) once the partition count is looked up, as Python's producer. */
  private batchLimit: number;
  private rr = 0;
  private buffered = 0;
  // Calls waiting for room or the count, oldest first from `head` (a queue without O(n) shifts),
  // holding `waitingBytes` of records: at most bufferBytes (a lone call is always taken).
  private waiting: Waiting[] = [];
  private head = 0;
  private waitingBytes = 0;
  private counting = false; // the one lookup of the partition count is under way
  private readonly placed: Array<() => void> = []; // flush()es waiting for the waiting calls
  private readonly open = new Map<number, Batch>();
  private readonly ready = new Map<number, Batch[]>();
  private readonly inFlight = new Map<number, number>();
  private readonly ids = new Map<number, Ident>();
  private readonly idle: Array<() => void> = [];
  private closed = false;

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
    this.batchLimit = this.batchBytes;
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
      if (this.closed) throw new InvalidRequestError("the producer is closed");
      const key = bytes(opts.key); const val = bytes(value);
      checkRecord(key, val, opts);
      const overhead = this.overhead(key, opts.headers);
      const size = overhead + (val?.length ?? 0);
      checkSize(size);
      if (this.count !== null && this.buffered < this.bufferBytes && this.head === this.waiting.length) {
        const partition = this.pick(key, opts.partition, this.count);
        const done = new Promise<RecordMetadata>(capture);
        this.appendOne(partition, key, val, opts, size, undefined, captured.resolve!, captured.reject!);
        return done;
      }
      const done = new Promise<RecordMetadata>(capture);
      this.wait({ values: [val], next: 0, key, opts, overhead, bytes: size, since: Date.now(), timestamp: 0 /* read when placed */,
        partition: undefined, one: { resolve: captured.resolve!, reject: captured.reject! }, all: null });
      return done;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Queues `values` for one partition, in order (Python's send_all): the one `opts.partition`
   * names, else `opts.key`'s, else the next round robin; every record gets the same key,
   * headers and timestamp. Resolves, once all are queued (waiting for buffer room as send()
   * does), to a SentRecords whose `metadata()` gives each record's offset. A value of the wrong
   * type, or a record too large for any batch, refuses the whole call before anything is queued.
   */
  sendAll(values: ReadonlyArray<Uint8Array | string | null>, opts: SendOptions = {}): Promise<SentRecords> {
    try {
      if (this.closed) throw new InvalidRequestError("the producer is closed");
      if (!Array.isArray(values)) throw new InvalidRequestError(`sendAll takes an array of values, not ${typeof values}`);
      const key = bytes(opts.key);
      checkRecord(key, null, opts);
      const overhead = this.overhead(key, opts.headers);
      const vals = new Array<Uint8Array | null>(values.length);
      let largest = 0; let total = 0;
      for (let i = 0; i < values.length; i++) {
        const b = vals[i] = bytes(values[i]);
        if (b !== null && !(b instanceof Uint8Array)) throw new InvalidRequestError(`sendAll: value ${i} is not a Uint8Array, a string or null (${what(b)})`);
        if (b !== null && b.length > largest) largest = b.length;
        total += overhead + (b?.length ?? 0);
      }
      checkSize(overhead + largest);
      return new Promise<SentRecords>((resolve, reject) => {
        this.wait({ values: vals, next: 0, key, opts, overhead, bytes: total, since: Date.now(), timestamp: opts.timestamp ?? Date.now(),
          partition: undefined, one: null, all: { sent: new SentRecords(this.topic), resolve, reject } });
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The bytes of a record beyond its value. */
  private overhead(key: Uint8Array | null, headers: Header[] | undefined): number {
    let size = RECORD_OVERHEAD_BYTES + (key?.length ?? 0);
    for (const h of headers ?? []) size += 8 + Buffer.byteLength(h.key, "utf8") + (h.value?.length ?? 0);
    return size;
  }

  /** The partition a record goes to: the one asked for, else by key, else round robin. */
  private pick(key: Uint8Array | null, partition: number | undefined, count: number): number {
    if (partition === undefined) return key !== null && this.partitioner === "key" ? partitionForKey(key, count) : (this.rr++ % count);
    if (!Number.isInteger(partition) || partition < 0 || partition >= count) {
      throw new InvalidRequestError(`topic ${this.topic} has partitions 0-${count - 1}, not ${partition}`);
    }
    return partition;
  }

  private expired(created: number): boolean { return Date.now() >= created + this.deliveryTimeoutMs; }

  /** Puts a record into its partition's open batch (a new one when it would overflow). `since`:
   * when the record was handed over, when not now (the batch's deadline counts from it). */
  private add(partition: number, record: ProducerRecord, size: number, since: number | undefined): Batch {
    let batch = this.open.get(partition);
    // A record past its deadline and one before it never share a batch (the batch would fail
    // the live one at its seal). Only a record that waited can be past it, or a batch it made.
    if (batch && (batch.nbytes + size > this.batchLimit ||
        ((since !== undefined || batch.waited) && this.expired(batch.created) !== this.expired(since ?? Date.now())))) {
      this.seal(partition);
      batch = undefined;
    }
    if (!batch) {
      batch = { partition, records: [], nbytes: 0, resolves: [], rejects: [], parts: null, timer: null, created: since ?? Date.now(), waited: false };
      this.open.set(partition, batch);
      const p = partition;
      batch.timer = setTimeout(() => this.seal(p), this.lingerMs);
    }
    if (since !== undefined && since <= batch.created) { batch.created = since; batch.waited = true; }
    batch.records.push(record);
    batch.nbytes += size;
    this.buffered += size;
    return batch;
  }

  private appendOne(partition: number, key: Uint8Array | null, val: Uint8Array | null, opts: SendOptions, size: number,
                    since: number | undefined, resolve: (m: RecordMetadata) => void, reject: (e: Error) => void): void {
    const batch = this.add(partition, { key, value: val, headers: opts.headers, timestamp: opts.timestamp ?? Date.now() }, size, since);
    batch.resolves.push(resolve); batch.rejects.push(reject);
    if (batch.nbytes >= this.batchLimit || this.lingerMs === 0) this.seal(partition);
  }

  /** Queues a call behind the others that wait, refusing it when they already hold bufferBytes. */
  private wait(w: Waiting): void {
    if (this.waitingBytes > 0 && this.waitingBytes + w.bytes > this.bufferBytes) {
      throw new OverloadedError(`the producer's buffer is full: ${this.buffered} bytes of records in batches and ${this.waitingBytes} ` +
        `more waiting for room (bufferBytes ${this.bufferBytes}); await send() or sendAll() before sending more`);
    }
    this.waiting.push(w);
    this.waitingBytes += w.bytes;
    this.pump();
  }

  /** Moves waiting calls into batches, oldest first, while there is room and the count is known. */
  private pump(): void {
    while (this.head < this.waiting.length) {
      if (this.count === null) { this.lookUpCount(); return; }
      const w = this.waiting[this.head];
      if (w.partition === undefined) {
        try {
          w.partition = this.pick(w.key, w.opts.partition, this.count);
        } catch (e) {
          this.dequeue(w).reject(e as Error);
          continue;
        }
        if (w.all) w.all.sent.partition = w.partition;
      }
      const partition = w.partition;
      let run = -1; let runBatch: Batch | null = null;
      while (w.next < w.values.length && this.buffered < this.bufferBytes) {
        const val = w.values[w.next++];
        const size = w.overhead + (val?.length ?? 0);
        w.bytes -= size; this.waitingBytes -= size;
        if (w.one) { this.appendOne(partition, w.key, val, w.opts, size, w.since, w.one.resolve, w.one.reject); continue; }
        const sent = w.all!.sent;
        const batch = this.add(partition, { key: w.key, value: val, headers: w.opts.headers, timestamp: w.timestamp }, size, w.since);
        if (batch !== runBatch) { run = sent.open(batch.records.length - 1); runBatch = batch; (batch.parts ??= []).push({ sent, index: run }); }
        batch.resolves.push(null); batch.rejects.push(null);
        sent.add(run);
        if (batch.nbytes >= this.batchLimit) this.seal(partition);
      }
      if (w.next < w.values.length) return; // no room: the next answered batch pumps again
      this.dequeue(w);
      if (w.all) {
        if (this.lingerMs === 0) this.seal(partition);
        w.all.resolve(w.all.sent);
      }
    }
    for (const f of this.placed.splice(0)) f();
  }

  /** Takes the oldest waiting call off the queue; its settle functions. */
  private dequeue(w: Waiting): { reject: (e: Error) => void } {
    this.waiting[this.head++] = undefined as unknown as Waiting;
    this.waitingBytes -= w.bytes; w.bytes = 0;
    if (this.head === this.waiting.length) { this.waiting = []; this.head = 0; }
    else if (this.head >= 1024 && this.head * 2 >= this.waiting.length) { this.waiting = this.waiting.slice(this.head); this.head = 0; }
    return (w.one ?? w.all)!;
  }

  /** The one lookup of the partition count (and the topic's max_message_bytes, which bounds each
   * batch; unknown when it cannot be read, and the SPU still enforces it), ending by the oldest
   * waiting call's deadline. When
   * it times out the calls whose deadline passed fail and the others ask again (each waits
   * until its own deadline); any other failure fails every waiting call (the next send asks
   * again). */
  private lookUpCount(): void {
    if (this.counting) return;
    this.counting = true;
    const deadline = this.waiting[this.head].since + this.deliveryTimeoutMs;
    Promise.all([this.client.partitions(this.topic, deadline), this.client.maxMessageBytes(this.topic, deadline)]).then(([parts, limit]) => {
      this.counting = false;
      if (limit !== null) this.batchLimit = Math.min(this.batchBytes, Math.max(RECORD_OVERHEAD_BYTES, limit - BATCH_HEADER_BYTES));
      this.count = parts.length;
      this.pump();
    }, (e) => {
      this.counting = false;
      const timedOut = e instanceof RequestTimeoutError;
      const err = timedOut ? new RequestTimeoutError(`the partitions of ${this.topic} were not found within ` +
        `deliveryTimeoutMs (${this.deliveryTimeoutMs} ms): ${e.message}`, { outcomeUnknown: false }) : e as Error;
      const now = Date.now();
      while (this.head < this.waiting.length && (!timedOut || this.waiting[this.head].since + this.deliveryTimeoutMs <= now)) {
        this.dequeue(this.waiting[this.head]).reject(err);
      }
      if (this.head < this.waiting.length) this.lookUpCount();
      else for (const f of this.placed.splice(0)) f();
    });
  }

  /** Sends what waits and resolves once every record sent so far has its answer (send()s still
   * waiting for buffer room or the topic's partition count included). */
  async flush(): Promise<void> {
    for (;;) {
      for (const p of [...this.open.keys()]) this.seal(p);
      if (this.head < this.waiting.length) await new Promise<void>((r) => this.placed.push(r));
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

  /** The batch's identity, taken in send order so sequences follow the order of batches. A
   * fresh producer id is asked for by the batch's `deadline`: the batches after it that share
   * the id fail with it (the gap would refuse them anyway). */
  private identity(partition: number, n: number, deadline: number): { id: Ident; baseSequence: number } | undefined {
    if (!this.idempotent) return undefined;
    let id = this.ids.get(partition);
    if (!id) {
      const pid = this.client.admin.allocateProducerIds(1, deadline);
      pid.catch(() => undefined);
      id = { pid, seq: 0, gapAt: null };
      this.ids.set(partition, id);
    }
    const baseSequence = id.seq;
    id.seq = (id.seq + n) % SEQUENCE_WRAP;
    return { id, baseSequence };
  }

  private async sendBatch(batch: Batch): Promise<void> {
    const { partition } = batch;
    const deadline = batch.created + this.deliveryTimeoutMs;
    // Sealed past its deadline (it waited for room, a turn, or the partition count): not sent,
    // and not numbered (a sequence it took would be a gap). A batch is numbered here, before the
    // first await, as drain() sends it: drain() sees at once whether the partition has an id,
    // and a batch sent while an older one fails cannot take a fresh id before that one ends.
    const expired = Date.now() >= deadline;
    const ident = expired ? undefined : this.identity(partition, batch.records.length, deadline);
    try {
      // Never settles synchronously: a batch failing at once must not re-enter drain() or pump()
      // from inside them (a queue of expired batches would recurse once per batch).
      await undefined;
      if (expired) throw new RequestTimeoutError("it was not sent before its deadline", { outcomeUnknown: false });
      const identity = ident ? {
        producerId: await withinDeadline(ident.id.pid, deadline, "a producer id from the SC").catch((e: unknown) => {
          // The SC call's outcome (an id maybe allocated) is not the batch's: nothing was sent.
          if (e instanceof KolkError) e.outcomeUnknown = false;
          throw e;
        }),
        producerEpoch: 0, baseSequence: ident.baseSequence,
      } : undefined;
      // gzip in node:zlib's thread pool, off the event loop (compressAsync); zstd stays sync.
      const data = await encodeBatchAsync(batch.records, { codec: this.compression, identity });
      if (data.length > PRODUCE_BYTES_MAX) throw new InvalidRequestError(`a produce request of ${data.length} bytes is more than the SPU accepts (${PRODUCE_BYTES_MAX})`);
      const r = await this.client.withLeader(this.topic, partition, async (conn) => {
        const left = Math.min(this.timeoutMs + ANSWER_GRACE_MS, deadline - Date.now());
        if (left <= 0) throw new RequestTimeoutError("no time left for another attempt", { outcomeUnknown: false, retriable: false });
        try {
          return await conn.spuCall((q) => {
            const p = q._initProduce();
            p.topic = this.topic; p.partition = partition; p.acks = ACKS[this.acks]; p.timeoutMs = this.timeoutMs;
            p._initRecords(data.length).copyBuffer(data);
            writeChain(p._initSmartmodules(this.chain.length), this.chain);
          }, (s) => s.produce, { timeoutMs: left, write: true });
        } catch (e) {
          // The leader refuses a batch after a gap as retriable (the batch before may still be
          // retried); once a batch before this one failed for good, no retry can be written.
          const gapAt = ident?.id.gapAt;
          if (e instanceof OutOfOrderSequenceError && gapAt !== null && gapAt !== undefined && seqAfter(ident!.baseSequence, gapAt)) {
            e.retriable = false;
            e.message += `; the batch at sequence ${gapAt} before it failed for good (a gap)`;
          }
          throw e;
        }
      }, this.retries, true, deadline, this.idempotent);
      // One read of the answer's base offset: each capnp-es getter call builds pointer objects.
      const base = r.baseOffset;
      const { resolves } = batch;
      for (let i = 0; i < resolves.length; i++) resolves[i]?.({ topic: this.topic, partition, offset: base + BigInt(i) });
      for (const p of batch.parts ?? []) p.sent.settle(p.index, base, null);
    } catch (e) {
      // A gap in the sequence: a fresh id next (unless one was taken already).
      if (ident) {
        if (ident.id.gapAt === null || seqAfter(ident.id.gapAt, ident.baseSequence)) ident.id.gapAt = ident.baseSequence;
        if (this.ids.get(partition) === ident.id) this.ids.delete(partition);
      }
      let err = e instanceof KolkError ? e : new KolkError(String((e as Error)?.message ?? e));
      if (err instanceof RequestTimeoutError && Date.now() >= deadline) {
        err = new RequestTimeoutError(`${batch.records.length} record(s) for ${this.topic}-${partition} were not acknowledged within ` +
          `deliveryTimeoutMs (${this.deliveryTimeoutMs} ms): ${err.message}`, { outcomeUnknown: err.outcomeUnknown, retriable: false, cause: err });
      }
      for (const reject of batch.rejects) reject?.(err);
      for (const p of batch.parts ?? []) p.sent.settle(p.index, null, err);
    } finally {
      this.buffered -= batch.nbytes;
      this.inFlight.set(partition, (this.inFlight.get(partition) ?? 1) - 1);
      this.drain(partition);
      this.pump();
      if (![...this.inFlight.values()].some((n) => n > 0)) for (const w of this.idle.splice(0)) w();
    }
  }
}
