/**
 * One connection to an SC or an SPU: Kolk's framed, multiplexed transport (docs/protocol.md),
 * plain TCP or mutual TLS. STABLE INTERFACE (consumer groups build on it):
 *
 *   Connection.connect(address "host:port", {tls?, timeoutMs?, signal?}) -> Promise<Connection>
 *   conn.spuCall(build(req: SpuRequest), pick(resp: SpuResponse) -> T, {timeoutMs?, signal?, write?}) -> Promise<T>
 *   conn.scCall(build(req: ScRequest), pick(resp: ScResponse) -> T, {timeoutMs?, signal?, write?}) -> Promise<T>
 *       one request/response; throws the KolkError of a `rejected` answer, or of the picked
 *       struct's `result` when `result.ok` is false; on its deadline sends CANCEL and throws
 *       RequestTimeoutError (outcomeUnknown when `write`); on abort sends CANCEL and throws an
 *       AbortError; ClusterUnavailableError when the connection fails or closes.
 *   conn.openStream(build(req: SpuRequest) /* sets stream, incl. windowBytes *\/, {timeoutMs?, signal?})
 *       -> Promise<SpuStream>: next() -> Promise<StreamPush | null> (null: ended ok), grant(bytes)
 *       (a CREDIT frame), cancel() (a CANCEL frame). A push's body length is what to grant back.
 *   conn.close(); conn.closed
 *
 * At most REQUESTS_IN_FLIGHT_MAX requests are in flight; further calls wait their turn (within
 * their deadline). Frames are written in call order, which the producer's ordering relies on.
 */
import * as net from "node:net";
import * as tls from "node:tls";
import * as $ from "capnp-es";
import {
  Push, Push_Which, ScRequest, ScResponse, ScResponse_Which, SpuRequest, SpuResponse, SpuResponse_Which,
  StreamEnd, StreamPush,
} from "./gen/kolk.js";
import { abortError, ClusterUnavailableError, errorFromWire, KolkError, RequestTimeoutError } from "./errors.js";
import { encodeFrame, FrameDecoder, Kind, type Frame } from "./framing.js";
import { FRAME_BODY_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX, STREAM_WINDOW_BYTES_MAX, WRITE_BUFFER_HIGH_BYTES } from "./limits.js";
import { readMessage, reading } from "./message.js";
import { tlsConnectOptions, type TlsOptions } from "./tls.js";

export type { TlsOptions } from "./tls.js";

export const CONNECT_TIMEOUT_MS = 3_000;
export const CALL_TIMEOUT_MS = 30_000;

/** The errors of calls whose CLIENT-side deadline passed with no answer (not a server's
 * `timeout` answer): the connection may be hung, so the client drops it from its pool. */
const NO_ANSWER = new WeakSet<Error>();
function noAnswer(e: RequestTimeoutError): RequestTimeoutError { NO_ANSWER.add(e); return e; }
export function isNoAnswer(e: unknown): boolean { return e instanceof Error && NO_ANSWER.has(e); }

export interface CallOptions { timeoutMs?: number; signal?: AbortSignal; write?: boolean }
export interface ConnectOptions { tls?: TlsOptions; timeoutMs?: number; signal?: AbortSignal }

interface WireErrorStruct { code: string; message: string; leader: string; retriable: boolean; outcomeUnknown: boolean }

export function wireError(e: WireErrorStruct): KolkError {
  return errorFromWire({ code: e.code, message: e.message, leader: e.leader, retriable: e.retriable, outcomeUnknown: e.outcomeUnknown });
}

/** Throws the error of a struct's `result` when it is not ok. */
export function checkResult(struct: unknown): void {
  const r = (struct as { result?: { ok: boolean; error: WireErrorStruct } } | null)?.result;
  if (r !== undefined && !r.ok) throw wireError(r.error);
}

/** A TLS handshake or certificate failure: retrying with the same material cannot help. */
export function isTlsRefusal(e: Error & { code?: string }): boolean {
  return /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY|HOSTNAME/.test(e.code ?? "") ||
    /alert|certificate|before secure TLS connection/i.test(e.message);
}

/** One line for a failed TLS connection: the cause, and what it likely means. */
function tlsCause(e: Error): string {
  if (/before secure TLS connection/i.test(e.message)) {
    return `the server closed the connection during the TLS handshake (it refused this client's certificate, or none was given): ${e.message}`;
  }
  return e.message;
}

function parseAddress(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(":");
  const port = Number(address.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new ClusterUnavailableError(`address ${JSON.stringify(address)} is not host:port`);
  }
  return { host: address.slice(0, i).replace(/^\[|\]$/g, ""), port };
}

type Waiter = { resolve: (f: Frame) => void; reject: (e: Error) => void };

/** One open SPU stream; pushes wait in a queue bounded by the window the client grants. */
export class SpuStream {
  private queue: Array<Frame> = [];
  private waiter: Waiter | null = null;
  private failure: Error | null = null;
  private ended = false;
  // Push body bytes received and not yet granted back: past the window and one push, the
  // server ignores the credit (docs/protocol.md "Streams") and the connection is failed.
  private outstanding = 0;

  constructor(private readonly conn: Connection, readonly id: number, readonly window: number = STREAM_WINDOW_BYTES_MAX) {}

  /** @internal False when the server pushed past the stream's credit. */ deliver(frame: Frame): boolean {
    if (frame.kind === Kind.PUSH) {
      this.outstanding += frame.body.length;
      if (this.outstanding > this.window + FRAME_BODY_BYTES_MAX) return false;
    }
    if (this.waiter) { const w = this.waiter; this.waiter = null; w.resolve(frame); } else this.queue.push(frame);
    return true;
  }
  /** @internal */ fail(err: Error): void {
    this.failure = err;
    if (this.waiter) { const w = this.waiter; this.waiter = null; w.reject(err); }
  }

  /** The next push (with its body size, the credit to grant back), or null when the server
   * ended the stream with ok. Throws the stream's error (END with an error, connection lost). */
  async next(): Promise<{ push: StreamPush; bytes: number } | null> {
    if (this.ended) return null;
    let frame = this.queue.shift();
    if (frame === undefined) {
      if (this.failure) throw this.failure;
      frame = await new Promise<Frame>((resolve, reject) => { this.waiter = { resolve, reject }; });
    }
    if (frame.kind === Kind.END) {
      this.ended = true;
      this.conn.forget(this.id);
      const what = `the END of stream ${this.id} from ${this.conn.address}`;
      const end = readMessage(frame.body, StreamEnd, what);
      reading(what, () => checkResult(end));
      return null;
    }
    const what = `a push of stream ${this.id} from ${this.conn.address}`;
    const push = readMessage(frame.body, Push, what);
    const stream = reading(what, () => {
      if (push.which() !== Push_Which.STREAM) throw new KolkError(`stream ${this.id}: a push that is not a stream push`);
      const s = push.stream;
      void s.records.length; void s.accumulators.length; void s.highWatermark; void s.nextOffset; // read now: typed errors here
      return s;
    });
    return { push: stream, bytes: frame.body.length };
  }

  grant(bytes: number): void {
    this.outstanding = Math.max(0, this.outstanding - Math.max(0, bytes));
    if (!this.ended && bytes > 0) this.conn.send(encodeFrame(Kind.CREDIT, this.id, undefined, Math.min(bytes, STREAM_WINDOW_BYTES_MAX)));
  }

  cancel(): void {
    if (this.ended) return;
    this.ended = true;
    this.conn.forget(this.id);
    this.conn.send(encodeFrame(Kind.CANCEL, this.id));
    this.queue = [];
    if (this.waiter) { const w = this.waiter; this.waiter = null; w.reject(abortError(`stream ${this.id} was cancelled`)); }
  }
}

export class Connection {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Waiter>();
  private readonly streams = new Map<number, SpuStream>();
  // PUSH/END frames that came in the same read as their stream's opening answer, before
  // openStream registered the stream (it does so a microtask later); delivered on registration.
  private readonly early = new Map<number, Frame[]>();
  private nextId = 1;
  private inFlight = 0;
  private readonly slotWaiters: Array<() => void> = [];
  // REQUEST frames waiting, in call order, for the server to read what was written before them:
  // past WRITE_BUFFER_HIGH_BYTES unread, as the Python client, a call waits (within its deadline)
  // instead of growing the socket's buffer without bound for a server that does not read.
  private readonly unsent: Array<{ id: number; frame: Buffer }> = [];
  private failure: Error | null = null;

  private constructor(private readonly socket: net.Socket, readonly address: string) {
    socket.on("data", (data: Buffer) => this.onData(data));
    socket.on("drain", () => this.sendUnsent());
    socket.on("error", (e) => this.fail(new ClusterUnavailableError(`connection to ${address} failed: ${e.message}`,
      { retriable: !isTlsRefusal(e), cause: e })));
    socket.on("close", () => this.fail(new ClusterUnavailableError(`connection to ${address} closed`)));
  }

  get closed(): boolean { return this.failure !== null; }

  static connect(address: string, opts: ConnectOptions = {}): Promise<Connection> {
    const { host, port } = parseAddress(address);
    const timeoutMs = opts.timeoutMs ?? CONNECT_TIMEOUT_MS;
    return new Promise<Connection>((resolve, reject) => {
      let socket: net.Socket;
      const what = opts.tls ? "TLS connection" : "connection";
      const done = (err: Error | null) => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        socket.removeAllListeners("error");
        if (err) { socket.destroy(); reject(err); return; }
        socket.setNoDelay(true);
        resolve(new Connection(socket, address));
      };
      const onAbort = () => done(abortError(`connecting to ${address} was aborted`));
      const timer = setTimeout(() => done(new ClusterUnavailableError(`${what} to ${address} failed: no answer within ${timeoutMs} ms`)), timeoutMs);
      try {
        socket = opts.tls
          ? tls.connect({ host, port, ...tlsConnectOptions(opts.tls, host) }, () => done(null))
          : net.connect({ host, port }, () => done(null));
      } catch (e) {
        clearTimeout(timer);
        reject(e);
        return;
      }
      socket.on("error", (e) => done(new ClusterUnavailableError(`${what} to ${address} failed: ${opts.tls ? tlsCause(e) : e.message}`,
        { cause: e, retriable: !isTlsRefusal(e) })));
      if (opts.signal?.aborted) onAbort(); else opts.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  spuCall<T>(build: (req: SpuRequest) => void, pick: (resp: SpuResponse) => T, opts: CallOptions = {}): Promise<T> {
    return this.call(SpuRequest, build, async (body, id) => {
      const what = `the answer to request ${id} from ${this.address}`;
      const resp = readMessage(body, SpuResponse, what);
      return reading(what, () => {
        if (resp.which() === SpuResponse_Which.REJECTED) throw wireError(resp.rejected);
        const out = pick(resp);
        checkResult(out);
        return out;
      });
    }, opts);
  }

  scCall<T>(build: (req: ScRequest) => void, pick: (resp: ScResponse) => T, opts: CallOptions = {}): Promise<T> {
    return this.call(ScRequest, build, async (body, id) => {
      const what = `the answer to request ${id} from ${this.address}`;
      const resp = readMessage(body, ScResponse, what);
      return reading(what, () => {
        if (resp.which() === ScResponse_Which.REJECTED) throw wireError(resp.rejected);
        const out = pick(resp);
        checkResult(out);
        return out;
      });
    }, opts);
  }

  /** Opens an SPU `stream` (build must init `stream` with its windowBytes). */
  async openStream(build: (req: SpuRequest) => void, opts: CallOptions = {}): Promise<SpuStream> {
    let stream: SpuStream | null = null;
    let window = STREAM_WINDOW_BYTES_MAX;
    await this.call(SpuRequest, (req) => { build(req); window = req.stream.windowBytes; }, async (body, id) => {
      const what = `the answer to request ${id} from ${this.address}`;
      const resp = readMessage(body, SpuResponse, what);
      reading(what, () => {
        if (resp.which() === SpuResponse_Which.REJECTED) throw wireError(resp.rejected);
        checkResult(resp.stream);
      });
      stream = new SpuStream(this, id, window);
      this.streams.set(id, stream);
      for (const f of this.early.get(id) ?? []) {
        if (!stream.deliver(f)) { this.pushedPastCredit(id); break; }
      }
      this.early.delete(id);
      return null;
    }, opts);
    return stream as unknown as SpuStream;
  }

  close(): void {
    if (!this.failure) this.fail(new ClusterUnavailableError(`connection to ${this.address} was closed by the client`));
  }

  /** @internal */ send(frame: Buffer): void {
    if (!this.failure) this.socket.write(frame);
  }

  /** @internal */ forget(id: number): void {
    if (this.streams.delete(id)) this.release();
  }

  private async call<R extends $.Struct, T>(root: $.StructCtor<R>, build: (req: R) => void,
                                            handle: (body: Uint8Array, id: number) => Promise<T>, opts: CallOptions): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? CALL_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const msg = new $.Message();
    build(msg.initRoot(root));
    const body = new Uint8Array(msg.toArrayBuffer());
    if (opts.signal?.aborted) throw abortError();
    await this.acquire(deadline, opts.signal);
    const id = this.allocateId();
    let keepSlot = false;
    try {
      const frame = await new Promise<Frame>((resolve, reject) => {
        const timer = setTimeout(() => {
          const unsent = this.unqueue(id);
          cleanup();
          if (unsent) {
            reject(noAnswer(new RequestTimeoutError(`request ${id} to ${this.address} was not sent within ${timeoutMs} ms: the server ` +
              `has not read the ${this.socket.writableLength} bytes written before it${opts.write ? "; nothing was written" : ""}`,
            { outcomeUnknown: false })));
            return;
          }
          this.send(encodeFrame(Kind.CANCEL, id));
          reject(noAnswer(new RequestTimeoutError(`request ${id} to ${this.address} got no answer within ${timeoutMs} ms` +
            (opts.write ? " (outcome unknown)" : ""), { outcomeUnknown: Boolean(opts.write) })));
        }, Math.max(0, deadline - Date.now()));
        const onAbort = () => {
          const unsent = this.unqueue(id);
          cleanup();
          if (!unsent) this.send(encodeFrame(Kind.CANCEL, id));
          reject(abortError());
        };
        const cleanup = () => {
          clearTimeout(timer);
          this.pending.delete(id);
          opts.signal?.removeEventListener("abort", onAbort);
        };
        this.pending.set(id, { resolve: (f) => { cleanup(); resolve(f); }, reject: (e) => { cleanup(); reject(e); } });
        opts.signal?.addEventListener("abort", onAbort, { once: true });
        if (this.failure) { cleanup(); reject(this.failure); return; }
        const frame = encodeFrame(Kind.REQUEST, id, body);
        if (this.unsent.length === 0 && this.socket.writableLength <= WRITE_BUFFER_HIGH_BYTES) this.send(frame);
        else this.unsent.push({ id, frame });
      });
      const out = await handle(frame.body, id);
      keepSlot = this.streams.has(id);
      return out;
    } finally {
      this.early.delete(id);
      if (!keepSlot) this.release();
    }
  }

  /** Drops request `id` from the unsent queue; true when it was there (never written). */
  private unqueue(id: number): boolean {
    const i = this.unsent.findIndex((u) => u.id === id);
    if (i < 0) return false;
    this.unsent.splice(i, 1);
    return true;
  }

  private sendUnsent(): void {
    while (this.unsent.length > 0 && !this.failure && this.socket.writableLength <= WRITE_BUFFER_HIGH_BYTES) {
      this.send(this.unsent.shift()!.frame);
    }
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
      if (!this.pending.has(id) && !this.streams.has(id)) return id;
    }
  }

  private acquire(deadline: number, signal?: AbortSignal): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.inFlight < REQUESTS_IN_FLIGHT_MAX) { this.inFlight++; return Promise.resolve(); }
    return new Promise<void>((resolve, reject) => {
      const wake = () => { clearTimeout(timer); signal?.removeEventListener("abort", onAbort); this.inFlight++; resolve(); };
      const drop = (e: Error) => {
        const i = this.slotWaiters.indexOf(wake);
        if (i >= 0) this.slotWaiters.splice(i, 1);
        reject(e);
      };
      const onAbort = () => { clearTimeout(timer); drop(abortError()); };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        drop(new RequestTimeoutError(`${REQUESTS_IN_FLIGHT_MAX} requests in flight to ${this.address}; no turn before the deadline`));
      }, Math.max(0, deadline - Date.now()));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.slotWaiters.push(wake);
    });
  }

  private release(): void {
    this.inFlight--;
    const next = this.slotWaiters.shift();
    if (next) next();
  }

  private onData(data: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.feed(data);
    } catch (e) {
      this.fail(new ClusterUnavailableError(`connection to ${this.address}: ${(e as Error).message}`));
      return;
    }
    const answered = new Set<number>();
    for (const f of frames) {
      if (f.kind === Kind.RESPONSE) {
        answered.add(f.id);
        this.pending.get(f.id)?.resolve(f);
      } else if (f.kind === Kind.PUSH || f.kind === Kind.END) {
        const stream = this.streams.get(f.id);
        if (stream) {
          if (!stream.deliver(f)) { this.pushedPastCredit(f.id); return; }
        } else if (answered.has(f.id)) this.early.set(f.id, [...(this.early.get(f.id) ?? []), f]);
      } else {
        this.fail(new ClusterUnavailableError(`connection to ${this.address}: the server sent a frame of kind ${f.kind}`));
        return;
      }
    }
  }

  private pushedPastCredit(id: number): void {
    this.fail(new ClusterUnavailableError(`connection to ${this.address}: the server pushed past the credit of stream ${id}`));
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    const unsent = new Set(this.unsent.splice(0).map((u) => u.id));
    this.socket.destroy();
    // Each pending call gets its own error: a request already sent may have been applied.
    for (const [id, w] of [...this.pending.entries()]) {
      w.reject(unsent.has(id) ? new ClusterUnavailableError(`${err.message} before request sent`, { outcomeUnknown: false })
        : new ClusterUnavailableError(`${err.message} before request answered`, { outcomeUnknown: true }));
    }
    this.pending.clear();
    for (const s of this.streams.values()) s.fail(err);
    this.streams.clear();
    for (const w of this.slotWaiters.splice(0)) w(); // they find the connection failed when they send
  }
}
