/* contains: a filter that keeps the records whose value contains the bytes of a needle.
 *
 * Parameters:
 *   needle  (required) the text to look for; init refuses the stream without it, or with
 *           any other parameter (a typo would otherwise go unnoticed), naming the parameter.
 * A record with a null value is dropped. Build: kolk smartmodule build contains.c
 */
#include "kolk_smartmodule.h"

static const char *needle;
static kolk_i32 needle_len;

static const char *const PARAMS[] = {"needle", NULL};

static int check_params(void) {
    if (kolk_params_known(PARAMS) != 0) return 1;  /* non-zero: the parameters are refused */
    needle = kolk_param_required("needle", &needle_len);
    return needle ? 0 : 1;  /* the message names what was wrong */
}
KOLK_INIT(check_params)

static int keep(const kolk_record *r) {
    return r->value_len >= 0 && kolk_find(r->value, r->value_len, needle, needle_len) >= 0;
}
KOLK_FILTER(keep)
