// One assigned partition read through an SPU stream (docs/protocol.md "Streams"): pushes
// decoded into records, credit granted back as each push is taken, the stream opened again at
// the position after a retriable failure (a leader moved), a bounded number of times in a row.

import type { KolkClient } from "../client.js";
import type { SpuStream } from "../connection.js";
import { KolkError } from "../errors.js";
import { decodeBatches, type ConsumerRecord } from "../records.js";
import { backoffMs } from "./core.js";
import { sleep } from "./coordinator.js";

export const WINDOW_BYTES_DEFAULT = 4 << 20;
export const REOPEN_TRIES_MAX = 20; // retriable failures in a row before the error is raised

export class PartitionReader {
  highWatermark = -1n;
  private stream: SpuStream | null = null;
  private closed = false;
  private failures = 0;
  private readonly stopper = new AbortController();
  // Resolves when closed: a read waiting on a cancelled stream ends then (SpuStream.cancel does not wake it).
  private readonly stopped = new Promise<null>((resolve) => this.stopper.signal.addEventListener("abort", () => resolve(null), { once: true }));

  constructor(private readonly client: KolkClient, readonly topic: string, readonly partition: number, public offset: bigint,
    private readonly windowBytes: number, private readonly isolation: 0 | 1) {}

  /** The records of the next push (possibly none: a push of control records only); [] once closed. */
  async next(): Promise<ConsumerRecord[]> {
    for (;;) {
      if (this.closed) return [];
      try {
        if (this.stream === null) this.stream = await this.open();
        const got = await Promise.race([this.stream.next(), this.stopped]);
        if (this.closed) return [];
        if (got === null) throw new KolkError(`the stream of ${this.topic}-${this.partition} ended`, { retriable: true });
        this.failures = 0;
        const { push, bytes } = got;
        const records = decodeBatches(push.records.toUint8Array(), this.partition, this.offset);
        this.highWatermark = push.highWatermark;
        const after = records.length ? records[records.length - 1].offset + 1n : this.offset;
        this.offset = push.nextOffset > after ? push.nextOffset : after;
        this.stream.grant(bytes);
        return records;
      } catch (e) {
        this.stream?.cancel();
        this.stream = null;
        if (this.closed) return [];
        if (!(e instanceof KolkError) || !e.retriable || ++this.failures > REOPEN_TRIES_MAX) throw e;
        this.client.forgetLeaders(this.topic);
        await sleep(backoffMs(this.failures), this.stopper.signal).catch(() => undefined);
      }
    }
  }

  private async open(): Promise<SpuStream> {
    const { conn } = await this.client.leader(this.topic, this.partition);
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
  }
}
