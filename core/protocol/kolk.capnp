@0xd46ac3aa7a37305a;
# Kolk's wire protocol: the public contract between clients, SCs and SPUs (DESIGN.md §6).
#
# Cap'n Proto *messages* (no Cap'n Proto RPC) travel in frames of Kolk's own framed,
# multiplexed transport; docs/protocol.md describes the frame header, the frame kinds, flow
# control and cancellation, and is enough to write a client in any language with a Cap'n Proto
# serializer. A frame body is one Cap'n Proto message in the standard (unpacked) serialization
# with its segment table.
#
# - A client sends a REQUEST frame whose body is an `ScRequest` (to an SC) or an `SpuRequest`
#   (to an SPU): a union with one request struct per call.
# - The server answers with a RESPONSE frame carrying the same request id and an `ScResponse`
#   or `SpuResponse` whose union member has the name of the request's. `rejected` instead
#   means the request was refused before any handler saw it: too large, malformed, a list or
#   text over its limit (docs/protocol.md lists the limits), unknown call, or too many open
#   streams on the connection.
# - Streams (SPU `stream`, SC `watch`): after a successful response the server sends PUSH
#   frames (a `Push`) as the client's credit allows, and an END frame (a `StreamEnd`) when the
#   stream stops on its own. The client adds credit with CREDIT frames and stops a stream, or
#   abandons a request, with a CANCEL frame.
# - Every response struct has `result :Result`. When `result.ok` is false the other fields are
#   unset and `result.error` says what went wrong.

struct Error {
  code @0 :Text;
  # One of the codes in docs/protocol.md ("Error codes"): notLeader, noLeader, timeout,
  # invalidCommand, unknownCommand, invalidArgument, alreadyExists, notFound,
  # replicationFactorTooHigh, versionConflict, staleEpoch, notPartitionLeader, inUse, tooLarge,
  # internal, invalidBatch, offsetOutOfRange, corruptBatch, storageFull, storage,
  # notEnoughReplicas, producerFenced, outOfOrderSequence, duplicateSequence, smartModule,
  # notEnoughReplicasAfterAppend, offline, denied, limitExceeded, malformed, unknownCall.
  # A client that meets a code it does not know treats it as not retriable.
  message @1 :Text;
  leader @2 :Text;        # admin address of the SC leader, when known
  retriable @3 :Bool;     # true when the same request may succeed later unchanged
  outcomeUnknown @4 :Bool; # true when a write may have happened although it was not acknowledged
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

struct LostReplica {
  partition @0 :Text;
  reason @1 :Text;
}

# ---------------------------------------------------------------- the SC

struct CreateTopicRequest { name @0 :Text; partitions @1 :UInt32; replicationFactor @2 :UInt16;
                            config @3 :List(KeyValue); }
struct CreateTopicResponse { result @0 :Result; topic @1 :Object; }
struct DeleteTopicRequest { name @0 :Text; }
struct DeleteTopicResponse { result @0 :Result; }
# Change a topic's config (docs/metadata.md, "Topic config"): `set` adds or replaces keys,
# `delete` removes them (back to the cluster default); compare-and-set on the topic's version
# when `hasExpected`.
struct AlterTopicRequest { name @0 :Text; set @1 :List(KeyValue); delete @2 :List(Text);
                           hasExpected @3 :Bool; expectedVersion @4 :Int64; }
struct AlterTopicResponse { result @0 :Result; topic @1 :Object; }
# Grow a topic to `count` partitions (never shrinks).
struct AddPartitionsRequest { name @0 :Text; count @1 :UInt32; hasExpected @2 :Bool; expectedVersion @3 :Int64; }
struct AddPartitionsResponse { result @0 :Result; topic @1 :Object; }
# Erase one key's records from a compacted topic's partition (docs/lifecycle.md): the client
# has written the tombstone at `offset`; every replica removes the key's records at or below
# it. The key travels only as its sha256 (64 hex digits). Answers the `erasure` object.
struct EraseKeyRequest { topic @0 :Text; partition @1 :UInt32; keySha256 @2 :Text; offset @3 :Int64; }
struct EraseKeyResponse { result @0 :Result; erasure @1 :Object; }
# Node only, from SPU `spuId` itself: it no longer holds a record of the erasure's key in its
# replica; `found`: it held a record of the key other than the tombstone before. `note` (the
# partition's leader only): the erasure cannot be carried out as asked (the record at `offset`
# is not a tombstone of the key): it ends at once, with the note, and nothing is erased.
struct ErasureDoneRequest { name @0 :Text; spuId @1 :Int32; found @2 :Bool; note @3 :Text; }
struct ErasureDoneResponse { result @0 :Result; }

# Reads are linearizable unless `stale` is true (then this SC answers from its own state).
struct ListObjectsRequest { kind @0 :Text; stale @1 :Bool; }
struct ListObjectsResponse { result @0 :Result; objects @1 :List(Object); version @2 :UInt64; }
struct GetObjectRequest { kind @0 :Text; name @1 :Text; stale @2 :Bool; }
struct GetObjectResponse { result @0 :Result; found @1 :Bool; object @2 :Object; }

# expectedVersion: -1 = must not exist; otherwise compare-and-set. hasExpected=false: no check.
# allowLockout: store a policy/active under which the caller would lose admin on cluster
# (docs/policy.md "Lockout"); without it the SC refuses such a policy.
struct PutObjectRequest { kind @0 :Text; name @1 :Text; specJson @2 :Text; hasExpected @3 :Bool;
                          expectedVersion @4 :Int64; allowLockout @5 :Bool; }
struct PutObjectResponse { result @0 :Result; version @1 :UInt64; }
struct DeleteObjectRequest { kind @0 :Text; name @1 :Text; hasExpected @2 :Bool; expectedVersion @3 :Int64; }
struct DeleteObjectResponse { result @0 :Result; }

# storageId: the random id of the SPU's data directory (DESIGN.md §5): a different one than
# registered before means every replica on it is new and empty. lost: replicas it found short
# of their high watermark on start. version: the metadata version holding the registration;
# the SPU acts on metadata only from that version on.
struct RegisterSpuRequest { id @0 :Int32; rack @1 :Text; publicAddress @2 :Text; privateAddress @3 :Text;
                            storageId @4 :Text; lost @5 :List(LostReplica); }
struct RegisterSpuResponse { result @0 :Result; version @1 :UInt64; }
struct UnregisterSpuRequest { id @0 :Int32; }
struct UnregisterSpuResponse { result @0 :Result; }
# To the leader; others answer notLeader. leaving: the SPU is stopping (controlled shutdown,
# SIGTERM): the SC marks it not alive at once and moves every leadership it holds to another
# live in-sync replica (docs/operations.md "Stopping a node").
struct HeartbeatRequest { spuId @0 :Int32; leaving @1 :Bool; }
struct HeartbeatResponse { result @0 :Result; }

# basedOn: the in-sync set the leader computed the change from; refused (versionConflict) if
# the set has changed since. Empty: no check.
struct UpdateIsrRequest { partition @0 :Text; isr @1 :List(Int32); epoch @2 :UInt32; leader @3 :Int32;
                          basedOn @4 :List(Int32); }
struct UpdateIsrResponse { result @0 :Result; }

struct ClusterStatusRequest {}
struct ClusterStatusResponse { result @0 :Result; statusJson @1 :Text; }

# A stream: after the response, the SC pushes `WatchPush`es (changes since fromVersion; a
# watcher too far behind gets a full sync) while the watcher's credit allows.
struct WatchRequest { fromVersion @0 :UInt64; windowBytes @1 :UInt32; }
struct WatchResponse { result @0 :Result; }
struct WatchPush { fullSync @0 :Bool; version @1 :UInt64; events @2 :List(Event); }

# Idempotent producers: a block of `count` (1-1000) fresh producer ids, first one `firstId`.
struct AllocateProducerIdsRequest { count @0 :UInt32; }
struct AllocateProducerIdsResponse { result @0 :Result; firstId @1 :Int64; count @2 :UInt32; }

# Node-only: SPU `spuId`'s replica of `partition` lost data (a follower found the leader's log
# short of its own high watermark), or its disk failed (the SPU itself reports, with
# keepLastInSync: a disk fault never empties the in-sync set). It leaves the in-sync set and
# leadership at a new epoch. epoch >= 0: only if the partition is still at that epoch.
struct ReportReplicaLossRequest { partition @0 :Text; spuId @1 :Int32; reason @2 :Text; epoch @3 :Int64;
                                  keepLastInSync @4 :Bool; }
struct ReportReplicaLossResponse { result @0 :Result; }

# Operator: elect a leader now. Clean (unclean = false): a live in-sync replica, `leader` if it
# is one (-1: the first). Unclean: `leader` leads alone, and what only the in-sync replicas had
# is given up. Audited.
struct ElectLeaderRequest { partition @0 :Text; leader @1 :Int32; unclean @2 :Bool; }
struct ElectLeaderResponse { result @0 :Result; leader @1 :Int32; epoch @2 :UInt32; }

# Operator: what a bug report needs from this node (`kolk cluster diagnostics`,
# docs/operations.md "Diagnostics"): its versions, uptime, effective settings (secrets, keys and
# file contents left out), at most `logLines` of its most recent log lines (0: as many as it
# keeps) and its metrics text, as one JSON object (docs/protocol.md). Needs admin on cluster;
# asked of the SC in ScRequest and of an SPU in SpuRequest alike.
struct NodeDiagnosticsRequest { logLines @0 :UInt32; }
struct NodeDiagnosticsResponse { result @0 :Result; diagnosticsJson @1 :Text; }

# Operator (admin on cluster; docs/rebalance.md): plan a rebalance that evens replicas and
# preferred leaders per SPU and rack and empties draining SPUs; with execute, start its moves
# (each copying at throttleBytesPerSec; 0: the default, 10 MiB/s). planJson:
# {"moves": [{partition, from, to}], "started": [partition], "refused": [{partition, message}],
#  "moving": [{partition, from, to, waiting}]}. Audited when it executes. cancel: instead, cancel
# every move in progress (each partition back to the replicas it started from; "started" lists
# the cancelled ones, "refused" those whose leader is already a new replica).
struct RebalanceRequest { execute @0 :Bool; throttleBytesPerSec @1 :UInt64; cancel @2 :Bool; }
struct RebalanceResponse { result @0 :Result; planJson @1 :Text; }
# Operator (admin on cluster): mark SPU `spu` draining (undo: no longer), so no new replica goes
# to it and a rebalance moves every replica off it. Refused when the others cannot hold its
# replicas. planJson as in RebalanceResponse, the plan that empties it (not started). Audited.
struct DrainSpuRequest { spu @0 :Int32; undo @1 :Bool; }
struct DrainSpuResponse { result @0 :Result; planJson @1 :Text; }

# ---------------------------------------------------------------- node identity without TLS
#
# On a plaintext cluster a node proves it holds the cluster secret before any node-only call
# (docs/security.md, "Node identity without TLS"); the secret itself never travels. `challenge`
# answers this connection's nonce (AUTH_NONCE_BYTES random bytes; a fresh one after every
# `authenticate`, right or wrong); `authenticate` carries the node's name and
#   token = HMAC-SHA256(secret, "kolk-node-auth-v1" 0x00 service 0x00 node 0x00 nonce)
# where service is "SC" or "SPU". Once it succeeds the connection is the node's for every later
# call. Wrong token or no challenge: `denied`. With TLS, node certificates are the identity and
# `authenticate` is refused (invalidArgument).
struct ChallengeRequest {}
struct ChallengeResponse { result @0 :Result; nonce @1 :Data; }
struct AuthenticateRequest { node @0 :Text; token @1 :Data; }
struct AuthenticateResponse { result @0 :Result; }

# Operator (admin on cluster; docs/operations.md "Adding and removing SCs"): make SC `id`, at
# Raft address `raft` and admin address `admin` (host:port each), a member of the SC group, one
# change at a time (a second while one is in flight: inUse, retriable). Refused unless the new SC
# answers on both addresses (the admin one as SC `id` with Raft at `raft`) and, counting it, the
# SCs the leader reaches are a majority of the new group (notEnoughReplicas). The leader answers once the SC has caught up with the log and
# the replicated member list holds it. membersJson: [{id, raft, admin}], the list after it. Audited.
struct AddScRequest { id @0 :Int32; raft @1 :Text; admin @2 :Text; }
struct AddScResponse { result @0 :Result; membersJson @1 :Text; }
# Operator (admin on cluster): remove SC `id` from the SC group. Refused (notEnoughReplicas) when
# the members left that the leader reaches would not be a majority of the new group, and for the
# last member. Removing the leader: it hands leadership over and answers notLeader (retriable);
# the new leader carries it out. membersJson as in AddScResponse. Audited.
struct RemoveScRequest { id @0 :Int32; }
struct RemoveScResponse { result @0 :Result; membersJson @1 :Text; }

struct ScRequest {
  union {
    createTopic @0 :CreateTopicRequest;
    deleteTopic @1 :DeleteTopicRequest;
    listObjects @2 :ListObjectsRequest;
    getObject @3 :GetObjectRequest;
    putObject @4 :PutObjectRequest;
    deleteObject @5 :DeleteObjectRequest;
    registerSpu @6 :RegisterSpuRequest;
    unregisterSpu @7 :UnregisterSpuRequest;
    heartbeat @8 :HeartbeatRequest;
    updateIsr @9 :UpdateIsrRequest;
    clusterStatus @10 :ClusterStatusRequest;
    watch @11 :WatchRequest;
    allocateProducerIds @12 :AllocateProducerIdsRequest;
    reportReplicaLoss @13 :ReportReplicaLossRequest;
    electLeader @14 :ElectLeaderRequest;
    challenge @15 :ChallengeRequest;
    authenticate @16 :AuthenticateRequest;
    alterTopic @17 :AlterTopicRequest;
    addPartitions @18 :AddPartitionsRequest;
    eraseKey @19 :EraseKeyRequest;
    erasureDone @20 :ErasureDoneRequest;
    nodeDiagnostics @21 :NodeDiagnosticsRequest;
    rebalance @22 :RebalanceRequest;
    drainSpu @23 :DrainSpuRequest;
    addSc @24 :AddScRequest;
    removeSc @25 :RemoveScRequest;
  }
}

struct ScResponse {
  union {
    rejected @0 :Error;
    createTopic @1 :CreateTopicResponse;
    deleteTopic @2 :DeleteTopicResponse;
    listObjects @3 :ListObjectsResponse;
    getObject @4 :GetObjectResponse;
    putObject @5 :PutObjectResponse;
    deleteObject @6 :DeleteObjectResponse;
    registerSpu @7 :RegisterSpuResponse;
    unregisterSpu @8 :UnregisterSpuResponse;
    heartbeat @9 :HeartbeatResponse;
    updateIsr @10 :UpdateIsrResponse;
    clusterStatus @11 :ClusterStatusResponse;
    watch @12 :WatchResponse;
    allocateProducerIds @13 :AllocateProducerIdsResponse;
    reportReplicaLoss @14 :ReportReplicaLossResponse;
    electLeader @15 :ElectLeaderResponse;
    challenge @16 :ChallengeResponse;
    authenticate @17 :AuthenticateResponse;
    alterTopic @18 :AlterTopicResponse;
    addPartitions @19 :AddPartitionsResponse;
    eraseKey @20 :EraseKeyResponse;
    erasureDone @21 :ErasureDoneResponse;
    nodeDiagnostics @22 :NodeDiagnosticsResponse;
    rebalance @23 :RebalanceResponse;
    drainSpu @24 :DrainSpuResponse;
    addSc @25 :AddScResponse;
    removeSc @26 :RemoveScResponse;
  }
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
  # One stage of a SmartModule chain (docs/smartmodule-abi.md): a module stored in the cluster
  # as NAME@VERSION (`name` may omit @VERSION: the latest version), its `init` parameters, and
  # for an aggregate resuming a stream the accumulator to start from.
  name @0 :Text;
  params @1 :List(KeyValue);
  accumulator @2 :Data;
  hasAccumulator @3 :Bool;
}

struct ProduceRequest { topic @0 :Text; partition @1 :UInt32; acks @2 :Acks; records @3 :Data;
                        timeoutMs @4 :UInt32; smartmodules @5 :List(SmartModuleInvocation); }
# duplicate: an idempotent batch (producer id >= 0) this leader had already appended; the
# offsets are those of the first append and nothing was written again.
struct ProduceResponse { result @0 :Result; baseOffset @1 :Int64; lastOffset @2 :Int64; duplicate @3 :Bool; }

struct FetchRequest { topic @0 :Text; partition @1 :UInt32; offset @2 :Int64; maxBytes @3 :UInt32;
                      isolation @4 :Isolation; }
struct FetchResponse { result @0 :Result; records @1 :Data; highWatermark @2 :Int64; logStartOffset @3 :Int64;
                       logEndOffset @4 :Int64; nextOffset @5 :Int64; }

# A stream: after the response the SPU pushes `StreamPush`es of whole batches while the
# consumer's credit (windowBytes, then CREDIT frames) is positive; each push uses up its
# frame body's length of credit. With a SmartModule chain, `accumulators` holds each stage's
# aggregate accumulator after the push (empty for other kinds), so a consumer that reconnects
# can resume. The stream ends on an error with an END frame carrying the error.
struct StreamRequest { topic @0 :Text; partition @1 :UInt32; offset @2 :Int64; isolation @3 :Isolation;
                       windowBytes @4 :UInt32; smartmodules @5 :List(SmartModuleInvocation); }
struct StreamResponse { result @0 :Result; }
struct StreamPush { records @0 :Data; highWatermark @1 :Int64; nextOffset @2 :Int64; accumulators @3 :List(Data); }

struct OffsetsRequest { topic @0 :Text; partition @1 :UInt32; }
struct OffsetsResponse { result @0 :Result; logStartOffset @1 :Int64; highWatermark @2 :Int64; logEndOffset @3 :Int64; }
struct OffsetForTimestampRequest { topic @0 :Text; partition @1 :UInt32; timestamp @2 :Int64; }
struct OffsetForTimestampResponse { result @0 :Result; found @1 :Bool; offset @2 :Int64; }

# ---- replication, SPU to SPU (docs/replication.md). `partition` is the partition name
# (`<topic>-<n>`); `epoch` is the partition epoch the caller knows from the SC.

# A follower pulls from `offset`, its log end offset; everything below `offset` is fsynced on
# the follower, so the call also reports its progress. The leader waits up to `maxWaitMs` when
# it has nothing past `offset`.
struct ReplicaFetchRequest { partition @0 :Text; replicaId @1 :Int32; epoch @2 :UInt32; offset @3 :Int64;
                             maxBytes @4 :UInt32; maxWaitMs @5 :UInt32; }
struct ReplicaFetchResponse { result @0 :Result; records @1 :Data; highWatermark @2 :Int64;
                              logStartOffset @3 :Int64; logEndOffset @4 :Int64; }
# Where the leader's log has the largest leader epoch <= `lastEpoch` end (KIP-279): a follower
# truncates what it has beyond that before it fetches. epoch -1: none.
struct EpochEndOffsetRequest { partition @0 :Text; replicaId @1 :Int32; epoch @2 :UInt32; lastEpoch @3 :Int32; }
struct EpochEndOffsetResponse { result @0 :Result; leaderEpoch @1 :Int32; endOffset @2 :Int64; }
# For `kolk partition list`: per partition this SPU leads, its offsets and each replica's
# progress, as JSON (docs/protocol.md).
struct PartitionStatusRequest { partitions @0 :List(Text); }
struct PartitionStatusResponse { result @0 :Result; statusJson @1 :Text; }
# Node-only: which SPU answers here. instanceId is random per process, so an SPU that dials its
# own private address at start can tell itself from another SPU (even one with its id).
struct IdentifyRequest {}
struct IdentifyResponse { result @0 :Result; spuId @1 :Int32; instanceId @2 :Text; }


# ---------------------------------------------------------------- consumer groups
#
# To the SPU leading the group's partition of `_consumer_offsets` (crc32c(group) % partitions):
# the group's coordinator. Another SPU answers notCoordinator (retriable, with the
# coordinator's address when it knows it). docs/consumers.md has the protocol.

struct TopicPartitions { topic @0 :Text; partitions @1 :List(UInt32); }

struct GroupHeartbeatRequest {
  group @0 :Text;
  memberId @1 :Text;            # "" to join: the coordinator names the member
  instanceId @2 :Text;          # static membership (group_instance_id); "" for none
  memberEpoch @3 :Int32;        # 0 to join; else the last memberEpoch answered; -1 leave; -2 leave for now (static)
  topics @4 :List(Text);        # the topics the member subscribes to
  owned @5 :List(TopicPartitions);  # the partitions the member holds now, after its revocations
  sessionTimeoutMs @6 :UInt32;  # 0: the default
  rebalanceTimeoutMs @7 :UInt32; # 0: the default; how long a member may take to hand back a partition
  assignor @8 :Text;            # "sticky" (default, ""), "range", "roundrobin"
  waitMs @9 :UInt32;            # hold the answer up to this long unless the member's assignment changes
}
struct GroupHeartbeatResponse { result @0 :Result; memberId @1 :Text; memberEpoch @2 :Int32; groupEpoch @3 :Int32;
                                assignment @4 :List(TopicPartitions); heartbeatIntervalMs @5 :UInt32; }

struct CommittedOffset { topic @0 :Text; partition @1 :UInt32; offset @2 :Int64; metadata @3 :Text; }

# memberId "" commits for a group with no members (a reset, or a consumer without membership).
struct OffsetCommitRequest { group @0 :Text; memberId @1 :Text; memberEpoch @2 :Int32;
                             offsets @3 :List(CommittedOffset); }
struct OffsetCommitResponse { result @0 :Result; }
# topics empty: every committed offset of the group.
struct OffsetFetchRequest { group @0 :Text; topics @1 :List(TopicPartitions); }
struct OffsetFetchResponse { result @0 :Result; offsets @1 :List(CommittedOffset); }
struct DescribeGroupRequest { group @0 :Text; }
struct DescribeGroupResponse { result @0 :Result; groupJson @1 :Text; }
# The groups this SPU coordinates.
struct ListGroupsRequest {}
struct ListGroupsResponse { result @0 :Result; groupsJson @1 :Text; }
# Only a group without members; its committed offsets go with it.
struct DeleteGroupRequest { group @0 :Text; }
struct DeleteGroupResponse { result @0 :Result; }

struct SpuRequest {
  union {
    produce @0 :ProduceRequest;
    fetch @1 :FetchRequest;
    stream @2 :StreamRequest;
    offsets @3 :OffsetsRequest;
    offsetForTimestamp @4 :OffsetForTimestampRequest;
    replicaFetch @5 :ReplicaFetchRequest;
    epochEndOffset @6 :EpochEndOffsetRequest;
    partitionStatus @7 :PartitionStatusRequest;
    identify @8 :IdentifyRequest;
    challenge @9 :ChallengeRequest;
    authenticate @10 :AuthenticateRequest;
    groupHeartbeat @11 :GroupHeartbeatRequest;
    offsetCommit @12 :OffsetCommitRequest;
    offsetFetch @13 :OffsetFetchRequest;
    describeGroup @14 :DescribeGroupRequest;
    listGroups @15 :ListGroupsRequest;
    deleteGroup @16 :DeleteGroupRequest;
    nodeDiagnostics @17 :NodeDiagnosticsRequest;
  }
}

struct SpuResponse {
  union {
    rejected @0 :Error;
    produce @1 :ProduceResponse;
    fetch @2 :FetchResponse;
    stream @3 :StreamResponse;
    offsets @4 :OffsetsResponse;
    offsetForTimestamp @5 :OffsetForTimestampResponse;
    replicaFetch @6 :ReplicaFetchResponse;
    epochEndOffset @7 :EpochEndOffsetResponse;
    partitionStatus @8 :PartitionStatusResponse;
    identify @9 :IdentifyResponse;
    challenge @10 :ChallengeResponse;
    authenticate @11 :AuthenticateResponse;
    groupHeartbeat @12 :GroupHeartbeatResponse;
    offsetCommit @13 :OffsetCommitResponse;
    offsetFetch @14 :OffsetFetchResponse;
    describeGroup @15 :DescribeGroupResponse;
    listGroups @16 :ListGroupsResponse;
    deleteGroup @17 :DeleteGroupResponse;
    nodeDiagnostics @18 :NodeDiagnosticsResponse;
  }
}

# ---------------------------------------------------------------- pushes and stream ends

struct Push {
  union {
    stream @0 :StreamPush;
    watch @1 :WatchPush;
  }
}

struct StreamEnd {
  # Why a stream stopped on the server's side. ok = true: it ended normally (the partition moved
  # away from this SPU, or the server is stopping); otherwise `error` says why (a SmartModule
  # failed, with its offset).
  result @0 :Result;
}
