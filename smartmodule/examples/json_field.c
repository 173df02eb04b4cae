/* json_field: a map whose output value is one field of the input's JSON object.
 *
 * Parameters:
 *   field  (required) the name of a top-level field.
 * A string field gives its text (escapes decoded); a number, true or false gives its JSON
 * text; null or a missing field gives a null value. A value that is not a JSON object (or has
 * the field twice) is an error of that record: the stream ends naming its offset and the
 * SDK's message (e.g. "JSON: expected , or } at byte 9"). Key and headers are kept.
 */
#include "kolk_smartmodule.h"

static const char *field;
static kolk_i32 field_len;

static const char *const PARAMS[] = {"field", NULL};

static int check_params(void) {
    if (kolk_params_known(PARAMS) != 0) return 1;  /* the message names the parameter */
    field = kolk_param_required("field", &field_len);
    return field ? 0 : 1;
}
KOLK_INIT(check_params)

static int extract(const kolk_record *in, kolk_output *out) {
    kolk_json_value v;
    if (in->value_len < 0) return kolk_fail("the value is null, not a JSON object");
    int found = kolk_json_find(in->value, in->value_len, field, field_len, &v);
    if (found < 0) return -1;  /* the SDK said what is wrong with the JSON */
    if (found == 0 || v.type == KOLK_JSON_NULL) {
        kolk_set_value(out, NULL, -1);
    } else if (v.type == KOLK_JSON_STRING) {
        char *text = kolk_arena_alloc((kolk_u32)v.len);
        if (!text) return kolk_fail("out of memory for the field's text");
        kolk_i32 n = kolk_json_unescape(v.start + 1, v.len - 2, text);
        if (n < 0) return kolk_fail("the field's string has a lone surrogate escape");
        kolk_set_value(out, text, n);
    } else {
        kolk_set_value(out, v.start, v.len);
    }
    return 0;
}
KOLK_MAP(extract)
