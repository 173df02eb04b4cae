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
  # notPartitionLeader, inUse, tooLarge, internal.
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

  registerSpu @6 (id :Int32, rack :Text, publicAddress :Text, privateAddress :Text) -> (result :Result);
  unregisterSpu @7 (id :Int32) -> (result :Result);
  heartbeat @8 (spuId :Int32) -> (result :Result);   # to the leader; others answer notLeader
  updateIsr @9 (partition :Text, isr :List(Int32), epoch :UInt32, leader :Int32) -> (result :Result);

  clusterStatus @10 () -> (result :Result, statusJson :Text);
  watch @11 (fromVersion :UInt64, watcher :Watcher) -> (result :Result, handle :WatchHandle);
}
