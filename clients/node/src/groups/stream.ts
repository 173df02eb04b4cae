// One assigned partition read through an SPU stream: the shared reader of src/partition-stream.ts
// with the group's policy. A retriable failure opens the stream again at the position after a
// jittered back-off, up to REOPEN_TRIES_MAX times in a row; once closed, next() gives [].

import type { KolkClient } from "../client.js";
import { PartitionStream, type ReadPolicy } from "../partition-stream.js";
import { backoffMs } from "./core.js";

export { IDLE_PROBE_MS, PROBE_TIMEOUT_MS } from "../partition-stream.js";
export const WINDOW_BYTES_DEFAULT = 4 << 20;
export const REOPEN_TRIES_MAX = 20; // retriable failures in a row before the error is raised

const GROUP_POLICY: ReadPolicy = {
  triesMax: REOPEN_TRIES_MAX,
  backoffMs,
  final: () => false,
  dropConnection: false,
  idleResets: false,
  closed: () => [],
};

export class PartitionReader extends PartitionStream {
  constructor(client: KolkClient, topic: string, partition: number, offset: bigint, windowBytes: number, isolation: 0 | 1) {
    super(client, topic, partition, offset, windowBytes, isolation, GROUP_POLICY);
  }
}
