/* json_field: a map whose output value is one field of the input's JSON object.
 *
 * Parameters:
 *   field  (required) the name of a top-level field.
 * A string field gives its text (escapes decoded); a number, true or false gives its JSON
 * text; null or a missing field gives a null value. A value that is not a JSON object is an
 * error of that record (the stream ends naming its offset). Key and headers are kept.
 */
#include "kolk_smartmodule.h"

static const char *field;
static kolk_i32 field_len;

static int check_params(void) {
    field = kolk_param("field", &field_len);
    return field ? 0 : 1;
}
KOLK_INIT(check_params)

static int extract(const kolk_record *in, kolk_output *out) {
    kolk_json_value v;
    int found = in->value_len < 0 ? -1 : kolk_json_find(in->value, in->value_len, field, field_len, &v);
    if (found < 0) return -1;
    if (found == 0 || v.type == KOLK_JSON_NULL) {
        kolk_set_value(out, NULL, -1);
    } else if (v.type == KOLK_JSON_STRING) {
        char *text = kolk_arena_alloc((kolk_u32)v.len);
        kolk_i32 n = text ? kolk_json_unescape(v.start + 1, v.len - 2, text) : -1;
        if (n < 0) return -1;
        kolk_set_value(out, text, n);
    } else {
        kolk_set_value(out, v.start, v.len);
    }
    return 0;
}
KOLK_MAP(extract)
