/* {{NAME}}: a filter SmartModule (from `kolk smartmodule generate filter {{NAME}}`).
 *
 * Keeps the records whose value contains the text of the parameter `contains`; with no
 * parameter, every record that has a value. A record with a null value is dropped.
 *
 * Parameters:
 *   contains  (optional) the text to look for
 *
 * Build and try it:
 *   kolk smartmodule build {{NAME}}.c
 *   kolk smartmodule test {{NAME}}.wasm --input {{NAME}}.jsonl -p contains=temp
 * The ABI and the SDK: docs/smartmodule-abi.md.
 */
#include "kolk_smartmodule.h"

static const char *needle = "";
static kolk_i32 needle_len = 0;
static const char *const PARAMS[] = {"contains", NULL};

/* init: runs once per stream with the client's parameters; non-zero refuses them, and the
 * message the SDK helpers set says which parameter was wrong. */
static int setup(void) {
    if (kolk_params_known(PARAMS) != 0) return 1;
    const char *text = kolk_param("contains", &needle_len);
    if (text) needle = text;
    return 0;
}
KOLK_INIT(setup)

/* 1 keeps the record, 0 drops it; a negative value (e.g. return kolk_fail("why")) ends the
 * stream with an error naming this record's offset and your message. */
static int keep(const kolk_record *r) {
    if (r->value_len < 0) return 0;
    return kolk_find(r->value, r->value_len, needle, needle_len) >= 0;
}
KOLK_FILTER(keep)
