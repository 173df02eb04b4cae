/**
 * The producer (mirrors core/client/producer.py): records are placed on a partition (the one
 * asked for, else crc32c(key) mod partitions, else round robin), gathered into batches of up to
 * `batchBytes` for up to `lingerMs`, and sent in order, at most `maxInFlight` requests per
 * partition. Idempotent (the default with acks "all", as Python): a producer id from the SC per
 * partition, sequences numbered per partition, a batch built once so a retry sends the same
 * bytes; the leader answers a retry of a batch it holds with `duplicate`. Retries: every
 * retriable error, up to `retries` times, via KolkClient.withLeader. A batch that fails for
 * good leaves a gap in its partition's sequence: the partition takes a fresh producer id.
 * Memory: at most `bufferBytes` of records wait; send() waits for room beyond that.
 */
import type { KolkClient } from "./client.js";
import { crc32c } from "./crc32c.js";
import { InvalidRequestError, KolkError, RequestTimeoutError } from "./errors.js";
import { Acks } from "./gen/kolk.js";
import { PRODUCE_BYTES_MAX } from "./limits.js";
import { encodeBatch, type Codec, type Header, type ProducerRecord } from "./records.js";
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
  partitioner?: "key" | "round_robin"; smartmodules?: ChainStage[];
}
export interface SendOptions { key?: Uint8Array | string | null; headers?: Header[]; timestamp?: number; partition?: number }
export interface RecordMetadata { topic: string; partition: number; offset: bigint }

interface Batch {
  partition: number; records: ProducerRecord[]; nbytes: number;
  waiters: Array<{ resolve: (m: RecordMetadata) => void; reject: (e: Error) => void }>;
  timer: NodeJS.Timeout | null;
}

const bytes = (x: Uint8Array | string | null | undefined): Uint8Array | null =>
  x === undefined || x === null ? null : typeof x === "string" ? new TextEncoder().encode(x) : x;

export function partitionForKey(key: Uint8Array, count: number): number { return crc32c(key) % count; }

export class Producer {
  readonly acks: AcksName; readonly compression: Codec; readonly lingerMs: number; readonly batchBytes: number;
  readonly maxInFlight: number; readonly idempotent: boolean; readonly timeoutMs: number; readonly retries: number;
  readonly bufferBytes: number; readonly partitioner: "key" | "round_robin"; private readonly chain: Stage[];
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

  constructor(private readonly client: KolkClient, readonly topic: string, o: ProducerOptions = {}) {
    this.acks = o.acks ?? "all";
    if (!(this.acks in ACKS)) throw new InvalidRequestError(`acks must be one of none, leader, all; got ${JSON.stringify(this.acks)}`);
    this.compression = o.compression ?? "none";
    if (!["none", "gzip", "zstd"].includes(this.compression)) {
      throw new InvalidRequestError(`compression must be one of none, gzip, zstd; got ${JSON.stringify(this.compression)}`);
    }
    this.partitioner = o.partitioner ?? "key";
    if (this.partitioner !== "key" && this.partitioner !== "round_robin") throw new InvalidRequestError("partitioner must be 'key' or 'round_robin'");
    this.lingerMs = o.lingerMs ?? 5; this.batchBytes = o.batchBytes ?? 256 << 10; this.maxInFlight = o.maxInFlight ?? 4;
    this.timeoutMs = o.timeoutMs ?? 30_000; this.retries = o.retries ?? 20; this.bufferBytes = o.bufferBytes ?? 64 << 20;
    if (!(this.maxInFlight >= 1 && this.maxInFlight <= 64) || this.batchBytes < 1024 || this.bufferBytes < this.batchBytes ||
        this.batchBytes > PRODUCE_BYTES_MAX || !(this.lingerMs >= 0)) {
      throw new InvalidRequestError("need 1 <= maxInFlight <= 64, 1 KiB <= batchBytes <= 16 MiB, bufferBytes >= batchBytes, lingerMs >= 0");
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
  }

  /** Queues one record; resolves to its partition and offset once acknowledged. */
  async send(value: Uint8Array | string | null, opts: SendOptions = {}): Promise<RecordMetadata> {
    if (this.closed) throw new InvalidRequestError("the producer is closed");
    const key = bytes(opts.key); const val = bytes(value);
    let size = RECORD_OVERHEAD_BYTES + (key?.length ?? 0) + (val?.length ?? 0);
    for (const h of opts.headers ?? []) size += 8 + h.key.length + (h.value?.length ?? 0);
    if (size > RECORD_BYTES_MAX) {
      throw new InvalidRequestError(`a record of ${size} bytes is more than the largest batch an SPU accepts (${RECORD_BYTES_MAX} bytes with its header)`);
    }
    while (this.buffered >= this.bufferBytes) await new Promise<void>((r) => this.roomWaiters.push(r));
    const count = this.count ?? (this.count = (await this.client.partitions(this.topic)).length);
    let partition = opts.partition;
    if (partition === undefined) {
      partition = key !== null && this.partitioner === "key" ? partitionForKey(key, count) : (this.rr++ % count);
    } else if (!Number.isInteger(partition) || partition < 0 || partition >= count) {
      throw new InvalidRequestError(`topic ${this.topic} has partitions 0-${count - 1}, not ${partition}`);
    }
    let batch = this.open.get(partition);
    if (batch && batch.nbytes + size > this.batchBytes) { this.seal(partition); batch = undefined; }
    if (!batch) {
      batch = { partition, records: [], nbytes: 0, waiters: [], timer: null };
      this.open.set(partition, batch);
      const p = partition;
      batch.timer = setTimeout(() => this.seal(p), this.lingerMs);
    }
    batch.records.push({ key, value: val, headers: opts.headers ?? [], timestamp: opts.timestamp ?? Date.now() });
    batch.nbytes += size;
    this.buffered += size;
    const done = new Promise<RecordMetadata>((resolve, reject) => batch!.waiters.push({ resolve, reject }));
    if (batch.nbytes >= this.batchBytes || this.lingerMs === 0) this.seal(partition);
    return done;
  }

  /** Sends what waits and resolves once every record sent so far has its answer. */
  async flush(): Promise<void> {
    for (const p of [...this.open.keys()]) this.seal(p);
    while ([...this.inFlight.values()].some((n) => n > 0) || [...this.ready.values()].some((q) => q.length > 0)) {
      await new Promise<void>((r) => this.idle.push(r));
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
      const data = encodeBatch(batch.records, { codec: this.compression, identity });
      if (data.length > PRODUCE_BYTES_MAX) throw new InvalidRequestError(`a produce request of ${data.length} bytes is more than the SPU accepts (${PRODUCE_BYTES_MAX})`);
      const deadline = Date.now() + this.timeoutMs + 1000;
      const r = await this.client.withLeader(this.topic, partition, async (conn) => {
        const left = deadline - Date.now();
        if (left <= 0) throw new RequestTimeoutError(`${batch.records.length} record(s) for ${this.topic}-${partition} were not acknowledged within ${this.timeoutMs} ms (outcome unknown)`, { outcomeUnknown: true, retriable: false });
        return conn.spuCall((q) => {
          const p = q._initProduce();
          p.topic = this.topic; p.partition = partition; p.acks = ACKS[this.acks]; p.timeoutMs = this.timeoutMs;
          p._initRecords(data.length).copyBuffer(data);
          writeChain(p._initSmartmodules(this.chain.length), this.chain);
        }, (s) => s.produce, { timeoutMs: left, write: true });
      }, this.retries, true, deadline);
      batch.waiters.forEach((w, i) => w.resolve({ topic: this.topic, partition, offset: r.baseOffset + BigInt(i) }));
    } catch (e) {
      if (this.idempotent) this.ids.delete(partition); // a gap in the sequence: a fresh id next
      const err = e instanceof KolkError ? e : new KolkError(String((e as Error)?.message ?? e));
      batch.waiters.forEach((w) => w.reject(err));
    } finally {
      this.buffered -= batch.nbytes;
      while (this.buffered < this.bufferBytes && this.roomWaiters.length) this.roomWaiters.shift()!();
      this.inFlight.set(partition, (this.inFlight.get(partition) ?? 1) - 1);
      this.drain(partition);
      if (![...this.inFlight.values()].some((n) => n > 0)) for (const w of this.idle.splice(0)) w();
    }
  }
}
