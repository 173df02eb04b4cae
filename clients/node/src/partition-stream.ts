/**
 * One partition read through an SPU `stream` (docs/protocol.md "Streams"), the one reader both
 * consumers use (the plain `Consumer` of consumer.ts and the group member's `PartitionReader`
 * of groups/stream.ts). It opens the stream on the partition's leader at `offset` with a
 * window of credit, holds each push and decodes it one stored batch at a time as its records
 * are taken (a batch may expand to 64 MiB; a whole push of gzip batches to ~16 GB), grants the
 * push's bytes back after its last batch, and with no push for IDLE_PROBE_MS asks the leader
 * for the partition's offsets (a leader that hangs sends no END and no error). A stream that
 * breaks is opened again on the leader of now, from `offset`, as its `ReadPolicy` says; the
 * policy is where the two consumers differ.
 */
import type { KolkClient } from "./client.js";
import type { Connection, SpuStream } from "./connection.js";
import { KolkError, OffsetOutOfRangeError, PartitionOfflineError } from "./errors.js";
import { decodeBatchAtAsync } from "./batch-decode.js";
import type { ConsumerRecord } from "./batch-format.js";

/** With no push for this long, check that the stream's SPU still answers and leads (Python's IDLE_PROBE_S). */
export const IDLE_PROBE_MS = 1_000;
export const PROBE_TIMEOUT_MS = 5_000;

type Got = Awaited<ReturnType<SpuStream["next"]>>;
/** What a stream request carries besides topic, partition, offset, window and isolation. */
export type StreamRequest = Parameters<Parameters<Connection["openStream"]>[0]>[0];
type StreamFields = ReturnType<StreamRequest["_initStream"]>;

/** How a reader reacts to failures and to close (the two consumers' differences). */
export interface ReadPolicy {
  /** Failures in a row (without a push) after which a retriable one surfaces. */
  readonly triesMax: number;
  /** The wait before opening the stream again after the `failures`-th failure in a row. */
  backoffMs(failures: number): number;
  /** True for a retriable error that still surfaces at once (a reopen cannot help). */
  final(e: KolkError): boolean;
  /** True: a failure other than an ok END or an offline partition also closes the connection (it may hang). */
  readonly dropConnection: boolean;
  /** True: a leader answering the idle probe resets the failures in a row, as a push does. */
  readonly idleResets: boolean;
  /** What next() gives once the reader is closed: [] (the group reader) or an AbortError. */
  closed(): ConsumerRecord[];
  /** Writes the request's extra fields (the plain consumer's SmartModule chain). */
  writeRequest?(s: StreamFields, reader: PartitionStream): void;
  /** Sees each push before its records are handed out (the chain's accumulators). */
  onPush?(push: NonNullable<Got>["push"], reader: PartitionStream): void;
  /** The SPU refused `reader.offset` as out of range: resolves to open the stream again (at
   * `reader.offset`, which it may move), or throws the error to surface. */
  outOfRange?(e: OffsetOutOfRangeError, reader: PartitionStream): Promise<void>;
}

export class PartitionStream {
  highWatermark = -1n;
  private stream: SpuStream | null = null;
  private conn: Connection | null = null;
  private waiting: Promise<Got> | null = null; // the stream's next push, across probes
  /** The push being handed out batch by batch: at most one batch of it is expanded at a time. */
  private held: { data: Uint8Array; pos: number; bytes: number; nextOffset: bigint } | null = null;
  private failures = 0;
  private readonly stopper = new AbortController();

  constructor(protected readonly client: KolkClient, readonly topic: string, readonly partition: number, public offset: bigint,
    private readonly windowBytes: number, private readonly isolation: 0 | 1, private readonly policy: ReadPolicy) {}

  /** True while a push is being handed out (its last batch not yet taken). */
  get holding(): boolean { return this.held !== null; }
  get isClosed(): boolean { return this.stopper.signal.aborted; }

  /** The records of the next batch (possibly none: a keepalive, a push of control records only). */
  async next(): Promise<ConsumerRecord[]> {
    for (;;) {
      if (this.isClosed) return this.policy.closed();
      let endedOk = false;
      try {
        if (this.held !== null) return await this.fromHeld();
        if (this.stream === null) await this.open();
        const got = await this.untilStopped(this.nextOrIdle());
        if (got === STOPPED) continue;
        if (got === "idle") { // the leader answered the probe: a keepalive
          if (this.policy.idleResets) this.failures = 0;
          return [];
        }
        if (got === null) { // ended ok (e.g. the leader stepped down): opened again after a back-off, counted
          endedOk = true;
          throw new KolkError(`the stream of ${this.topic}-${this.partition} ended`, { retriable: true });
        }
        this.failures = 0;
        const { push, bytes } = got;
        this.highWatermark = push.highWatermark;
        this.policy.onPush?.(push, this);
        // A view, not a copy: capnp-es already copied the message's segments out of the frame.
        this.held = { data: push.records.toUint8Array(), pos: 0, bytes, nextOffset: push.nextOffset };
        return await this.fromHeld();
      } catch (e) {
        this.dropStream();
        if (this.isClosed) return this.policy.closed();
        await this.recover(e, endedOk);
      }
    }
  }

  /** After a failure: resolves to open the stream again, or throws what surfaces. */
  private async recover(e: unknown, endedOk: boolean): Promise<void> {
    if (e instanceof OffsetOutOfRangeError && this.policy.outOfRange) {
      await this.policy.outOfRange(e, this);
      return;
    }
    if (!(e instanceof KolkError) || !e.retriable || this.policy.final(e) || ++this.failures > this.policy.triesMax) {
      this.failures = 0;
      throw e;
    }
    if (this.policy.dropConnection && !(e instanceof PartitionOfflineError) && !endedOk) this.conn?.close();
    this.client.forgetLeaders(this.topic);
    await abortableSleep(this.policy.backoffMs(this.failures), this.stopper.signal);
  }

  /** The records of the held push's next batch that has any at or after `offset` (none when it
   * has no more), moving `offset` past it; after the push's last batch its credit is granted back. */
  private async fromHeld(): Promise<ConsumerRecord[]> {
    const h = this.held!;
    let records: ConsumerRecord[] = [];
    while (records.length === 0 && h.pos < h.data.length) {
      const b = await decodeBatchAtAsync(h.data, h.pos, this.partition, this.offset, this.stopper.signal); // close() stops it
      if (this.held !== h) return this.policy.closed(); // closed while a batch was expanding
      h.pos = b.end;
      records = b.records;
      if (b.nextOffset > this.offset) this.offset = b.nextOffset;
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
  private async nextOrIdle(): Promise<Got | "idle"> {
    if (this.waiting === null) {
      this.waiting = this.stream!.next();
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

  /** `read`, or STOPPED once closed. Not a race against one promise that settles at close: each
   * race would leave a reaction on it holding that read's push (every push read, until close). */
  private untilStopped<T>(read: Promise<T>): Promise<T | typeof STOPPED> {
    const signal = this.stopper.signal;
    if (signal.aborted) return Promise.resolve(STOPPED);
    return new Promise<T | typeof STOPPED>((resolve, reject) => {
      const onStop = () => resolve(STOPPED);
      signal.addEventListener("abort", onStop, { once: true });
      read.then((v) => { signal.removeEventListener("abort", onStop); resolve(v); },
        (e) => { signal.removeEventListener("abort", onStop); reject(e); });
    });
  }

  private async open(): Promise<void> {
    const { conn } = await this.client.leader(this.topic, this.partition);
    this.conn = conn;
    this.stream = await conn.openStream((q) => {
      const s = q._initStream();
      s.topic = this.topic; s.partition = this.partition; s.offset = this.offset; s.windowBytes = this.windowBytes;
      s.isolation = this.isolation;
      this.policy.writeRequest?.(s, this);
    }, { timeoutMs: this.client.timeoutMs, signal: this.stopper.signal });
  }

  private dropStream(): void { this.stream?.cancel(); this.stream = null; this.waiting = null; this.held = null; }

  /** CANCELs the stream; a read waiting ends (as the policy's `closed()` says). */
  close(): void {
    this.stopper.abort();
    this.dropStream();
  }
}

const STOPPED = Symbol("stopped");

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) { resolve(); return; }
    const done = () => { clearTimeout(timer); signal.removeEventListener("abort", done); resolve(); };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
