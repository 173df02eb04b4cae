/** Watches node:zlib's InflateRaw streams (the consumers' gzip expansions) while `body` runs:
 * how many were alive at most at once, how many ended (expanded whole) and how many closed
 * without ending (stopped). `onData(n)` is called at each one's first chunk (n: its number). */
import zlib from "node:zlib";

export interface InflateWatch { alive: number; max: number; ended: number; stopped: number; created: number }

export async function watchInflates<T>(body: (w: InflateWatch) => Promise<T>, onData?: (n: number) => void): Promise<T> {
  const real = Object.getOwnPropertyDescriptor(zlib, "createInflateRaw")!;
  const w: InflateWatch = { alive: 0, max: 0, ended: 0, stopped: 0, created: 0 };
  Object.defineProperty(zlib, "createInflateRaw", {
    ...real,
    value: (o?: zlib.ZlibOptions) => {
      const engine = (real.value as typeof zlib.createInflateRaw)(o);
      const n = w.created++;
      let ended = false;
      w.max = Math.max(w.max, ++w.alive);
      engine.once("data", () => onData?.(n));
      engine.once("end", () => { ended = true; });
      engine.once("close", () => { w.alive--; if (ended) w.ended++; else w.stopped++; });
      return engine;
    },
  });
  try { return await body(w); } finally { Object.defineProperty(zlib, "createInflateRaw", real); }
}
