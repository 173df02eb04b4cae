/**
 * Where a partition's records are, and the one wording of "that offset is not there" (mirrors
 * core/protocol/offset_range.py, whose words the SPU and Python's consumer use). A partition
 * holds offsets [logStart, logEnd): retention deletes from the start, producers append at the
 * end; a reader may start anywhere in [logStart, logEnd] (at the end it waits). Pure.
 */
import { OffsetOutOfRangeError } from "./errors.js";

/** Whether a reader may start at `offset`: the log end included (it waits there). */
export function readable(offset: bigint, logStart: bigint, logEnd: bigint): boolean {
  return logStart <= offset && offset <= logEnd;
}

function available(logStart: bigint, logEnd: bigint): string {
  return logEnd > logStart ? `records ${logStart}-${logEnd - 1n} are available` : "no records are available";
}

/** One line naming the partition, the offset asked and the range it holds now. */
export function outOfRangeMessage(partition: string, offset: bigint, logStart: bigint, logEnd: bigint): string {
  if (offset < logStart) {
    return `offset ${offset} of ${partition} is below the log start ${logStart} (${available(logStart, logEnd)}; ` +
      "older ones were deleted by retention)";
  }
  return `offset ${offset} is past the end of ${partition} (${available(logStart, logEnd)}; the next record written ` +
    `gets offset ${logEnd})`;
}

/** The error for a reader at `offset` (not readable), carrying the numbers. */
export function outOfRange(partition: string, offset: bigint, logStart: bigint, logEnd: bigint): OffsetOutOfRangeError {
  const e = new OffsetOutOfRangeError(outOfRangeMessage(partition, offset, logStart, logEnd));
  e.offset = offset; e.logStartOffset = logStart; e.logEndOffset = logEnd;
  return e;
}

/** What a partition stream does when the SPU refused `offset` as out of range and the
 * partition's range is now [logStart, logEnd] (Python's after_out_of_range): "reopen" (it is
 * in range after all: the leader changed), "restart" at the log start (below it, and the start
 * named no offset and nothing was handed out yet), or "raise". */
export function afterOutOfRange(offset: bigint, logStart: bigint, logEnd: bigint, mayRestart: boolean): "reopen" | "restart" | "raise" {
  if (readable(offset, logStart, logEnd)) return "reopen";
  if (offset < logStart && mayRestart) return "restart";
  return "raise";
}
