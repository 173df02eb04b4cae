@0xd9385060948a907c;
# Kolk's wire protocol: the public contract between clients, SCs and SPUs (DESIGN.md §6).
# Any language with Cap'n Proto can be a client. docs/protocol.md explains each call.
#
# Conventions:
# - Every call answers with a `result :Result`. When `result.ok` is false the other answer
#   fields are unset and `result.error` says what went wrong (a code from ErrorCode's list,
#   a message naming the problem, and for `notLeader` the leader's admin address).
# - Metadata objects travel as `Object`: kind, name, spec and status as JSON text (their
#   fields per kind are in docs/metadata.md), and the version of the last change.

struct Error {
  code @0 :Text;
  # One of: notLeader, noLeader, timeout, invalidCommand, unknownCommand, invalidArgument,
  # alreadyExists, notFound, replicationFactorTooHigh, versionConflict, staleEpoch,
  # notPartitionLeader, inUse, tooLarge, internal; from SPUs also invalidBatch,
  # offsetOutOfRange, corruptBatch, storageFull, storage, notEnoughReplicas, producerFenced,
  # outOfOrderSequence, duplicateSequence, smartModule, notEnoughReplicasAfterAppend (retriable,
  # outcome unknown), offline (no leader: the message names the missing replicas; retriable);
  # denied (the policy does not allow it).
  message @1 :Text;
  leader @2 :Text;      # admin address of the SC leader, when known
  retriable @3 :Bool;   # true when the same request may succeed later unchanged
}

struct Result {
  ok @0 :Bool;
  error @1 :Error;
}

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

struct Object {
  kind @0 :Text;        # topic, partition, spu, smartmodule, policy
  name @1 :Text;
  specJson @2 :Text;
  statusJson @3 :Text;
  version @4 :UInt64;
}

struct Event {
  version @0 :UInt64;
  kind @1 :Text;
  name @2 :Text;
  deleted @3 :Bool;
  object @4 :Object;    # unset when deleted
}

interface Watcher {
  # The SC pushes changes; it waits for each push to return before the next, so a slow
  # watcher slows only its own stream. A watcher that falls too far behind gets fullSync.
  push @0 (fullSync :Bool, version :UInt64, events :List(Event)) -> ();
}

interface WatchHandle {
  cancel @0 () -> ();
}

interface ScAdmin {
  createTopic @0 (name :Text, partitions :UInt32, replicationFactor :UInt16,
                  config :List(KeyValue)) -> (result :Result, topic :Object);
  deleteTopic @1 (name :Text) -> (result :Result);

  # Reads are linearizable unless `stale` is true (then this SC answers from its own state).
  listObjects @2 (kind :Text, stale :Bool) -> (result :Result, objects :List(Object), version :UInt64);
  getObject @3 (kind :Text, name :Text, stale :Bool) -> (result :Result, found :Bool, object :Object);

  # SmartModule and Policy objects are stored as opaque JSON specs for later issues.
  # expectedVersion: -1 = must not exist; otherwise compare-and-set. hasExpected=false: no check.
  putObject @4 (kind :Text, name :Text, specJson :Text, hasExpected :Bool, expectedVersion :Int64)
            -> (result :Result, version :UInt64);
  deleteObject @5 (kind :Text, name :Text, hasExpected :Bool, expectedVersion :Int64) -> (result :Result);

  # storageId: the random id of the SPU's data directory (DESIGN.md §5): a different one than
  # registered before means every replica on it is new and empty. lost: replicas it found
  # short of their high watermark on start. version: the metadata version holding the
  # registration; the SPU acts on metadata only from that version on.
  registerSpu @6 (id :Int32, rack :Text, publicAddress :Text, privateAddress :Text, storageId :Text,
                  lost :List(LostReplica)) -> (result :Result, version :UInt64);
  unregisterSpu @7 (id :Int32) -> (result :Result);
  heartbeat @8 (spuId :Int32) -> (result :Result);   # to the leader; others answer notLeader
  # basedOn: the in-sync set the leader computed the change from; refused (versionConflict)
  # if the set has changed since. Empty: no check.
  updateIsr @9 (partition :Text, isr :List(Int32), epoch :UInt32, leader :Int32, basedOn :List(Int32))
            -> (result :Result);

  clusterStatus @10 () -> (result :Result, statusJson :Text);
  watch @11 (fromVersion :UInt64, watcher :Watcher) -> (result :Result, handle :WatchHandle);

  # Idempotent producers: a block of `count` (1-1000) fresh producer ids, first one `firstId`.
  allocateProducerIds @12 (count :UInt32) -> (result :Result, firstId :Int64, count :UInt32);

  # Node-only: SPU `spuId`'s replica of `partition` lost data (a follower found the leader's
  # log short of its own high watermark), or its disk failed (the SPU itself reports, with
  # keepLastInSync: a disk fault never empties the in-sync set). It leaves the in-sync set and
  # leadership at a new epoch. epoch >= 0: only if the partition is still at that epoch.
  reportReplicaLoss @13 (partition :Text, spuId :Int32, reason :Text, epoch :Int64, keepLastInSync :Bool)
                    -> (result :Result);

  # Operator: elect a leader now. Clean (unclean = false): a live in-sync replica, `leader`
  # if it is one (-1: the first). Unclean: `leader` (-1: the live replica with the longest
  # log is not known here, so it must be named) leads alone, and what only the in-sync
  # replicas had is given up. Audited.
  electLeader @14 (partition :Text, leader :Int32, unclean :Bool) -> (result :Result, leader :Int32, epoch :UInt32);
}

struct LostReplica {
  partition @0 :Text;
  reason @1 :Text;
}

# ---------------------------------------------------------------- the SPU's data plane
#
# Records travel as record-batch bytes in `Data` (docs/format.md), never one struct per
# record: the SPU does not decode records on produce, fetch or stream.

enum Acks {
  none @0;     # answered once the leader has the batches in its page cache (not durable)
  leader @1;   # answered once the leader has fsynced them
  all @2;      # answered once every in-sync replica has them (the high watermark passed them)
}

enum Isolation {
  committed @0;    # up to the high watermark (the default for consumers)
  uncommitted @1;  # up to the log end offset
}

struct SmartModuleInvocation {
  # One stage of a SmartModule chain (docs/smartmodule-abi.md): a module stored in the
  # cluster as NAME@VERSION (`name` may omit @VERSION: the latest version), its `init`
  # parameters, and for an aggregate resuming a stream the accumulator to start from.
  name @0 :Text;
  params @1 :List(KeyValue);
  accumulator @2 :Data;
  hasAccumulator @3 :Bool;
}

interface StreamConsumer {
  # The SPU pushes whole batches while the consumer's window has room; each push uses up
  # `len(records)` bytes of window. It never buffers more than the window.
  # `accumulators`: with a SmartModule chain, each stage's aggregate accumulator after this
  # push (empty for other kinds), so a consumer that reconnects can resume the aggregate.
  push @0 (records :Data, highWatermark :Int64, nextOffset :Int64, accumulators :List(Data)) -> ();
  # The stream ended on an error (a SmartModule failed); no push follows.
  fail @1 (error :Error) -> ();
}

interface StreamControl {
  grant @0 (bytes :UInt32) -> ();   # more window
  close @1 () -> ();
}

interface Spu {
  produce @0 (topic :Text, partition :UInt32, acks :Acks, records :Data, timeoutMs :UInt32,
              smartmodules :List(SmartModuleInvocation))
          -> (result :Result, baseOffset :Int64, lastOffset :Int64, duplicate :Bool);
  # duplicate: an idempotent batch (producer id >= 0) this leader had already appended; the
  # offsets are those of the first append and nothing was written again.
  fetch @1 (topic :Text, partition :UInt32, offset :Int64, maxBytes :UInt32, isolation :Isolation)
        -> (result :Result, records :Data, highWatermark :Int64, logStartOffset :Int64,
            logEndOffset :Int64, nextOffset :Int64);
  stream @2 (topic :Text, partition :UInt32, offset :Int64, isolation :Isolation,
             windowBytes :UInt32, consumer :StreamConsumer, smartmodules :List(SmartModuleInvocation))
         -> (result :Result, control :StreamControl);
  offsets @3 (topic :Text, partition :UInt32)
          -> (result :Result, logStartOffset :Int64, highWatermark :Int64, logEndOffset :Int64);
  offsetForTimestamp @4 (topic :Text, partition :UInt32, timestamp :Int64)
                     -> (result :Result, found :Bool, offset :Int64);

  # ---- replication, SPU to SPU (docs/replication.md). `partition` is the partition name
  # (`<topic>-<n>`); `epoch` is the partition epoch the caller knows from the SC.

  # A follower pulls from `offset`, its log end offset; everything below `offset` is fsynced
  # on the follower, so the call also reports its progress. The leader waits up to
  # `maxWaitMs` when it has nothing past `offset`.
  replicaFetch @5 (partition :Text, replicaId :Int32, epoch :UInt32, offset :Int64, maxBytes :UInt32,
                   maxWaitMs :UInt32)
               -> (result :Result, records :Data, highWatermark :Int64, logStartOffset :Int64,
                   logEndOffset :Int64);
  # Where the leader's log has the largest leader epoch <= `lastEpoch` end (KIP-279): a
  # follower truncates what it has beyond that before it fetches. epoch -1: none.
  epochEndOffset @6 (partition :Text, replicaId :Int32, epoch :UInt32, lastEpoch :Int32)
                 -> (result :Result, leaderEpoch :Int32, endOffset :Int64);
  # For `kolk partition list`: per partition this SPU leads, its offsets and each replica's
  # progress, as JSON (docs/protocol.md).
  partitionStatus @7 (partitions :List(Text)) -> (result :Result, statusJson :Text);
  # Node-only: which SPU answers here. instanceId is random per process, so an SPU that dials
  # its own private address at start can tell itself from another SPU (even one with its id).
  identify @8 () -> (result :Result, spuId :Int32, instanceId :Text);
}
