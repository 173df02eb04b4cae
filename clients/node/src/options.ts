/**
 * Refusing misspelt option names. JavaScript callers get no type checking, so
 * `{ compresion: "gzip" }` would otherwise be silently ignored; every options object the
 * client takes is checked here against the names it knows, and an unknown key is an
 * InvalidRequestError naming the key and, when one is close, the name meant.
 */
import { InvalidRequestError } from "./errors.js";

/** Throws InvalidRequestError when `opts` has a key not in `known` (`what` names the call). */
export function checkOptions(what: string, opts: object | undefined, known: readonly string[]): void {
  if (opts === undefined || opts === null) return;
  if (typeof opts !== "object") {
    throw new InvalidRequestError(`${what}: options must be an object, got ${typeof opts}`);
  }
  for (const key of Object.keys(opts)) {
    if (known.includes(key)) continue;
    const meant = closest(key, known);
    const hint = meant === null ? `known options: ${known.join(", ")}` : `did you mean "${meant}"?`;
    throw new InvalidRequestError(`${what}: unknown option "${key}" (${hint})`);
  }
}

/** The known name nearest to `key` (case-insensitive edit distance <= 2, or one a prefix of the other). */
function closest(key: string, known: readonly string[]): string | null {
  const k = key.toLowerCase();
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const name of known) {
    const n = name.toLowerCase();
    const d = editDistance(k, n);
    const limit = Math.min(2, Math.floor(Math.max(k.length, n.length) / 3));
    if ((d <= limit || (k.length >= 4 && (n.startsWith(k) || k.startsWith(n)))) && d < bestDistance) {
      best = name;
      bestDistance = d;
    }
  }
  return best;
}

/** Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`. */
function editDistance(a: string, b: string): number {
  let before: number[] = [];
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, before[j - 2] + 1);
      current.push(d);
    }
    before = previous;
    previous = current;
  }
  return previous[b.length];
}
