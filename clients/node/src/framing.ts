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
      const head = this.peek(FRAME_HEADER_BYTES);
      const length = head.readUInt32LE(0);
      const kind = head.readUInt8(8);
      if (kind < Kind.REQUEST || kind > Kind.CREDIT) throw new FramingError(`unknown frame kind ${kind}`);
      if (head.readUInt8(9) !== 0) throw new FramingError(`frame flags ${head.readUInt8(9)}; expected 0`);
      if (length > this.bodyBytesMax) {
        throw new FramingError(`frame body of ${length} bytes announced; the limit is ${this.bodyBytesMax}`);
      }
      if (this.size < FRAME_HEADER_BYTES + length) break;
      const whole = this.take(FRAME_HEADER_BYTES + length);
      frames.push({
        kind, id: head.readUInt32LE(4), credit: head.readUInt32LE(12),
        body: new Uint8Array(whole.buffer, whole.byteOffset + FRAME_HEADER_BYTES, length),
      });
    }
    return frames;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0];
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift(); else this.chunks[0] = first.subarray(n);
    this.size -= n;
    return out;
  }
}
