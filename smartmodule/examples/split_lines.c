/* split_lines: an array_map giving one record per non-empty line of the value.
 *
 * No parameters. Lines end at "\n" (a "\r" before it is dropped); empty lines give nothing,
 * nor does a null value. Every output keeps the input's key, headers and offset.
 */
#include "kolk_smartmodule.h"

static int split(const kolk_record *in, kolk_emitter *em) {
    kolk_i32 start = 0;
    for (kolk_i32 i = 0; i <= in->value_len; i++) {
        if (i < in->value_len && in->value[i] != '\n') continue;
        kolk_i32 end = i;
        if (end > start && in->value[end - 1] == '\r') end--;
        if (end > start && kolk_emit(em, in->key, in->key_len, in->value + start, end - start) != 0) return -1;
        start = i + 1;
    }
    return 0;
}
KOLK_ARRAY_MAP(split)
