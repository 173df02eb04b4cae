// One assigned partition read through an SPU stream (docs/protocol.md "Streams"): pushes
// decoded into records one batch at a time, a push's credit granted back after its last batch
// is taken, the stream opened again at
// the position after a retriable failure (a leader moved), a bounded number of times in a row.

import type { KolkClient } from "../client.js";
import type { Connection, SpuStream } from "../connection.js";
import { KolkError } from "../errors.js";
import { decodeBatchAt, type ConsumerRecord } from "../records.js";
import { backoffMs } from "./core.js";
import { sleep } from "./coordinator.js";

export const WINDOW_BYTES_DEFAULT = 4 << 20;
export const REOPEN_TRIES_MAX = 20; // retriable failures in a row before the error is raised
/** With no push for this long, probe the stream's leader (as the plain consumer, consumer.ts). */
export const IDLE_PROBE_MS = 1_000;
export const PROBE_TIMEOUT_MS = 5_000;

export class PartitionReader {
  highWatermark = -1n;
  private stream: SpuStream | null = null;
  private conn: Connection | null = null;
  private waiting: ReturnType<SpuStream["next"]> | null = null; // the stream's next push, across probes
  /** The push being handed out batch by batch (as the plain consumer's): one batch expanded at a time. */
  private held: { data: Uint8Array; pos: number; bytes: number; nextOffset: bigint } | null = null;
  private closed = false;
  private failures = 0;
  private readonly stopper = new AbortController();

  constructor(private readonly client: KolkClient, readonly topic: string, readonly partition: number, public offset: bigint,
    private readonly windowBytes: number, private readonly isolation: 0 | 1) {}

  /** The records of the next batch (possibly none: a push of control records only); [] once closed. */
  async next(): Promise<ConsumerRecord[]> {
    for (;;) {
      if (this.closed) return [];
      try {
        if (this.held !== null) return this.fromHeld();
        if (this.stream === null) this.stream = await this.open();
        const got = await this.untilStopped(this.nextOrIdle(this.stream));
        if (this.closed || got === "idle") return []; // idle: the leader answered the probe
        if (got === null) throw new KolkError(`the stream of ${this.topic}-${this.partition} ended`, { retriable: true });
        this.failures = 0;
        const { push, bytes } = got;
        this.highWatermark = push.highWatermark;
        this.held = { data: push.records.toUint8Array(), pos: 0, bytes, nextOffset: push.nextOffset };
        return this.fromHeld();
      } catch (e) {
        this.stream?.cancel();
        this.stream = null;
        this.waiting = null;
        this.held = null;
        if (this.closed) return [];
        if (!(e instanceof KolkError) || !e.retriable || ++this.failures > REOPEN_TRIES_MAX) throw e;
        this.client.forgetLeaders(this.topic);
        await sleep(backoffMs(this.failures), this.stopper.signal).catch(() => undefined);
      }
    }
  }

  /** `read`, or null once closed: a read waiting on a cancelled stream ends then (SpuStream.cancel
   * does not wake it). Not a race against one promise that settles at close: each race would
   * leave a reaction on it holding that read's push (every push read, until close). */
  private untilStopped<T>(read: Promise<T>): Promise<T | null> {
    const signal = this.stopper.signal;
    if (signal.aborted) return Promise.resolve(null);
    return new Promise<T | null>((resolve, reject) => {
      const onStop = () => resolve(null);
      signal.addEventListener("abort", onStop, { once: true });
      read.then((v) => { signal.removeEventListener("abort", onStop); resolve(v); },
        (e) => { signal.removeEventListener("abort", onStop); reject(e); });
    });
  }

  /** The stream's next push, or "idle" after IDLE_PROBE_MS without one once its leader has
   * answered an `offsets` probe: a leader that hangs sends no END, and a failed probe (a
   * timeout, notLeader) throws so that the stream is opened again on the leader now. */
  private async nextOrIdle(stream: SpuStream): Promise<Awaited<ReturnType<SpuStream["next"]>> | "idle"> {
    if (this.waiting === null) {
      this.waiting = stream.next();
      this.waiting.catch(() => undefined); // awaited below, or dropped with its stream
    }
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<"idle">((r) => { timer = setTimeout(() => r("idle"), IDLE_PROBE_MS); });
    const got = await Promise.race([this.waiting, idle]).finally(() => clearTimeout(timer));
    if (got !== "idle") { this.waiting = null; return got; }
    const r = await this.conn!.spuCall((q) => { const o = q._initOffsets(); o.topic = this.topic; o.partition = this.partition; },
      (s) => s.offsets, { timeoutMs: PROBE_TIMEOUT_MS, signal: this.stopper.signal });
    this.highWatermark = r.highWatermark;
    return "idle";
  }

  /** The held push's next batch with records at or after `offset` (none when it has no more),
   * `offset` moved past it; after its last batch the push's credit is granted back. */
  private fromHeld(): ConsumerRecord[] {
    const h = this.held!;
    let records: ConsumerRecord[] = [];
    while (records.length === 0 && h.pos < h.data.length) {
      const b = decodeBatchAt(h.data, h.pos, this.partition, this.offset);
      h.pos = b.end;
      records = b.records;
      if (b.nextOffset > this.offset) this.offset = b.nextOffset;
    }
    if (h.pos >= h.data.length) {
      this.held = null;
      if (h.nextOffset > this.offset) this.offset = h.nextOffset;
      this.stream?.grant(h.bytes);
    }
    return records;
  }

  private async open(): Promise<SpuStream> {
    const { conn } = await this.client.leader(this.topic, this.partition);
    this.conn = conn;
    return conn.openStream((req) => {
      const s = req._initStream();
      s.topic = this.topic; s.partition = this.partition; s.offset = this.offset; s.isolation = this.isolation;
      s.windowBytes = this.windowBytes;
    }, { timeoutMs: this.client.timeoutMs, signal: this.stopper.signal });
  }

  close(): void {
    this.closed = true;
    this.stopper.abort();
    this.stream?.cancel();
    this.stream = null;
    this.held = null;
  }
}
