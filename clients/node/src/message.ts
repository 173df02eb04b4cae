/**
 * Reading a message the server sent, as core/protocol/messages.py reads one: the segment table
 * is checked before capnp-es sees the body (capnp-es sizes an array by the announced segment
 * count before it checks it: 16 bytes announcing 2^31 segments cost it seconds and a GiB), and
 * the reader's traversal limit is proportional to the body (8 words per body word, at least
 * 128 Ki words, as the Python reader), not capnp-es's fixed 8 Mi pointers: a 100-byte body with
 * a list announcing 16 M empty structs must not cost seconds of CPU. Whatever does not read
 * is a MalformedMessageError (a KolkError, code `malformed`) of one line.
 */
import * as $ from "capnp-es";
import { KolkError } from "./errors.js";
import { TRAVERSAL_WORDS_MIN, TRAVERSAL_WORDS_PER_BODY_WORD } from "./limits.js";

/** As core/protocol/messages.py. */
export const SEGMENTS_MAX = 512;

/** A message from the server that is not a well-formed message of the expected type. */
export class MalformedMessageError extends KolkError {
  constructor(message: string) {
    super(message, { code: "malformed", retriable: false });
  }
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split("\n")[0].slice(0, 300);
}

/** Throws MalformedMessageError unless `body` is a segment table and exactly its segments;
 * returns each segment's first byte and its size in words. */
export function checkSegments(body: Uint8Array, what: string): Array<{ at: number; words: number }> {
  const n = body.length;
  if (n < 8) throw new MalformedMessageError(`${what} is not a well-formed message: it has ${n} bytes, a message needs at least 8`);
  const v = new DataView(body.buffer, body.byteOffset, n);
  const count = v.getUint32(0, true) + 1;
  if (count > SEGMENTS_MAX) {
    throw new MalformedMessageError(`${what} is not a well-formed message: it announces ${count} segments, more than ${SEGMENTS_MAX}`);
  }
  let table = 4 + 4 * count;
  table += table % 8;
  if (n < table) throw new MalformedMessageError(`${what} is not a well-formed message: its segment table is cut short`);
  let pos = table;
  const segments: Array<{ at: number; words: number }> = [];
  for (let i = 0; i < count; i++) {
    const words = v.getUint32(4 + 4 * i, true);
    segments.push({ at: pos, words });
    pos += 8 * words;
    if (pos > n) {
      throw new MalformedMessageError(`${what} is not a well-formed message: a segment of ${words} words runs past the end of its ${n} bytes`);
    }
  }
  if (pos !== n) throw new MalformedMessageError(`${what} is not a well-formed message: ${n - pos} bytes follow its last segment`);
  return segments;
}

const POINTER_DEPTH_MAX = 64;
const BITS = [0, 1, 8, 16, 32, 64];

/**
 * Walks every pointer reachable from the root before capnp-es reads anything, charging each
 * struct its words and each list max(its elements, its words), and throws MalformedMessageError
 * when the total passes `limitWords` or a pointer leaves its segment. capnp-es charges a list
 * one pointer however long it is, and *copies* a list of structs smaller than the schema's
 * into new, schema-sized elements when it is read: 16 M empty structs announced in 130 bytes
 * make it allocate 640 MB. Charging elements bounds what any read can allocate by the body's
 * size (C++ Cap'n Proto charges an empty struct's element one word for the same reason).
 */
export function checkPointers(body: Uint8Array, segments: Array<{ at: number; words: number }>, limitWords: number, what: string): void {
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  let cost = 0;
  const bad = (why: string) => new MalformedMessageError(`${what} is not a well-formed message: ${why}`);
  const charge = (words: number) => {
    cost += words;
    if (cost > limitWords) throw bad(`reading it would traverse more than ${limitWords} words (the limit for its ${body.length} bytes)`);
  };
  const inSegment = (seg: number, word: number, words: number) => {
    if (seg >= segments.length || word < 0 || word + words > segments[seg].words) throw bad("a pointer points outside its segment");
  };
  const lo = (seg: number, word: number) => v.getUint32(segments[seg].at + 8 * word, true);
  const hi = (seg: number, word: number) => v.getUint32(segments[seg].at + 8 * word + 4, true);

  const content = (tagLo: number, tagHi: number, seg: number, target: number, depth: number): void => {
    if (depth > POINTER_DEPTH_MAX) throw bad(`pointers nest more than ${POINTER_DEPTH_MAX} deep`);
    const type = tagLo & 3;
    if (type === 0) {
      const dw = tagHi & 0xffff, pw = tagHi >>> 16;
      inSegment(seg, target, dw + pw);
      charge(Math.max(1, dw + pw));
      for (let i = 0; i < pw; i++) pointer(seg, target + dw + i, depth + 1);
    } else if (type === 1) {
      const size = tagHi & 7, count = tagHi >>> 3;
      if (size === 7) {
        inSegment(seg, target, 1 + count);
        const elemLo = lo(seg, target), elemHi = hi(seg, target);
        if ((elemLo & 3) !== 0) throw bad("a list of structs whose tag is not a struct");
        const elements = elemLo >>> 2, dw = elemHi & 0xffff, pw = elemHi >>> 16;
        if (elements * (dw + pw) > count) throw bad(`a list of ${elements} structs of ${dw + pw} words each in ${count} words`);
        charge(1 + Math.max(elements, count));
        for (let e = 0; e < elements && pw > 0; e++) {
          for (let j = 0; j < pw; j++) pointer(seg, target + 1 + e * (dw + pw) + dw + j, depth + 1);
        }
      } else if (size === 6) {
        inSegment(seg, target, count);
        charge(Math.max(1, count));
        for (let i = 0; i < count; i++) pointer(seg, target + i, depth + 1);
      } else {
        inSegment(seg, target, Math.ceil((count * BITS[size]) / 64));
        charge(Math.max(1, count));
      }
    } else {
      charge(1); // a capability: nothing to follow
    }
  };

  const pointer = (seg: number, word: number, depth: number): void => {
    inSegment(seg, word, 1);
    const l = lo(seg, word), h = hi(seg, word);
    if (l === 0 && h === 0) return;
    const type = l & 3;
    if (type === 2) {
      const padSeg = h, pad = l >>> 3, double = (l >>> 2) & 1;
      if (!double) {
        inSegment(padSeg, pad, 1);
        if ((lo(padSeg, pad) & 3) === 2) throw bad("a far pointer lands on another far pointer");
        charge(1);
        pointer(padSeg, pad, depth + 1);
        return;
      }
      inSegment(padSeg, pad, 2);
      const farLo = lo(padSeg, pad), farHi = hi(padSeg, pad);
      if ((farLo & 3) !== 2 || ((farLo >>> 2) & 1) !== 0) throw bad("a double-far landing pad that is not a far pointer");
      charge(1);
      content(lo(padSeg, pad + 1), hi(padSeg, pad + 1), farHi, farLo >>> 3, depth + 1);
      return;
    }
    if (type === 3) { charge(1); return; }
    content(l, h, seg, word + 1 + (l >> 2), depth);
  };

  if (segments.length === 0 || segments[0].words === 0) throw bad("it has no root pointer");
  pointer(0, 0, 0);
}

/** The root `root` of `body`, with a traversal limit proportional to its size. */
export function readMessage<T extends $.Struct>(body: Uint8Array, root: $.StructCtor<T>, what: string): T {
  const segments = checkSegments(body, what);
  const words = Math.max(TRAVERSAL_WORDS_MIN, Math.floor(body.length / 8) * TRAVERSAL_WORDS_PER_BODY_WORD);
  checkPointers(body, segments, words, what);
  try {
    // A body that is its whole ArrayBuffer (framing.ts gives one to a frame that came over
    // several reads) is passed as that ArrayBuffer: capnp-es would copy a view first, and it
    // copies each segment out of what it is given anyway.
    const whole = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer;
    const msg = new $.Message(whole ? body.buffer as ArrayBuffer : body, false);
    // capnp-es counts 8 per pointer it follows, from _capnp.traversalLimit down to 0.
    (msg as unknown as { _capnp: { traversalLimit: number } })._capnp.traversalLimit = words * 8;
    return msg.getRoot(root);
  } catch (e) {
    throw new MalformedMessageError(`${what} is not a well-formed message: ${firstLine(e)}`);
  }
}

/** `read()`, with what capnp-es throws on a message it cannot read (an out-of-bounds pointer,
 * the traversal limit: its errors start "CAPNP-TS") as a MalformedMessageError. */
export function reading<T>(what: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (e instanceof Error && !(e instanceof KolkError) && e.message.startsWith("CAPNP-TS")) {
      throw new MalformedMessageError(`${what} is not a well-formed message: ${firstLine(e)}`);
    }
    throw e;
  }
}
