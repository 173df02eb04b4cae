/* {{NAME}}: a map SmartModule (from `kolk smartmodule generate map {{NAME}}`).
 *
 * Gives every record with its value's ASCII letters in upper case; key, headers, offset and
 * timestamp stay as they were, and a null value stays null. No parameters.
 *
 * Build and try it:
 *   kolk smartmodule build {{NAME}}.c
 *   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
 * The ABI and the SDK: docs/smartmodule-abi.md.
 */
#include "kolk_smartmodule.h"

/* out starts as a copy of the record: change what you need. A negative return (e.g. return
 * kolk_fail("why")) ends the stream with an error naming this record's offset. */
static int shout(const kolk_record *in, kolk_output *out) {
    if (in->value_len <= 0) return 0;
    char *text = kolk_arena_alloc((kolk_u32)in->value_len);  /* lives until this record is written */
    if (!text) return kolk_fail("out of memory for the new value");
    for (kolk_i32 i = 0; i < in->value_len; i++) {
        kolk_u8 c = in->value[i];
        text[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    kolk_set_value(out, text, in->value_len);
    return 0;
}
KOLK_MAP(shout)
