/**
 * The admin client (SC): topics, stored objects, cluster status, producer ids. As Python's
 * core/client/admin.py: one SC connection at a time; when that SC cannot be reached the client
 * moves to the next address; `notLeader` moves it to the leader named in the answer. Writes are
 * retried only when they surely did not happen (noLeader, notLeader, or no connection yet);
 * reads on every retriable error, with jittered backoff, until the deadline.
 */
import type * as $ from "capnp-es";
import { Connection, CALL_TIMEOUT_MS, CONNECT_TIMEOUT_MS } from "./connection.js";
import { ClusterUnavailableError, InvalidRequestError, KolkError, RequestTimeoutError } from "./errors.js";
import type { Object as WireObject, ScRequest, ScResponse } from "./gen/kolk.js";
import { NAME_CHARS_MAX, TOPIC_CONFIG_ENTRIES_MAX } from "./limits.js";
import { MalformedMessageError, reading } from "./message.js";
import { speaksTls, type TlsOptions } from "./tls.js";

export const RETRY_BACKOFF_MIN_MS = 50;
export const RETRY_BACKOFF_MAX_MS = 1_000;

export interface KolkObject { kind: string; name: string; spec: any; status: any; version: bigint }

export function objectOf(o: WireObject): KolkObject {
  return reading("an object in an answer", () => {
    const kind = o.kind, name = o.name;
    const parse = (field: string, t: string) => {
      try {
        return t ? JSON.parse(t) : {};
      } catch (e) {
        throw new MalformedMessageError(`the SC sent ${kind} ${JSON.stringify(name.slice(0, 255))} with a ${field} that is not JSON: ${(e as Error).message}`);
      }
    };
    return { kind, name, spec: parse("specJson", o.specJson), status: parse("statusJson", o.statusJson), version: o.version };
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface AdminOptions { tls?: TlsOptions; timeoutMs?: number }

export class AdminClient {
  private readonly addresses: string[];
  private index = 0;
  private conn: Connection | null = null;
  private connecting: Promise<Connection> | null = null;
  private generation = 0; // bumped each time the client leaves a connection
  private readonly answered = new WeakSet<Connection>(); // connections that answered a call
  readonly timeoutMs: number;

  constructor(sc: string | string[], private readonly opts: AdminOptions = {}) {
    this.addresses = Array.isArray(sc) ? [...sc] : [sc];
    if (this.addresses.length === 0) throw new InvalidRequestError("no SC address given");
    this.timeoutMs = opts.timeoutMs ?? CALL_TIMEOUT_MS;
  }

  /** The SC connection; calls that race for it share one connect (each its own would leave
   * all but the last open, holding the process after close()). */
  private connect(leftMs: number): Promise<Connection> {
    if (this.conn && !this.conn.closed) return Promise.resolve(this.conn);
    if (this.connecting) return this.connecting;
    if (this.conn) { this.conn = null; this.generation++; } // lost: failures seen on it are old news
    const address = this.addresses[this.index % this.addresses.length];
    const p = Connection.connect(address, { tls: this.opts.tls, timeoutMs: Math.min(CONNECT_TIMEOUT_MS, leftMs) }).then((c) => {
      if (this.closed) { c.close(); throw new ClusterUnavailableError("the admin client is closed", { retriable: false }); }
      return (this.conn = c);
    });
    this.connecting = p;
    const done = () => { if (this.connecting === p) this.connecting = null; };
    p.then(done, done);
    return p;
  }

  /** Leaves the connection (or the failed connect) of generation `gen`: once, however many
   * calls saw it fail, and never a newer connection another call made since. */
  private drop(leader: string | null | undefined, gen: number): void {
    if (gen !== this.generation) return;
    this.generation++;
    this.conn?.close();
    this.conn = null;
    if (leader) {
      if (!this.addresses.includes(leader)) this.addresses.push(leader);
      this.index = this.addresses.indexOf(leader);
    } else {
      this.index++;
    }
  }

  /** One SC call with reconnection, leader following and retries, within the client's
   * `timeoutMs`, and by `until` (ms since the epoch) when given: a caller that stops waiting
   * (a producer's deliveryTimeoutMs) ends the call, its connect and its retries then too. */
  async call<T>(build: (req: ScRequest) => void, pick: (resp: ScResponse) => T, write: boolean, until?: number): Promise<T> {
    const deadline = Math.min(Date.now() + this.timeoutMs, until ?? Infinity);
    const least = until === undefined ? 100 : 1; // ms an attempt gets at least
    let backoff = RETRY_BACKOFF_MIN_MS;
    let last: KolkError | null = null;
    while (Date.now() < deadline) {
      if (this.closed) throw new ClusterUnavailableError("the admin client is closed", { retriable: false });
      let conn: Connection | null = null;
      const connecting = this.connect(deadline - Date.now());
      const gen = this.generation; // after connect(): it may have begun a new generation
      try {
        conn = await connecting;
      } catch (e) {
        if (!(e instanceof ClusterUnavailableError)) throw e;
        if (!e.retriable) throw e; // a TLS refusal: retrying cannot help
        last = e;
        this.drop(null, gen);
      }
      if (conn) {
        try {
          const value = await conn.scCall(build, pick, { timeoutMs: Math.max(least, deadline - Date.now()), write });
          this.answered.add(conn);
          return value;
        } catch (e) {
          if (!(e instanceof KolkError)) throw e;
          if (e instanceof ClusterUnavailableError) {
            this.drop(null, gen);
            if (!e.retriable) throw e;
            if (!this.opts.tls && !this.answered.has(conn) && await speaksTls(conn.address)) {
              // a TLS listener drops a plaintext client without a word (as Python's admin.py says)
              throw new ClusterUnavailableError(`${conn.address} requires TLS and this client connected without it: ` +
                "give the CA and a client certificate (tls: { caFile, certFile, keyFile })", { retriable: false });
            }
            if (write) { e.outcomeUnknown = true; throw e; } // it may have been applied
          } else {
            if (!e.retriable || (write && e.code !== "noLeader" && e.code !== "notLeader")) throw e;
            if (e.code === "notLeader") this.drop(e.leader, gen);
          }
          last = e;
        }
      }
      await sleep(Math.min(backoff * (0.5 + Math.random()), Math.max(0, deadline - Date.now())));
      backoff = Math.min(backoff * 2, RETRY_BACKOFF_MAX_MS);
    }
    if (last) throw last;
    if (deadline === until) { // the caller's deadline ended the call, not the client's timeoutMs
      throw new RequestTimeoutError(`no answer from the SC at ${this.addresses.join(", ")} before the deadline`, { outcomeUnknown: false });
    }
    throw new ClusterUnavailableError(`no answer from the SC at ${this.addresses.join(", ")} within ${this.timeoutMs} ms`);
  }

  async createTopic(name: string, partitions = 1, replicationFactor = 1, config: Record<string, string> = {}): Promise<KolkObject> {
    checkName("topic", name);
    if (!Number.isInteger(partitions) || partitions < 1) throw new InvalidRequestError(`topic ${name}: partitions must be an integer >= 1, not ${partitions}`);
    if (!Number.isInteger(replicationFactor) || replicationFactor < 1) {
      throw new InvalidRequestError(`topic ${name}: replicationFactor must be an integer >= 1, not ${replicationFactor}`);
    }
    const entries = Object.entries(config);
    if (entries.length > TOPIC_CONFIG_ENTRIES_MAX) throw new InvalidRequestError(`topic ${name}: ${entries.length} config entries; at most ${TOPIC_CONFIG_ENTRIES_MAX}`);
    const r = await this.call((q) => {
      const c = q._initCreateTopic();
      c.name = name; c.partitions = partitions; c.replicationFactor = replicationFactor;
      const l = c._initConfig(entries.length);
      entries.forEach(([k, v], i) => { const kv = l.get(i); kv.key = k; kv.value = String(v); });
    }, (s) => s.createTopic, true);
    return objectOf(r.topic);
  }

  async deleteTopic(name: string): Promise<void> {
    checkName("topic", name);
    await this.call((q) => { q._initDeleteTopic().name = name; }, (s) => s.deleteTopic, true);
  }

  async addPartitions(name: string, count: number): Promise<KolkObject> {
    checkName("topic", name);
    const r = await this.call((q) => { const a = q._initAddPartitions(); a.name = name; a.count = count; }, (s) => s.addPartitions, true);
    return objectOf(r.topic);
  }

  async alterTopic(name: string, set: Record<string, string> = {}, remove: string[] = []): Promise<KolkObject> {
    checkName("topic", name);
    const entries = Object.entries(set);
    const r = await this.call((q) => {
      const a = q._initAlterTopic(); a.name = name;
      const l = a._initSet(entries.length);
      entries.forEach(([k, v], i) => { const kv = l.get(i); kv.key = k; kv.value = String(v); });
      const d = a._initDelete(remove.length);
      remove.forEach((k, i) => d.set(i, k));
    }, (s) => s.alterTopic, true);
    return objectOf(r.topic);
  }

  /** `until`, here and below: the caller's deadline (ms since the epoch), as call()'s. */
  async listObjects(kind: string, stale = false, until?: number): Promise<KolkObject[]> {
    const r = await this.call((q) => { const l = q._initListObjects(); l.kind = kind; l.stale = stale; }, (s) => s.listObjects, false, until);
    return listOf(r.objects).map(objectOf);
  }

  async getObject(kind: string, name: string, stale = false, until?: number): Promise<KolkObject | null> {
    const r = await this.call((q) => { const g = q._initGetObject(); g.kind = kind; g.name = name; g.stale = stale; }, (s) => s.getObject, false, until);
    return r.found ? objectOf(r.object) : null;
  }

  async listTopics(): Promise<KolkObject[]> { return this.listObjects("topic"); }

  async clusterStatus(): Promise<any> {
    const r = await this.call((q) => { q._initClusterStatus(); }, (s) => s.clusterStatus, false);
    const text = reading("the cluster status", () => r.statusJson);
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new MalformedMessageError(`the SC's cluster status is not JSON: ${(e as Error).message}`);
    }
  }

  /** `count` producer ids: the first one (the rest follow it). */
  async allocateProducerIds(count = 1, until?: number): Promise<bigint> {
    const r = await this.call((q) => { q._initAllocateProducerIds().count = count; }, (s) => s.allocateProducerIds, true, until);
    return r.firstId;
  }

  private closed = false;

  close(): void { this.closed = true; this.conn?.close(); this.conn = null; }
}

export function listOf<T>(l: $.List<T>): T[] {
  return reading("a list in an answer", () => {
    const out: T[] = [];
    for (let i = 0, n = l.length; i < n; i++) out.push(l.get(i));
    return out;
  });
}

function checkName(what: string, name: string): void {
  if (typeof name !== "string" || !/^[A-Za-z0-9._-]{1,255}$/.test(name) || name.length > NAME_CHARS_MAX) {
    throw new InvalidRequestError(`${what} name ${JSON.stringify(name)?.slice(0, 80)} is not 1-${NAME_CHARS_MAX} of A-Z a-z 0-9 . _ -`);
  }
}
