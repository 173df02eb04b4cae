/** @kolk/client: the public API. */
export { KolkClient, type ClientOptions } from "./client.js";
export { AdminClient, type KolkObject } from "./admin.js";
export { Producer, SentRecords, partitionForKey, type ProducerOptions, type SendOptions, type RecordMetadata, type AcksName } from "./producer.js";
export { Consumer, Offset, type ConsumerOptions } from "./consumer.js";
export { GroupConsumer, type GroupConsumerOptions } from "./groups/consumer.js";
export type { GroupListing } from "./groups/admin.js";
export type { TopicPartition } from "./groups/names.js";
export { Connection, SpuStream, type CallOptions, type ConnectOptions } from "./connection.js";
export type { TlsOptions } from "./tls.js";
export { normalizeChain, type ChainStage } from "./smartmodules.js";
export * from "./errors.js";
export type { ConsumerRecord, ProducerRecord, Header, Codec } from "./records.js";
export * as limits from "./limits.js";
export { MalformedMessageError } from "./message.js";
