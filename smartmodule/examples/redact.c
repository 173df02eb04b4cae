/* redact: a map masking a field of the value's JSON object with "***".
 *
 * Parameters:
 *   field  (required) the name of a top-level field; every occurrence of it is masked,
 *          whatever its type, with the JSON string "***".
 * A value without the field is passed on unchanged, as is a null value. A key is compared with
 * its escapes decoded ("p\u0077" is pw). A value that is not a JSON object is an error of that
 * record (with the SDK's message saying why): failing closed, so nothing leaks unmasked.
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

static const char MASK[] = "\"***\"";

static int mask(const kolk_record *in, kolk_output *out) {
    kolk_json_iter it;
    kolk_json_value k, v;
    kolk_u8 *buf = 0;
    kolk_i32 copied = 0, len = 0, rc, is;  /* input bytes copied so far, output length */
    if (in->value_len < 0) return 0;
    if (kolk_json_begin(&it, in->value, in->value_len) != 0) return -1;
    while ((rc = kolk_json_next(&it, &k, &v)) == 1) {
        if ((is = kolk_json_key_is(&k, field, field_len)) < 0) return -1;
        if (!is) continue;
        if (!buf && !(buf = kolk_arena_alloc((kolk_u32)in->value_len * 2 + 8))) return kolk_fail("out of memory");
        kolk_i32 upto = (kolk_i32)(v.start - in->value);  /* copy what precedes the value */
        kolk_memcpy(buf + len, in->value + copied, (kolk_u32)(upto - copied));
        len += upto - copied;
        kolk_memcpy(buf + len, MASK, sizeof MASK - 1);
        len += sizeof MASK - 1;
        copied = upto + v.len;
    }
    if (rc < 0) return -1;
    if (buf) {
        kolk_memcpy(buf + len, in->value + copied, (kolk_u32)(in->value_len - copied));
        kolk_set_value(out, buf, len + in->value_len - copied);
    }
    return 0;
}
KOLK_MAP(mask)
