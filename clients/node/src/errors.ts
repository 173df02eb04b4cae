/**
 * The errors a Kolk client sees: one root, KolkError, and one subclass per class of Python's
 * core/protocol/errors.py, with the same names and the same hierarchy. Which class a wire code
 * maps to, and each class's defaults, come from gen/codes.ts, generated from the Python
 * modules (`python -m kolk.protocol.codes_export`); test/errors.test.ts checks that the classes
 * here are exactly the generated ones.
 */
import { CLASSES, CLASS_BY_CODE, OUTCOME_UNKNOWN, RETRIABLE } from "./gen/codes.js";

export { CODES, RETRIABLE, OUTCOME_UNKNOWN } from "./gen/codes.js";
export type { ErrorCode } from "./gen/codes.js";

export interface KolkErrorOptions {
  code?: string;
  leader?: string | null;
  retriable?: boolean;
  outcomeUnknown?: boolean;
  cause?: unknown;
}

/** Root of every error raised by the Kolk client. */
export class KolkError extends Error {
  /** The wire code (one of CODES, or a code this version does not know). */
  code: string;
  /** Where to go instead (NotLeaderError, NotCoordinatorError), when the server said. */
  leader: string | null;
  /** True when a retry can help. */
  retriable: boolean;
  /** True when a write may have happened although the call failed: retry it only with the
   * idempotent producer, never blindly. */
  outcomeUnknown: boolean;

  constructor(message: string, opts: KolkErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    // By class identity, not new.target.name, so that a minifier renaming classes changes nothing.
    const name = NAME_OF.get(new.target) ?? new.target.name;
    const info = CLASSES[name] ?? CLASSES.KolkError;
    this.name = name;
    this.code = opts.code ?? info.code;
    this.leader = opts.leader ?? null;
    this.retriable = opts.retriable ?? info.retriable;
    this.outcomeUnknown = opts.outcomeUnknown ?? info.outcomeUnknown;
  }
}

export class ClusterUnavailableError extends KolkError {}
export class NotLeaderError extends KolkError {}
export class RequestTimeoutError extends KolkError {}
export class PartitionOfflineError extends KolkError {}
export class InvalidRequestError extends KolkError {}
export class ReplicationFactorTooHighError extends InvalidRequestError {}

/** A record batch that fails its checks: `reason` names which (see records.ts). */
export class InvalidBatchError extends InvalidRequestError {
  reason: string | null = null;
}

/** An offset outside what the partition holds; the consumer fills where its records are now. */
export class OffsetOutOfRangeError extends InvalidRequestError {
  offset: bigint | null = null;
  logStartOffset: bigint | null = null;
  logEndOffset: bigint | null = null;
}

/** A batch that fails its CRC (on the server, or in the client's decoder). */
export class CorruptDataError extends KolkError {
  reason: string | null = null;
}

export class StorageFullError extends KolkError {}
export class NotEnoughReplicasError extends KolkError {}
export class NotEnoughReplicasAfterAppendError extends KolkError {}
export class AlreadyExistsError extends KolkError {}
export class NotFoundError extends KolkError {}
export class VersionConflictError extends KolkError {}
export class InUseError extends KolkError {}
export class StaleEpochError extends KolkError {}
export class ProducerFencedError extends KolkError {}
export class OutOfOrderSequenceError extends KolkError {}
export class DuplicateSequenceError extends KolkError {}
export class TooManyStreamsError extends KolkError {}
export class TooManyConnectionsError extends TooManyStreamsError {}
export class SmartModuleFailedError extends KolkError {}
export class OverloadedError extends KolkError {}
export class PermissionDeniedError extends KolkError {}
export class NotCoordinatorError extends KolkError {}
export class CoordinatorLoadingError extends KolkError {}
export class StaleMemberError extends KolkError {}
export class FencedInstanceError extends KolkError {}

type ErrorClass = new (message: string, opts?: KolkErrorOptions) => KolkError;

/** Every class above by name (the names of gen/codes.ts's CLASSES). */
export const ERROR_CLASSES: Readonly<Record<string, ErrorClass>> = {
  KolkError, ClusterUnavailableError, NotLeaderError, RequestTimeoutError, PartitionOfflineError,
  InvalidRequestError, ReplicationFactorTooHighError, InvalidBatchError, OffsetOutOfRangeError,
  CorruptDataError, StorageFullError, NotEnoughReplicasError, NotEnoughReplicasAfterAppendError,
  AlreadyExistsError, NotFoundError, VersionConflictError, InUseError, StaleEpochError,
  ProducerFencedError, OutOfOrderSequenceError, DuplicateSequenceError, TooManyStreamsError,
  TooManyConnectionsError, SmartModuleFailedError, OverloadedError, PermissionDeniedError,
  NotCoordinatorError, CoordinatorLoadingError, StaleMemberError, FencedInstanceError,
};

const NAME_OF = new Map<Function, string>(Object.entries(ERROR_CLASSES).map(([name, cls]) => [cls, name]));

export interface WireError {
  code: string;
  message: string;
  leader?: string | null;
  retriable?: boolean;
  outcomeUnknown?: boolean;
}

/**
 * The error for a wire Error{code, message, leader, retriable, outcomeUnknown}: an instance of
 * the class Python's errors.py uses for the code, keeping the wire code. A code this version
 * does not know is a KolkError, retriable (or outcome-unknown) only if the server said so;
 * a known code is retriable when the server or the code's table says so.
 */
export function errorFromWire(wire: WireError): KolkError {
  const name = CLASS_BY_CODE[wire.code];
  const cls = (name !== undefined ? ERROR_CLASSES[name] : undefined) ?? KolkError;
  const known = name !== undefined;
  return new cls(wire.message, {
    code: wire.code,
    leader: wire.leader || null,
    retriable: Boolean(wire.retriable) || (known && RETRIABLE.has(wire.code)) || (known && CLASSES[name].retriable),
    outcomeUnknown: Boolean(wire.outcomeUnknown) || (known && OUTCOME_UNKNOWN.has(wire.code)) ||
      (known && CLASSES[name].outcomeUnknown),
  });
}

/** The error an aborted call rejects with: `err.name === "AbortError"`, as Node's own. */
export function abortError(message = "The operation was aborted"): Error {
  return new DOMException(message, "AbortError");
}
