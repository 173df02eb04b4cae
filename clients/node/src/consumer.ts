/**
 * The consumer (mirrors core/client/consumer.py's AsyncConsumer): one SPU `stream` per
 * partition (all the topic's partitions when none is given), each read by the shared
 * PartitionStream (partition-stream.ts: credit granted back per push, a push decoded one batch
 * at a time, the idle probe) with this consumer's policy: its SmartModule chain and the
 * chain's accumulators go with every (re)open; a stream that breaks (leader change, lost
 * connection, retriable error, an END with status ok) is reopened on the partition's current
 * leader from the next offset after RETRY_BACKOFF_MS; an offset retention deleted under the
 * stream restarts at the log start or raises, as Python's `after_out_of_range` decides.
 * `return()` on the iterator, close() or the abort signal CANCEL every stream.
 */
import type { KolkClient } from "./client.js";
import { abortError, InvalidRequestError, KolkError, OffsetOutOfRangeError, OverloadedError, TooManyStreamsError } from "./errors.js";
import { STREAM_WINDOW_BYTES_MAX } from "./limits.js";
import { afterOutOfRange, outOfRange, readable } from "./offset-range.js";
import { checkOptions } from "./options.js";
import { PartitionStream, type ReadPolicy } from "./partition-stream.js";
import type { ConsumerRecord } from "./records.js";
import { normalizeChain, writeChain, type ChainStage, type Stage } from "./smartmodules.js";

export { IDLE_PROBE_MS, PROBE_TIMEOUT_MS } from "./partition-stream.js";
export const RETRY_BACKOFF_MS = 200;
export const REOPENS_MAX = 50; // reopens in a row without a push before the error surfaces
/** A start that named no offset follows a log start retention moved this often (Python's RESTARTS_AT_LOG_START_MAX). */
export const RESTARTS_AT_LOG_START_MAX = 3;

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
  /** End the iteration (and poll() gives []) once every partition read reaches the high
   * watermark it last saw (Python's stop_at_end); at once for an empty topic. */
  stopAtEnd?: boolean;
}
export const CONSUMER_OPTIONS: readonly string[] = ["partition", "offset", "isolation", "smartmodules", "windowBytes", "signal", "stopAtEnd"];

/** One partition's read in progress; it never rejects (a failure is kept in `error`), so that a
 * failed read is taken out too: a rejected read left pending would be raced again by every
 * later call and fail it at once, a loop without I/O for a caller that retries. Calls waiting
 * for it are in `waiters` while they wait, and only then (see Consumer.first). */
interface Read { stream: PartitionStream; settled: boolean; records?: ConsumerRecord[]; error?: unknown; waiters: Set<(r: Read) => void> }
const TIMEOUT = Symbol("timeout");
const CLOSED = Symbol("closed");

/** The plain consumer's policy for partition `partition`'s stream; its state (the chain's
 * accumulators, the restarts at the log start left) lives with it across reopens. */
function policyOf(c: Consumer, partition: number): ReadPolicy {
  let accumulators: Uint8Array[] | null = null;
  // Before anything was handed out, a start that named no offset may follow the log start.
  let restartsLeft = c.start.kind === "absolute" ? 0 : RESTARTS_AT_LOG_START_MAX;
  let rechecksLeft = RESTARTS_AT_LOG_START_MAX; // reopens when the range looks fine again
  return {
    triesMax: REOPENS_MAX,
    backoffMs: () => RETRY_BACKOFF_MS,
    // A fair-use refusal (tooManyStreams) or a busy SmartModule pool (overloaded) is retriable
    // only once other streams close or calm down, which a reopen cannot bring about.
    final: (e) => e instanceof TooManyStreamsError || e instanceof OverloadedError,
    dropConnection: true,
    idleResets: true,
    closed: () => { throw abortError("the consumer was closed"); },
    writeRequest: (s) => {
      const list = s._initSmartmodules(c.chain.length);
      writeChain(list, c.chain);
      c.chain.forEach((_, i) => {
        const acc = accumulators?.[i];
        if (acc) { const inv = list.get(i); inv.hasAccumulator = true; inv._initAccumulator(acc.length).copyBuffer(acc); }
      });
    },
    onPush: (push, r) => {
      if (push.nextOffset > r.offset) restartsLeft = 0; // handed out (or skipped by a SmartModule): no moving on now
      if (push.accumulators.length) { // an aggregate resumes where it was
        accumulators = [];
        for (let i = 0; i < push.accumulators.length; i++) accumulators.push(new Uint8Array(push.accumulators.get(i).toUint8Array()));
      }
    },
    // Python's _out_of_range: the range now decides between reopening, the log start and the error.
    outOfRange: async (e, r) => {
      let range: { logStart: bigint; logEnd: bigint };
      try {
        range = await c.client.offsets(c.topic, partition);
      } catch (x) {
        if (x instanceof KolkError) throw e; // the SPU's own words, when the range cannot be learned now
        throw x;
      }
      const step = afterOutOfRange(r.offset, range.logStart, range.logEnd, restartsLeft > 0);
      if (step === "reopen") { // the leader changed between the two answers: ask the one that leads now
        if (--rechecksLeft < 0) throw e;
        c.client.forgetLeaders(c.topic);
      } else if (step === "restart") {
        restartsLeft--;
        r.offset = range.logStart;
      } else {
        throw outOfRange(`${c.topic}-${partition}`, r.offset, range.logStart, range.logEnd);
      }
    },
  };
}

export class Consumer implements AsyncIterable<ConsumerRecord> {
  readonly partition?: number; readonly start: Offset; readonly isolation: "committed" | "uncommitted";
  readonly chain: Stage[]; readonly windowBytes: number; readonly signal?: AbortSignal; readonly stopAtEnd: boolean;
  private streams: PartitionStream[] | null = null;
  private resolving: Promise<PartitionStream[]> | null = null; // one lookup for calls made at once
  private readonly pending = new Map<PartitionStream, Read>();
  private closed = false;
  private onAbort: (() => void) | null = null; // removed by close(): a long-lived signal keeps no closed consumer
  /** @internal Aborted by close(): ends a wait for the streams' reads. */
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
    this.stopAtEnd = o.stopAtEnd ?? false;
    if (typeof this.stopAtEnd !== "boolean") throw new InvalidRequestError(`stopAtEnd is true or false, not ${String(o.stopAtEnd)}`);
    this.signal = o.signal;
    if (this.signal) {
      this.onAbort = () => this.close();
      this.signal.addEventListener("abort", this.onAbort, { once: true });
    }
  }

  /** The partitions' streams, looked up once: two calls made at once share the lookup (each
   * made its own set before, and both sets read: every record twice). A failed lookup is tried
   * again by the next call. */
  private resolve(): Promise<PartitionStream[]> {
    this.resolving ??= this.lookUp().catch((e: unknown) => { this.resolving = null; throw e; });
    return this.resolving;
  }

  private async lookUp(): Promise<PartitionStream[]> {
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
        // Never clamped: below the log start the records are gone, past the end they do not exist yet.
        if (!readable(s.value, logStart, logEnd)) throw outOfRange(`${this.topic}-${p}`, s.value, logStart, logEnd);
        offset = s.value;
      } else if (s.kind === "fromEnd") offset = hw - s.value > logStart ? hw - s.value : logStart;
      else offset = await this.client.offsetForTimestamp(this.topic, p, Number(s.value));
      const ps = new PartitionStream(this.client, this.topic, p, offset, this.windowBytes, this.isolation === "uncommitted" ? 1 : 0,
        policyOf(this, p));
      ps.highWatermark = hw;
      out.push(ps);
    }
    if (this.closed) { for (const ps of out) ps.close(); return out; } // closed while it looked its partitions up
    this.streams = out;
    return out;
  }

  /** Python's _done: with stopAtEnd, a partition read up to the high watermark it last saw. */
  private isDone(s: PartitionStream): boolean {
    return this.stopAtEnd && s.highWatermark >= 0n && s.offset >= s.highWatermark && !s.holding;
  }

  /** The records of the next read of any partition, or null when there is nothing more
   * (closed, or stopAtEnd and every partition done). `until`: a deadline (ms since the epoch)
   * after which [] is given, or null; `keepalives`: an empty read is given as [] (else waited
   * past); `together`: the records of other reads already in are added (poll, as Python's). */
  private async take(until: number | null, keepalives: boolean, together: boolean): Promise<ConsumerRecord[] | null> {
    if (this.signal?.aborted) throw abortError();
    if (this.closed) return null;
    const streams = await this.resolve();
    for (;;) {
      if (this.closed) return this.ended();
      for (const s of streams) if (!this.pending.has(s) && !this.isDone(s)) this.pending.set(s, read(s));
      if (this.pending.size === 0) return null;
      const won = await this.first([...this.pending.values()], until);
      if (won === CLOSED || this.closed) return this.ended();
      if (won === TIMEOUT) return [];
      if (this.pending.get(won.stream) !== won) continue; // a call made at the same time took it: each read goes out once
      this.pending.delete(won.stream);
      if (won.error !== undefined) throw won.error;
      let out = won.records!;
      if (together) {
        for (const [s, r] of this.pending) {
          if (r.settled && r.error === undefined) { this.pending.delete(s); out = out.concat(r.records!); }
        }
      }
      if (out.length || keepalives) return out;
      if (until !== null && Date.now() >= until) return [];
    }
  }

  /** null, or the AbortError when the signal closed this consumer (only the signal rejects a read). */
  private ended(): null {
    if (this.signal?.aborted) throw abortError();
    return null;
  }

  /** The first of `reads` to settle (the first settled already, in order), TIMEOUT at `until`,
   * CLOSED once closed, or an AbortError once the signal fires. Not Promise.race over the
   * reads: a race leaves a reaction on each read that has not settled, holding the race and so
   * what it resolved to, the records of another read; a quiet partition's read, raced by every
   * call, kept every batch handed out meanwhile alive. Every waiter, listener and the timer go
   * when this ends. */
  private first(reads: Read[], until: number | null): Promise<Read | typeof TIMEOUT | typeof CLOSED> {
    const stop = this.stopper.signal;
    const signal = this.signal;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) { reject(abortError()); return; }
      if (stop.aborted) { resolve(CLOSED); return; }
      const settled = reads.find((r) => r.settled);
      if (settled) { resolve(settled); return; }
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => { done(); reject(abortError()); };
      const onStop = () => { done(); resolve(CLOSED); };
      const onRead = (r: Read) => { done(); resolve(r); };
      const done = () => {
        clearTimeout(timer); signal?.removeEventListener("abort", onAbort); stop.removeEventListener("abort", onStop);
        for (const r of reads) r.waiters.delete(onRead);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      stop.addEventListener("abort", onStop, { once: true });
      for (const r of reads) r.waiters.add(onRead);
      if (until !== null) timer = setTimeout(() => { done(); resolve(TIMEOUT); }, Math.max(0, until - Date.now()));
    });
  }

  /** The records of the next stored batch of any partition (an empty list: a keepalive). Throws
   * InvalidRequestError once closed, or (stopAtEnd) once every partition was read to its end. */
  async nextBatch(): Promise<ConsumerRecord[]> {
    if (this.closed && !this.signal?.aborted) throw new InvalidRequestError("the consumer is closed");
    const got = await this.take(null, true, false);
    if (got !== null) return got;
    if (this.closed) throw abortError("the consumer was closed");
    throw new InvalidRequestError(`the consumer has read every partition of ${this.topic} to its end (stopAtEnd)`);
  }

  /** Python's poll: the records of the next read of any partition (one stored batch) with those
   * of other partitions' reads already in, [] when none came within `timeoutMs` (a read still
   * under way stays for the next call), [] once closed or (stopAtEnd) read to the end. A read's
   * error rejects it, as Python's poll raises it (OffsetOutOfRangeError, a SmartModule's
   * refusal, the reopens used up), and so does the abort signal. Polls made at once each get
   * other records. */
  async poll(timeoutMs: number): Promise<ConsumerRecord[]> {
    if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new InvalidRequestError(`poll: timeoutMs is a number of ms >= 0, not ${String(timeoutMs)}`);
    }
    return (await this.take(Date.now() + timeoutMs, false, true)) ?? [];
  }

  /** Each non-empty batch's records as one array (a push is decoded batch by batch as they are
   * taken); ends on close() or (stopAtEnd) at the end, rejects only when the signal aborts. */
  async *batches(): AsyncGenerator<ConsumerRecord[]> {
    try {
      for (;;) {
        let b: ConsumerRecord[] | null;
        try {
          b = await this.take(null, false, false);
        } catch (e) {
          if (this.closed && !this.signal?.aborted) return;
          throw e;
        }
        if (b === null) return;
        yield b;
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

function read(stream: PartitionStream): Read {
  const r: Read = { stream, settled: false, waiters: new Set() };
  void stream.next().then((records) => { r.records = records; }, (e: unknown) => { r.error = e ?? new KolkError("a read failed"); })
    .then(() => { r.settled = true; for (const w of [...r.waiters]) w(r); });
  return r;
}
