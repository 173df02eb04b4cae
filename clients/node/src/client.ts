/**
 * The client: admin calls on the SC, leader routing for the data plane (partition leaders from
 * the SC's partition and SPU objects, as core/client/client.py), one pooled connection per SPU
 * address, and the factories of producers and consumers.
 */
import { AdminClient, type KolkObject, sleep } from "./admin.js";
import { Connection, CONNECT_TIMEOUT_MS, CALL_TIMEOUT_MS, isNoAnswer, type CallOptions } from "./connection.js";
import { MAX_MESSAGE_BYTES_DEFAULT, TOPIC_DEFAULTS_NAME } from "./limits.js";
import { checkOptions } from "./options.js";
import {
  ClusterUnavailableError, InvalidRequestError, KolkError, NotFoundError, PartitionOfflineError, RequestTimeoutError,
} from "./errors.js";
import type { SpuRequest, SpuResponse } from "./gen/kolk.js";
import type { TlsOptions } from "./tls.js";
import { Producer, type ProducerOptions } from "./producer.js";
import { Consumer, type ConsumerOptions } from "./consumer.js";
import { GroupConsumer, type GroupConsumerOptions } from "./groups/consumer.js";
import * as groupsAdmin from "./groups/admin.js";

export interface ClientOptions {
  /** One SC address (host:port) or several. */
  sc: string | string[];
  tls?: TlsOptions;
  /** The deadline of every call to the cluster (default 30 s). */
  timeoutMs?: number;
}

interface Placed { partition: number; leader: number | null; replicas: number[] }

export const LEADER_RETRIES = 10;
export const CLIENT_OPTIONS: readonly string[] = ["sc", "tls", "timeoutMs"];

/**
 * `p`, or a RequestTimeoutError (nothing sent: `outcomeUnknown` false) once `deadline` (ms since
 * the epoch) passes; `p` itself goes on (a shared lookup or connect others may still use) and its
 * outcome is then ignored. No deadline: `p` as it is. The timer ends when `p` settles.
 */
export function withinDeadline<T>(p: Promise<T>, deadline: number | undefined, what: string): Promise<T> {
  if (deadline === undefined) return p;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new RequestTimeoutError(`${what}: no answer before the deadline`, { outcomeUnknown: false })),
      Math.max(0, deadline - Date.now()));
    p.then((v) => { clearTimeout(timer); resolve(v); }, (e) => { clearTimeout(timer); reject(e); });
  });
}

/** How long a producer waits for its topic's max_message_bytes before it batches without it. */
export const CONFIG_READ_MS = 2000;

export class KolkClient {
  readonly admin: AdminClient;
  readonly timeoutMs: number;
  private readonly tls?: TlsOptions;
  private readonly placed = new Map<string, Placed[]>();
  // The lookup of each topic's partitions under way, and the deadline its SC calls end by:
  // callers that race for it share it (one pair of SC calls, not one per retrying batch).
  private readonly refreshing = new Map<string, { p: Promise<Placed[]>; until: number | undefined }>();
  private spus = new Map<number, string>();
  private readonly conns = new Map<string, Promise<Connection>>();

  constructor(opts: ClientOptions) {
    // A misspelt "sc" is named as such, before the missing address is.
    if (opts !== null && typeof opts === "object") checkOptions("KolkClient", opts, CLIENT_OPTIONS);
    const sc: unknown = opts?.sc;
    if (!(typeof sc === "string" ? sc : Array.isArray(sc) && sc.length)) {
      throw new InvalidRequestError('KolkClient needs the SC address: new KolkClient({ sc: "127.0.0.1:9003" }) ' +
        "(kolk cluster start prints it; or a list of SC addresses)");
    }
    this.tls = opts.tls;
    this.timeoutMs = opts.timeoutMs ?? CALL_TIMEOUT_MS;
    if (!Number.isFinite(this.timeoutMs) || this.timeoutMs <= 0) {
      throw new InvalidRequestError(`timeoutMs is a number of ms > 0, not ${String(opts.timeoutMs)}`);
    }
    this.admin = new AdminClient(opts.sc, { tls: opts.tls, timeoutMs: this.timeoutMs });
  }

  // ---- admin
  createTopic(name: string, opts: { partitions?: number; replicationFactor?: number; config?: Record<string, string> } = {}): Promise<KolkObject> {
    return this.admin.createTopic(name, opts.partitions ?? 1, opts.replicationFactor ?? 1, opts.config ?? {});
  }
  deleteTopic(name: string): Promise<void> { return this.admin.deleteTopic(name); }
  listTopics(): Promise<KolkObject[]> { return this.admin.listTopics(); }
  clusterStatus(): Promise<any> { return this.admin.clusterStatus(); }

  producer(topic: string, opts: ProducerOptions = {}): Producer { return new Producer(this, topic, opts); }
  consumer(topic: string, opts: ConsumerOptions = {}): Consumer { return new Consumer(this, topic, opts); }
  /** A member of consumer group `opts.group` reading `topic` (groups/consumer.ts). */
  groupConsumer(topic: string, opts: GroupConsumerOptions): GroupConsumer { return new GroupConsumer(this, topic, opts); }
  // Consumer groups for operators (groups/admin.ts): on the client, since groups live on SPUs.
  listGroups(): Promise<groupsAdmin.GroupListing[]> { return groupsAdmin.listGroups(this); }
  describeGroup(group: string): Promise<Record<string, any>> { return groupsAdmin.describeGroup(this, group); }
  deleteGroup(group: string): Promise<void> { return groupsAdmin.deleteGroup(this, group); }

  /** The topic's effective max_message_bytes (its own, the cluster default, else the built-in
   * 4 MiB), or null when it cannot be read now (the SPU still enforces it). As Python's, but
   * asked for at most CONFIG_READ_MS (or until `deadline`): a producer whose client knows the
   * partitions does not wait out a slow SC for it. */
  async maxMessageBytes(topic: string, deadline?: number): Promise<number | null> {
    const until = Math.min(deadline ?? Infinity, Date.now() + CONFIG_READ_MS);
    try {
      const [t, defaults] = await withinDeadline(Promise.all([this.admin.getObject("topic", topic, true, until),
        this.admin.getObject("config", TOPIC_DEFAULTS_NAME, true, until)]), until, `reading the config of ${topic}`);
      if (t === null) return null;
      const raw = t.spec?.config?.max_message_bytes ?? defaults?.spec?.max_message_bytes;
      const n = raw === undefined ? MAX_MESSAGE_BYTES_DEFAULT : Number(raw);
      return Number.isSafeInteger(n) && n > 0 ? n : null;
    } catch {
      return null;
    }
  }

  // ---- routing
  /** The topic's partitions when they were already looked up (no I/O), else undefined. */
  knownPartitions(topic: string): readonly Placed[] | undefined { return this.placed.get(topic); }

  /** The topic's partitions (looked up once, then kept until a retriable error forgets them);
   * with a `deadline`, a lookup still under way then rejects with RequestTimeoutError. */
  partitions(topic: string, deadline?: number): Promise<Placed[]> {
    const have = this.placed.get(topic);
    return have ? Promise.resolve(have) : withinDeadline(this.refresh(topic, deadline), deadline, `looking up the partitions of ${topic}`);
  }

  /** Reads the topic's partitions and their leaders from the SC; concurrent callers share one
   * lookup. With a `deadline` its SC calls end by then; a caller whose deadline is later than
   * the shared lookup's, when that one ran out of time, asks again. */
  refresh(topic: string, deadline?: number): Promise<Placed[]> {
    const under = this.refreshing.get(topic);
    if (under) {
      const covers = under.until === undefined || (deadline !== undefined && deadline <= under.until);
      return covers ? under.p : under.p.catch((e) => {
        if (Date.now() >= under.until! && (deadline === undefined || Date.now() < deadline)) return this.refresh(topic, deadline);
        throw e;
      });
    }
    const p = this.lookUp(topic, deadline);
    this.refreshing.set(topic, { p, until: deadline });
    const done = () => { if (this.refreshing.get(topic)?.p === p) this.refreshing.delete(topic); };
    p.then(done, done);
    return p;
  }

  private async lookUp(topic: string, until: number | undefined): Promise<Placed[]> {
    const objs = (await this.admin.listObjects("partition", true, until)).filter((o) => o.spec?.topic === topic);
    if (objs.length === 0) {
      if ((await this.admin.getObject("topic", topic, false, until)) === null) throw new NotFoundError(`topic ${topic} does not exist`);
      throw new ClusterUnavailableError(`topic ${topic} has no partitions yet`);
    }
    const parts = objs.map((o) => ({ partition: Number(o.spec.partition), leader: o.status?.leader ?? null, replicas: o.spec.replicas ?? [] }))
      .sort((a, b) => a.partition - b.partition);
    const spus = new Map<number, string>();
    for (const u of await this.admin.listObjects("spu", true, until)) spus.set(Number(u.spec.id), String(u.spec.public_address));
    this.spus = spus;
    this.placed.set(topic, parts);
    return parts;
  }

  forgetLeaders(topic: string): void { this.placed.delete(topic); }

  /** Forgets (and closes) the pooled connection to `address` when it is still `conn`: a call on
   * it got no answer before the client's own deadline, so it may be hung (Python's
   * drop_connection). A server's `timeout` answer keeps it: the connection works. */
  dropConnection(address: string, conn: Connection): void {
    const have = this.conns.get(address);
    if (have === undefined) return;
    have.then((c) => {
      if (c !== conn) return;
      if (this.conns.get(address) === have) this.conns.delete(address);
      c.close();
    }, () => undefined);
  }

  /** The pooled connection to an SPU; concurrent callers share one connect. */
  connection(address: string): Promise<Connection> {
    const have = this.conns.get(address);
    if (have) {
      return have.then((c) => (c.closed ? this.reconnect(address) : c), () => this.reconnect(address));
    }
    return this.reconnect(address);
  }

  private reconnect(address: string): Promise<Connection> {
    if (this.closed) return Promise.reject(new ClusterUnavailableError("the client is closed", { retriable: false }));
    const p = Connection.connect(address, { tls: this.tls, timeoutMs: Math.min(CONNECT_TIMEOUT_MS, this.timeoutMs) });
    this.conns.set(address, p);
    p.catch(() => { if (this.conns.get(address) === p) this.conns.delete(address); });
    return p;
  }

  /** The partition's leader and a connection to it. With a `deadline` (ms since the epoch) the
   * lookup and the connect end by then (RequestTimeoutError, nothing sent); without one each has
   * its own (the client's `timeoutMs`; connecting 3 s). */
  async leader(topic: string, partition: number, deadline?: number): Promise<{ conn: Connection; address: string }> {
    const parts = await this.partitions(topic, deadline);
    if (!Number.isInteger(partition) || partition < 0 || partition >= parts.length) {
      throw new InvalidRequestError(`topic ${topic} has partitions 0-${parts.length - 1}, not ${partition}`);
    }
    const p = parts[partition];
    if (p.leader === null || p.leader === undefined) {
      this.forgetLeaders(topic);
      throw new PartitionOfflineError(`partition ${topic}-${partition} has no leader (replicas ${p.replicas.join(", ")})`);
    }
    const address = this.spus.get(p.leader);
    if (address === undefined) {
      this.forgetLeaders(topic);
      throw new ClusterUnavailableError(`partition ${topic}-${partition}: its leader SPU ${p.leader} is not known yet`);
    }
    return { conn: await withinDeadline(this.connection(address), deadline, `connecting to ${address}`), address };
  }

  /**
   * `call` on the partition's leader, retrying what is retriable (with jittered backoff, up to
   * `retries` times). For a write the final error says whether any attempt may have been
   * written (`outcomeUnknown`): a later refusal does not make an earlier lost answer definite.
   * `resendUnknown` false (a non-idempotent producer): a write whose outcome is unknown is not
   * sent again (it could be written twice); only what surely was not written is retried.
   * Every wait but `call`'s own (which `call` bounds) ends by `deadline`: the leader lookup, the
   * connect, the back-off.
   */
  async withLeader<T>(topic: string, partition: number, call: (conn: Connection) => Promise<T>,
                      retries: number, write = false, deadline = Date.now() + this.timeoutMs,
                      resendUnknown = true): Promise<T> {
    let backoff = 50;
    let maybeWritten = false;
    for (let attempt = 0; ; attempt++) {
      try {
        if (this.closed) throw new ClusterUnavailableError("the client is closed", { retriable: false });
        let conn: Connection | null = null;
        let address = "";
        try {
          ({ conn, address } = await this.leader(topic, partition, deadline));
        } catch (e) {
          if (e instanceof KolkError) e.outcomeUnknown = false; // nothing sent
          throw e;
        }
        try {
          return await call(conn);
        } catch (e) {
          if (isNoAnswer(e)) this.dropConnection(address, conn);
          throw e;
        }
      } catch (e) {
        if (!(e instanceof KolkError)) throw e;
        maybeWritten = maybeWritten || (write && e.outcomeUnknown);
        const resendable = !(write && e.outcomeUnknown && !resendUnknown);
        // Read the leaders again on the next call too when this one gives up: a leader that hangs
        // (no answer before the deadline) must not keep every later call on it.
        if (e.retriable) this.forgetLeaders(topic);
        if (!e.retriable || !resendable || attempt >= retries || Date.now() >= deadline) {
          if (maybeWritten && !e.outcomeUnknown) {
            e.outcomeUnknown = true;
            e.message += "; an earlier attempt may have been written (outcome unknown)";
          } else if (write && !e.outcomeUnknown) {
            e.message += "; nothing was written";
          }
          throw e;
        }
        await sleep(Math.min(backoff * (0.5 + Math.random()), Math.max(0, deadline - Date.now())));
        backoff = Math.min(backoff * 2, 1000);
      }
    }
  }

  spuCall<T>(topic: string, partition: number, build: (req: SpuRequest) => void, pick: (r: SpuResponse) => T,
             opts: CallOptions & { retries?: number } = {}): Promise<T> {
    return this.withLeader(topic, partition, (c) => c.spuCall(build, pick, { timeoutMs: this.timeoutMs, ...opts }),
      opts.retries ?? LEADER_RETRIES, Boolean(opts.write));
  }

  async offsets(topic: string, partition: number): Promise<{ logStart: bigint; highWatermark: bigint; logEnd: bigint }> {
    const r = await this.spuCall(topic, partition, (q) => { const o = q._initOffsets(); o.topic = topic; o.partition = partition; },
      (s) => s.offsets);
    return { logStart: r.logStartOffset, highWatermark: r.highWatermark, logEnd: r.logEndOffset };
  }

  async offsetForTimestamp(topic: string, partition: number, timestamp: number): Promise<bigint> {
    const r = await this.spuCall(topic, partition, (q) => {
      const o = q._initOffsetForTimestamp(); o.topic = topic; o.partition = partition; o.timestamp = BigInt(timestamp);
    }, (s) => s.offsetForTimestamp);
    return r.offset;
  }

  private closed = false;

  async close(): Promise<void> {
    this.closed = true;
    this.admin.close();
    for (const p of this.conns.values()) p.then((c) => c.close(), () => undefined);
    this.conns.clear();
  }
}
