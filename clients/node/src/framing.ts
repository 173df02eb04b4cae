/**
 * Kolk's frame header (docs/protocol.md "Frames"): 16 bytes, little-endian — body length u32,
 * request id u32, kind u8, flags u8 (0), reserved u16 (0), credit u32 — then the body. Pure
 * functions and a bounded incremental decoder; no I/O.
 */
import { FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES } from "./limits.js";

export const Kind = { REQUEST: 1, RESPONSE: 2, PUSH: 3, END: 4, CANCEL: 5, CREDIT: 6 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];

export interface Frame { kind: number; id: number; credit: number; body: Uint8Array }

export class FramingError extends Error {
  override name = "FramingError";
}

export function encodeFrame(kind: Kind, id: number, body: Uint8Array = new Uint8Array(0), credit = 0): Buffer {
  if (body.length > FRAME_BODY_BYTES_MAX) {
    throw new FramingError(`frame body of ${body.length} bytes is over the limit of ${FRAME_BODY_BYTES_MAX}`);
  }
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  out.writeUInt32LE(body.length, 0);
  out.writeUInt32LE(id >>> 0, 4);
  out.writeUInt8(kind, 8);
  out.writeUInt8(0, 9);
  out.writeUInt16LE(0, 10);
  out.writeUInt32LE(credit >>> 0, 12);
  out.set(body, FRAME_HEADER_BYTES);
  return out;
}

/** Incremental decoder: feed() bytes as they arrive, get whole frames back. It never holds
 * more than one frame's header and body (at most FRAME_BODY_BYTES_MAX) plus what was fed;
 * a frame that announces a larger body, an unknown kind or non-zero flags is a FramingError. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly bodyBytesMax = FRAME_BODY_BYTES_MAX) {}

  get buffered(): number { return this.size; }

  feed(data: Uint8Array): Frame[] {
    if (data.length > 0) {
      this.chunks.push(Buffer.from(data.buffer, data.byteOffset, data.length));
      this.size += data.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.size < FRAME_HEADER_BYTES) break;
      const head = this.peek();
      const length = head.readUInt32LE(0);
      const kind = head.readUInt8(8);
      if (kind < Kind.REQUEST || kind > Kind.CREDIT) throw new FramingError(`unknown frame kind ${kind}`);
      if (head.readUInt8(9) !== 0) throw new FramingError(`frame flags ${head.readUInt8(9)}; expected 0`);
      if (length > this.bodyBytesMax) {
        throw new FramingError(`frame body of ${length} bytes announced; the limit is ${this.bodyBytesMax}`);
      }
      if (this.size < FRAME_HEADER_BYTES + length) break;
      const id = head.readUInt32LE(4);
      const credit = head.readUInt32LE(12);
      const first = this.chunks[0];
      let body: Uint8Array;
      if (first.length >= FRAME_HEADER_BYTES + length) {
        // The whole frame in one chunk: the body is a view of it.
        body = new Uint8Array(first.buffer, first.byteOffset + FRAME_HEADER_BYTES, length);
        this.drop(FRAME_HEADER_BYTES + length, null);
      } else {
        // A frame over several chunks: its body is copied once, into an ArrayBuffer of its own
        // (so a reader can take the ArrayBuffer whole; readMessage does: capnp-es copies a view).
        this.drop(FRAME_HEADER_BYTES, null);
        body = new Uint8Array(Buffer.allocUnsafeSlow(length).buffer, 0, length);
        this.drop(length, body);
      }
      frames.push({ kind, id, credit, body });
    }
    return frames;
  }

  /** The next frame header's 16 bytes, without taking them: a view of the first chunk, or a
   * copy when the header straddles chunks. */
  private peek(): Buffer {
    const first = this.chunks[0];
    if (first.length >= FRAME_HEADER_BYTES) return first.subarray(0, FRAME_HEADER_BYTES);
    const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
    let at = 0;
    for (let i = 0; at < FRAME_HEADER_BYTES; i++) {
      const c = this.chunks[i];
      const n = Math.min(c.length, FRAME_HEADER_BYTES - at);
      head.set(c.subarray(0, n), at);
      at += n;
    }
    return head;
  }

  /** Takes `n` buffered bytes off the front, copying them into `into` when one is given. */
  private drop(n: number, into: Uint8Array | null): void {
    this.size -= n;
    let at = 0;
    while (n > 0) {
      const c = this.chunks[0];
      if (c.length <= n) {
        into?.set(c, at);
        this.chunks.shift();
        at += c.length;
        n -= c.length;
      } else {
        into?.set(c.subarray(0, n), at);
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }
}
