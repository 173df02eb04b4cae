/* {{NAME}}: an array_map SmartModule (from `kolk smartmodule generate array_map {{NAME}}`).
 *
 * Gives one record per space-separated word of the value, each with the input's key,
 * headers, offset and timestamp; a null or blank value gives nothing. No parameters.
 *
 * Build and try it:
 *   kolk smartmodule build {{NAME}}.c
 *   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
 * The ABI and the SDK: docs/smartmodule-abi.md.
 */
#include "kolk_smartmodule.h"

/* Call kolk_emit 0..n times; a negative return (kolk_emit's, or kolk_fail("why")) ends the
 * stream naming this record's offset. */
static int words(const kolk_record *in, kolk_emitter *em) {
    kolk_i32 start = 0;
    for (kolk_i32 i = 0; i <= in->value_len; i++) {
        if (i < in->value_len && in->value[i] != ' ') continue;
        if (i > start && kolk_emit(em, in->key, in->key_len, in->value + start, i - start) != 0) return -1;
        start = i + 1;
    }
    return 0;
}
KOLK_ARRAY_MAP(words)
