/* {{NAME}}: an aggregate SmartModule (from `kolk smartmodule generate aggregate {{NAME}}`).
 *
 * Counts records. The accumulator is the count as decimal text (empty: 0), kept by the host
 * from batch to batch; each output record is its input with the count so far as its value.
 * The host's parameter `initial` sets the starting accumulator (e.g. -p initial=100).
 *
 * Build and try it:
 *   kolk smartmodule build {{NAME}}.c
 *   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl
 * The ABI and the SDK: docs/smartmodule-abi.md.
 */
#include "kolk_smartmodule.h"

/* acc is the accumulator (change it in place, or with kolk_acc_splice); out starts as a copy
 * of the record, its value the accumulator after this record unless you set it. A negative
 * return (e.g. kolk_fail("why")) ends the stream naming this record's offset. */
static int count(kolk_acc *acc, const kolk_record *in, kolk_output *out) {
    kolk_i64 n = 0;
    (void)in;
    (void)out;
    if (acc->len > 0 && (kolk_parse_i64(acc->data, (kolk_i32)acc->len, &n) != 0 || n < 0))
        return kolk_fail("the accumulator is not a decimal count (see the parameter `initial`)");
    char text[21];
    kolk_i32 len = kolk_format_i64(n + 1, text);
    return kolk_acc_splice(acc, 0, acc->len, text, (kolk_u32)len);  /* -1 with a message if no memory */
}
KOLK_AGGREGATE(count)
