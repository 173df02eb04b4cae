/**
 * The wire protocol's limits the client needs, copied from core/protocol/limits.py (the one
 * definition); test/limits.test.ts reads limits.py and fails when a number here differs.
 */
export const FRAME_HEADER_BYTES = 16;
export const FRAME_BODY_BYTES_MAX = (16 << 20) + (64 << 10);
export const REQUESTS_IN_FLIGHT_MAX = 256;
export const STREAMS_PER_CONNECTION_MAX = 64;
export const STREAM_WINDOW_BYTES_MAX = 64 << 20;
export const PRODUCE_BYTES_MAX = 16 << 20;
export const FETCH_BYTES_MAX = 8 << 20;
export const CHAIN_STAGES_MAX = 16;
export const SMARTMODULE_PARAMS_MAX = 64;
export const NAME_CHARS_MAX = 255;
export const TEXT_CHARS_MAX = 4096;
export const TOPIC_CONFIG_ENTRIES_MAX = 64;
/** The reader of a message from the server: traversal limit 8 words per body word, at least 128 Ki words. */
export const TRAVERSAL_WORDS_PER_BODY_WORD = 8;
export const TRAVERSAL_WORDS_MIN = 1 << 17;
/** Bytes written to a connection and not yet read by the server past which calls wait their turn. */
export const WRITE_BUFFER_HIGH_BYTES = 4 << 20;
/** From metadata/topic_config.py (there BATCH_BYTES_MAX and DEFAULTS_NAME): a topic's
 * max_message_bytes when neither it nor the cluster defaults set one (the storage's batch
 * limit), and the name of the `config` object holding the cluster-wide topic defaults. */
export const MAX_MESSAGE_BYTES_DEFAULT = 4 << 20;
export const TOPIC_DEFAULTS_NAME = "topic-defaults";
