/**
 * What a producer's sendAll() call queued (Python's SentRecords), and a record's metadata: the
 * call's records run through one or more batches; each batch tells the call its base offset
 * once, and metadata() hands out every record's offset in order.
 */
import type { KolkError } from "./errors.js";

export interface RecordMetadata { topic: string; partition: number; offset: bigint }

/**
 * What sendAll() queued (Python's SentRecords): `metadata()` resolves to each record's
 * partition and offset, in order, once every batch holding them was answered, or rejects with
 * the error of the first of them that failed.
 */
export class SentRecords {
  partition = -1;
  length = 0;
  private readonly parts: Array<{ first: number; n: number; base: bigint | null; error: KolkError | null }> = [];
  private unsettled = 0;
  private waiters: Array<{ resolve: (m: RecordMetadata[]) => void; reject: (e: Error) => void }> = [];

  constructor(readonly topic: string) {}

  metadata(): Promise<RecordMetadata[]> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      if (this.unsettled === 0) this.answer();
    });
  }

  /** @internal A new run of this call's records in one batch, from its record `first`; `add` counts one more in it. */
  open(first: number): number { this.unsettled++; return this.parts.push({ first, n: 0, base: null, error: null }) - 1; }
  /** @internal */ add(i: number): void { this.parts[i].n++; this.length++; }
  /** @internal The batch of run `i` was answered (its base offset) or failed. */
  settle(i: number, base: bigint | null, error: KolkError | null): void {
    this.parts[i].base = base; this.parts[i].error = error;
    if (--this.unsettled === 0 && this.waiters.length > 0) this.answer();
  }

  private answer(): void {
    const waiters = this.waiters.splice(0);
    const failed = this.parts.find((p) => p.error !== null);
    if (failed) { for (const w of waiters) w.reject(failed.error!); return; }
    const out: RecordMetadata[] = [];
    for (const p of this.parts) for (let i = 0; i < p.n; i++) out.push({ topic: this.topic, partition: this.partition, offset: p.base! + BigInt(p.first + i) });
    for (const w of waiters) w.resolve(out);
  }
}
