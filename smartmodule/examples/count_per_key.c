/* count_per_key: an aggregate keeping a running count of records per key.
 *
 * No parameters (the host's `initial` parameter, if given, must be a table as below).
 * Each output record has the input's key and the value "key=count" (a null key is shown
 * as "null"; it is counted apart from a key spelled null).
 *
 * The accumulator is a compact table, one entry per key seen, in first-seen order:
 *   key_length u32 (0xffffffff: the null key), key bytes, count u64, all little-endian.
 * Finding a key walks the table: fine for thousands of keys per stream, not millions.
 */
#include "kolk_smartmodule.h"

#define NULL_KEY 0xffffffffu

static int count(kolk_acc *acc, const kolk_record *in, kolk_output *out) {
    kolk_u32 klen = in->key_len < 0 ? NULL_KEY : (kolk_u32)in->key_len, pos = 0;
    kolk_u64 n = 0;
    while (pos < acc->len) {  /* look for the key */
        if (acc->len - pos < 4) return kolk_fail("the accumulator is not a count table (see count_per_key.c)");
        kolk_u32 elen = kolk_get_u32(acc->data + pos), ebytes = elen == NULL_KEY ? 0 : elen;
        if (ebytes > acc->len - pos - 4 || acc->len - pos - 4 - ebytes < 8)
            return kolk_fail("the accumulator is not a count table (see count_per_key.c)");
        if (elen == klen && kolk_memcmp(acc->data + pos + 4, in->key, ebytes) == 0) {
            kolk_u8 *c = acc->data + pos + 4 + ebytes;
            n = kolk_get_u64(c) + 1;
            kolk_put_u64(c, n);
            break;
        }
        pos += 12 + ebytes;
    }
    if (n == 0) {  /* a new key: append an entry */
        kolk_u32 kbytes = klen == NULL_KEY ? 0 : klen;
        kolk_u8 *entry = kolk_arena_alloc(12 + kbytes);
        if (!entry) return kolk_fail("out of memory for a new key");
        kolk_put_u32(entry, klen);
        kolk_memcpy(entry + 4, in->key, kbytes);
        kolk_put_u64(entry + 4 + kbytes, n = 1);
        if (kolk_acc_append(acc, entry, 12 + kbytes) != 0) return -1;
    }
    kolk_u32 shown = klen == NULL_KEY ? 4 : klen;
    char *text = kolk_arena_alloc(shown + 21);
    if (!text) return kolk_fail("out of memory for the output value");
    kolk_memcpy(text, klen == NULL_KEY ? (const void *)"null" : (const void *)in->key, shown);
    text[shown] = '=';
    kolk_set_value(out, text, (kolk_i32)(shown + 1) + kolk_format_u64(n, text + shown + 1));
    return 0;
}
KOLK_AGGREGATE(count)
