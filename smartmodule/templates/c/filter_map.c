/* {{NAME}}: a filter_map SmartModule (from `kolk smartmodule generate filter_map {{NAME}}`).
 *
 * Keeps the records that have both a key and a value, with the value `key=value`; drops
 * the others. Headers, offset and timestamp stay as they were. No parameters.
 *
 * Build and try it:
 *   kolk smartmodule build {{NAME}}.c
 *   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
 * The ABI and the SDK: docs/smartmodule-abi.md.
 */
#include "kolk_smartmodule.h"

/* 1 emits out (a copy of the record, changed as you like), 0 drops the record; a negative
 * return (e.g. return kolk_fail("why")) ends the stream naming this record's offset. */
static int label(const kolk_record *in, kolk_output *out) {
    if (in->key_len < 0 || in->value_len < 0) return 0;
    kolk_u32 n = (kolk_u32)in->key_len + 1 + (kolk_u32)in->value_len;
    kolk_u8 *text = kolk_arena_alloc(n);
    if (!text) return kolk_fail("out of memory for the new value");
    kolk_memcpy(text, in->key, (kolk_u32)in->key_len);
    text[in->key_len] = '=';
    kolk_memcpy(text + in->key_len + 1, in->value, (kolk_u32)in->value_len);
    kolk_set_value(out, text, (kolk_i32)n);
    return 1;
}
KOLK_FILTER_MAP(label)
