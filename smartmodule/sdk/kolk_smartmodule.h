/* kolk_smartmodule.h: write a Kolk SmartModule in C, ABI version 1 (docs/smartmodule-abi.md).
 *
 * One header, no libc. Build:
 *   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--export-dynamic -Wl,--stack-first \
 *         -I smartmodule/sdk -o m.wasm m.c          (or: kolk smartmodule build m.c)
 * (--stack-first, optional: a stack overflow then traps instead of overwriting globals.)
 *
 * Write one function and name it with ONE kind macro:
 *   KOLK_FILTER(fn)     int fn(const kolk_record *r)                  1 keep, 0 drop
 *   KOLK_MAP(fn)        int fn(const kolk_record *in, kolk_output *out)  >= 0 emit out
 *   KOLK_FILTER_MAP(fn) int fn(const kolk_record *in, kolk_output *out)  1 emit, 0 drop
 *   KOLK_ARRAY_MAP(fn)  int fn(const kolk_record *in, kolk_emitter *em)  kolk_emit() 0..n times
 *   KOLK_AGGREGATE(fn)  int fn(kolk_acc *acc, const kolk_record *in, kolk_output *out)
 *   KOLK_INIT(fn)       int fn(void)   optional: check parameters (kolk_param), 0 accepts
 * A negative return is an error of that record: the host ends the stream naming its offset.
 * Say why first, and the consumer's error ends with it: `return kolk_fail("not a number");`
 * (kolk_set_error, exported to the host as kolk_error). In init, kolk_param_required,
 * kolk_param_i64, kolk_param_bool and kolk_params_known name the parameter that was wrong.
 * Every output record keeps the offset delta and timestamp delta of its input record.
 *
 * Memory: a bump arena from __heap_base, reset by every kolk_alloc (so once per host call).
 * kolk_arena_alloc() memory lives until your function returns for the current record: the
 * bytes an output points at are copied first, then that record's scratch memory is reused.
 * Parameters are copied once, by init, into memory the arena never hands out again; the
 * accumulator is passed in and out by the host. State kept across batches goes in globals.
 * One translation unit per module: the header defines the module's exports and state.
 */
#ifndef KOLK_SMARTMODULE_H
#define KOLK_SMARTMODULE_H

typedef unsigned char kolk_u8;
typedef __INT32_TYPE__ kolk_i32;
typedef __UINT32_TYPE__ kolk_u32;
typedef __INT64_TYPE__ kolk_i64;
typedef __UINT64_TYPE__ kolk_u64;
typedef __SIZE_TYPE__ kolk_size;
#ifndef NULL
#define NULL ((void *)0)
#endif

#define KOLK_ABI_VERSION 1
#define KOLK_PARAMS_MAX 64
/* Batch-level error codes: in the host's error range [-2^31, -1] (anything below is read as an
 * output address) but past any record index a batch can have, so the host reports them as the
 * batch's, with the message the SDK sets (kolk_error). */
#define KOLK_ERR_BAD_INPUT (-2147483647LL - 1) /* the host's input is not well-formed */
#define KOLK_ERR_NO_MEMORY (-2147483647LL)     /* memory.grow failed (the host's memory cap) */
#define KOLK_ERR_BAD_OUTPUT (-2147483646LL)    /* a kolk_output length is below -1 */
#define KOLK_INIT_BAD_PARAMS (-1000)   /* init: the host's parameters are not well-formed */
#define KOLK_VALUE_ACC (-2) /* aggregate: out->value_len meaning "the accumulator after this record" */

#define KOLK__API static inline __attribute__((unused))
#define KOLK__EXPORT(name) __attribute__((export_name(name), visibility("hidden")))

/* ------------------------------------------------------------------ bytes, without libc */
/* clang emits calls to these for struct copies and loops; hidden, so they are not exported. */
#define KOLK__LIBC __attribute__((weak, visibility("hidden"), no_builtin))
KOLK__LIBC void *memcpy(void *d, const void *s, kolk_size n) {
    kolk_u8 *a = (kolk_u8 *)d; const kolk_u8 *b = (const kolk_u8 *)s;
    while (n--) *a++ = *b++;
    return d;
}
KOLK__LIBC void *memmove(void *d, const void *s, kolk_size n) {
    kolk_u8 *a = (kolk_u8 *)d; const kolk_u8 *b = (const kolk_u8 *)s;
    if (a < b) while (n--) *a++ = *b++;
    else while (n--) a[n] = b[n];
    return d;
}
KOLK__LIBC void *memset(void *d, int c, kolk_size n) {
    kolk_u8 *a = (kolk_u8 *)d;
    while (n--) *a++ = (kolk_u8)c;
    return d;
}
KOLK__LIBC int memcmp(const void *x, const void *y, kolk_size n) {
    const kolk_u8 *a = (const kolk_u8 *)x, *b = (const kolk_u8 *)y;
    for (; n; n--, a++, b++) if (*a != *b) return *a < *b ? -1 : 1;
    return 0;
}
KOLK__API void kolk_memcpy(void *d, const void *s, kolk_u32 n) { memmove(d, s, n); }
KOLK__API int kolk_memcmp(const void *a, const void *b, kolk_u32 n) { return memcmp(a, b, n); }
KOLK__API kolk_u32 kolk_strlen(const char *s) { kolk_u32 n = 0; while (s[n]) n++; return n; }
KOLK__API int kolk_equal(const void *a, kolk_i32 alen, const void *b, kolk_i32 blen) {
    return alen == blen && (alen <= 0 || memcmp(a, b, (kolk_u32)alen) == 0);
}

/* The first index of needle in hay, or -1. Scans for the needle's first byte eight bytes at
 * a time (the "has zero byte" trick on hay XOR that byte), then compares; linear on ordinary
 * input, and several times faster than a byte loop in wasm32. */
KOLK__API kolk_i32 kolk_find(const void *hay, kolk_i32 hlen, const void *needle, kolk_i32 nlen) {
    const kolk_u8 *h = (const kolk_u8 *)hay, *n = (const kolk_u8 *)needle;
    if (nlen <= 0) return 0;
    if (hlen < nlen) return -1;
    const kolk_i32 last = hlen - nlen; /* the last possible start */
    const kolk_u8 first = n[0];
    const kolk_u64 ones = 0x0101010101010101ull, pat = ones * first;
    kolk_i32 i = 0;
    while (i <= last) {
        if (last - i >= 7) { /* eight candidate starts i..i+7 */
            kolk_u64 w;
            __builtin_memcpy(&w, h + i, 8);
            kolk_u64 x = w ^ pat;
            kolk_u64 t = (x - ones) & ~x & (ones << 7);
            if (!t) { i += 8; continue; }
            i += (kolk_i32)(__builtin_ctzll(t) >> 3); /* the first byte equal to needle[0] */
        } else if (h[i] != first) {
            i++;
            continue;
        }
        if (memcmp(h + i, n, (kolk_size)nlen) == 0) return i;
        i++;
    }
    return -1;
}

/* Little-endian loads and stores at any alignment (wasm allows unaligned access). */
KOLK__API kolk_u32 kolk_get_u32(const kolk_u8 *p) { kolk_u32 v; __builtin_memcpy(&v, p, 4); return v; }
KOLK__API kolk_i32 kolk_get_i32(const kolk_u8 *p) { kolk_i32 v; __builtin_memcpy(&v, p, 4); return v; }
KOLK__API kolk_u64 kolk_get_u64(const kolk_u8 *p) { kolk_u64 v; __builtin_memcpy(&v, p, 8); return v; }
KOLK__API void kolk_put_u32(kolk_u8 *p, kolk_u32 v) { __builtin_memcpy(p, &v, 4); }
KOLK__API void kolk_put_u64(kolk_u8 *p, kolk_u64 v) { __builtin_memcpy(p, &v, 8); }

/* ------------------------------------------------------------------ integers as text */
/* Parse an optionally signed decimal integer filling all of s; 0 ok, -1 not a number/overflow. */
KOLK__API int kolk_parse_i64(const void *s, kolk_i32 len, kolk_i64 *out) {
    const kolk_u8 *p = (const kolk_u8 *)s;
    int neg = 0, i = 0;
    kolk_u64 v = 0, limit;
    if (len > 0 && (p[0] == '-' || p[0] == '+')) { neg = p[0] == '-'; i = 1; }
    if (i >= len) return -1;
    limit = neg ? (kolk_u64)1 << 63 : ((kolk_u64)1 << 63) - 1;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        if (v > (limit - (p[i] - '0')) / 10) return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? (kolk_i64)(0 - v) : (kolk_i64)v;
    return 0;
}
/* Decimal text of v into buf (at least 20 bytes); returns its length. */
KOLK__API kolk_i32 kolk_format_u64(kolk_u64 v, char *buf) {
    char tmp[20];
    kolk_i32 n = 0, i;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    return n;
}
KOLK__API kolk_i32 kolk_format_i64(kolk_i64 v, char *buf) {  /* buf: at least 21 bytes */
    if (v >= 0) return kolk_format_u64((kolk_u64)v, buf);
    buf[0] = '-';
    return 1 + kolk_format_u64(0 - (kolk_u64)v, buf + 1);
}

/* ------------------------------------------------------------------ errors for the author */
/* A message for the host (the optional export kolk_error, docs/smartmodule-abi.md): set it,
 * then return a negative value from the kind function or non-zero from init, and the
 * consumer's error ends with it. The SDK clears it before every record and every host call,
 * and its own helpers set it when they fail (a missing parameter, malformed JSON, no memory).
 * At most KOLK_ERROR_BYTES_MAX bytes are kept, cut at a UTF-8 character boundary. */
#define KOLK_ERROR_BYTES_MAX 1024
static char kolk__error[KOLK_ERROR_BYTES_MAX];
static kolk_u32 kolk__error_len;

KOLK__API void kolk_clear_error(void) { kolk__error_len = 0; }
/* Append len bytes (len -1: a C string) to the message. */
KOLK__API void kolk_error_append(const void *text, kolk_i32 len) {
    const kolk_u8 *s = (const kolk_u8 *)text;
    kolk_u32 n = len < 0 ? kolk_strlen((const char *)text) : (kolk_u32)len, room = KOLK_ERROR_BYTES_MAX - kolk__error_len;
    if (n > room) {  /* cut before the character that does not fit whole */
        n = room;
        while (n > 0 && (s[n] & 0xc0) == 0x80) n--;
    }
    memcpy(kolk__error + kolk__error_len, s, n);
    kolk__error_len += n;
}
KOLK__API void kolk_error_append_i64(kolk_i64 v) { char b[21]; kolk_error_append(b, kolk_format_i64(v, b)); }
KOLK__API void kolk_set_error_len(const char *msg, kolk_i32 len) { kolk__error_len = 0; kolk_error_append(msg, len); }
KOLK__API void kolk_set_error(const char *msg) { kolk_set_error_len(msg, -1); }
/* kolk_set_error(msg), then -1: `return kolk_fail("value is not a number");` */
KOLK__API int kolk_fail(const char *msg) { kolk_set_error(msg); return -1; }
KOLK__API void kolk__error3(const char *a, const void *b, kolk_i32 blen, const char *c) {
    kolk_set_error(a); kolk_error_append(b, blen); kolk_error_append(c, -1);
}
KOLK__EXPORT("kolk_error") kolk_i64 kolk__export_error(void) {
    return kolk__error_len ? ((kolk_i64)(kolk_size)kolk__error << 32) | kolk__error_len : 0;
}

/* ------------------------------------------------------------------ the arena */
extern kolk_u8 __heap_base;
static kolk_u32 kolk__floor;  /* kolk_alloc resets the arena to here (above the parameters) */
static kolk_u32 kolk__top;    /* next free byte */
static kolk_u32 kolk__keep;   /* a kind call keeps what lies below; per-record scratch lies above */

KOLK__API int kolk__reserve(kolk_u64 end) {  /* make [0, end) addressable; 0 ok */
    kolk_u64 have = (kolk_u64)__builtin_wasm_memory_size(0) << 16;
    if (end <= have) return 0;
    if (end > 0xffff0000ull) return -1;
    return __builtin_wasm_memory_grow(0, (kolk_size)((end - have + 0xffff) >> 16)) == (kolk_size)-1 ? -1 : 0;
}
/* n bytes (8-aligned), until the current record is done; NULL when memory cannot grow. */
KOLK__API void *kolk_arena_alloc(kolk_u32 n) {
    if (!kolk__floor) kolk__floor = kolk__top = ((kolk_u32)(kolk_size)&__heap_base + 7u) & ~7u;
    kolk_u64 start = ((kolk_u64)kolk__top + 7) & ~7ull;
    if (kolk__reserve(start + n) != 0) return NULL;
    kolk__top = (kolk_u32)(start + n);
    return (void *)(kolk_size)start;
}
KOLK__API void *kolk__alloc_keep(kolk_u32 n) {  /* lives for the whole call */
    void *p = kolk_arena_alloc(n);
    if (p) kolk__keep = kolk__top;
    return p;
}
KOLK__EXPORT("kolk_alloc") kolk_i32 kolk__export_alloc(kolk_i32 size) {
    kolk__error_len = 0;  /* a new host call: no message from the last one */
    if (!kolk__floor) kolk_arena_alloc(0);
    kolk__top = kolk__floor;
    void *p = kolk_arena_alloc((kolk_u32)size);
    kolk__keep = kolk__top;
    return (kolk_i32)(kolk_size)p;
}
KOLK__EXPORT("kolk_abi_version") kolk_i32 kolk__export_abi_version(void) { return KOLK_ABI_VERSION; }

/* ------------------------------------------------------------------ JSON, strict */
/* Enough to read the top-level fields of an object, without allocating a tree; strict: what
 * RFC 8259 refuses is refused (bad escapes, control characters and invalid UTF-8 in strings,
 * numbers like 01 or 1., literals other than true/false/null, trailing commas, anything after
 * the object), nested values are checked as thoroughly as the top level (at most
 * KOLK_JSON_DEPTH_MAX objects and arrays inside one another, the outer object counted), and
 * kolk_json_find refuses an object that has its field twice.
 * On a refusal the helpers set the error message (kolk_error) to what is wrong and where. */
#define KOLK_JSON_DEPTH_MAX 64
enum { KOLK_JSON_STRING = 1, KOLK_JSON_NUMBER, KOLK_JSON_OBJECT, KOLK_JSON_ARRAY, KOLK_JSON_TRUE,
       KOLK_JSON_FALSE, KOLK_JSON_NULL };
typedef struct { const kolk_u8 *start; kolk_i32 len; int type; } kolk_json_value; /* as written: a string with its quotes */
typedef struct { const kolk_u8 *p, *e, *base; int state; } kolk_json_iter;

static const kolk_u8 *kolk__json_base;  /* the document being read, for the byte positions of errors */
KOLK__API const kolk_u8 *kolk__json_fail(const char *what, const kolk_u8 *at) {
    kolk_set_error("JSON: ");
    kolk_error_append(what, -1);
    kolk_error_append(" at byte ", -1);
    kolk_error_append_i64(at - kolk__json_base);
    return NULL;
}
KOLK__API const kolk_u8 *kolk__json_ws(const kolk_u8 *p, const kolk_u8 *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
KOLK__API kolk_i32 kolk__hex4(const kolk_u8 *p) {
    kolk_i32 v = 0;
    for (int i = 0; i < 4; i++) {
        kolk_u8 c = p[i] | 32;
        v <<= 4;
        if (p[i] >= '0' && p[i] <= '9') v |= p[i] - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else return -1;
    }
    return v;
}
/* The length of the UTF-8 character at p (not ASCII), or -1: overlong forms, surrogates and
 * code points past U+10FFFF are not UTF-8. */
KOLK__API kolk_i32 kolk__utf8_char(const kolk_u8 *p, const kolk_u8 *e) {
    kolk_u8 c = p[0], lo = 0x80, hi = 0xbf;
    kolk_i32 n;
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) { n = 3; if (c == 0xe0) lo = 0xa0; else if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; if (c == 0xf0) lo = 0x90; else if (c == 0xf4) hi = 0x8f; }
    else return -1;
    if (e - p < n || p[1] < lo || p[1] > hi) return -1;
    for (kolk_i32 i = 2; i < n; i++) if ((p[i] & 0xc0) != 0x80) return -1;
    return n;
}
/* 1 if the len bytes at s are UTF-8, else 0. */
KOLK__API int kolk_utf8_valid(const void *s, kolk_i32 len) {
    const kolk_u8 *p = (const kolk_u8 *)s, *e = p + (len > 0 ? len : 0);
    kolk_i32 n;
    while (p < e) {
        if (*p < 0x80) { p++; continue; }
        if ((n = kolk__utf8_char(p, e)) < 0) return 0;
        p += n;
    }
    return 1;
}
KOLK__API const kolk_u8 *kolk__json_str_end(const kolk_u8 *p, const kolk_u8 *e) {  /* p: after the quote */
    const kolk_u8 *open = p - 1;
    kolk_i32 n;
    while (p < e) {
        kolk_u8 c = *p;
        if (c == '"') return p + 1;
        if (c == '\\') {
            kolk_u8 x = e - p >= 2 ? p[1] : 0;
            if (x == 'u') {
                if (e - p < 6 || kolk__hex4(p + 2) < 0) return kolk__json_fail("bad \\u escape", p);
                p += 6;
            } else if (x == '"' || x == '\\' || x == '/' || x == 'b' || x == 'f' || x == 'n' || x == 'r' || x == 't') {
                p += 2;
            } else {
                return kolk__json_fail("bad escape", p);
            }
        } else if (c < 0x20) {
            return kolk__json_fail("control character in a string", p);
        } else if (c < 0x80) {
            p++;
        } else if ((n = kolk__utf8_char(p, e)) > 0) {
            p += n;
        } else {
            return kolk__json_fail("invalid UTF-8 in a string", p);
        }
    }
    return kolk__json_fail("unterminated string", open);
}
KOLK__API const kolk_u8 *kolk__json_number(const kolk_u8 *p, const kolk_u8 *e) {
    const kolk_u8 *s = p;
#define KOLK__DIGIT (p < e && *p >= '0' && *p <= '9')
    if (p < e && *p == '-') p++;
    if (p < e && *p == '0') p++;
    else if (KOLK__DIGIT) while (KOLK__DIGIT) p++;
    else return kolk__json_fail("bad number", s);
    if (p < e && *p == '.') { p++; if (!KOLK__DIGIT) return kolk__json_fail("bad number", s); while (KOLK__DIGIT) p++; }
    if (p < e && (*p | 32) == 'e') {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!KOLK__DIGIT) return kolk__json_fail("bad number", s);
        while (KOLK__DIGIT) p++;
    }
#undef KOLK__DIGIT
    return p;
}
KOLK__API const kolk_u8 *kolk__json_literal(const kolk_u8 *p, const kolk_u8 *e, const char *word, kolk_u32 n) {
    if ((kolk_u32)(e - p) < n || memcmp(p, word, n) != 0) return kolk__json_fail("unexpected character", p);
    return p + n;
}
/* Check and skip one value at p, inside `outer` containers: the position after it, or NULL
 * (error set). Iterative, with one bit per open container (1: object), so depth costs no stack. */
KOLK__API const kolk_u8 *kolk__json_skip(const kolk_u8 *p, const kolk_u8 *e, int *type, kolk_u32 outer) {
    kolk_u64 objects = 0;
    kolk_u32 depth = 0;
    int first = 1;
    for (;;) {
        if (p >= e) return kolk__json_fail("a value is missing", p);
        kolk_u8 c = *p;
        if (first) {
            *type = c == '"' ? KOLK_JSON_STRING : c == '{' ? KOLK_JSON_OBJECT : c == '[' ? KOLK_JSON_ARRAY
                  : c == 't' ? KOLK_JSON_TRUE : c == 'f' ? KOLK_JSON_FALSE : c == 'n' ? KOLK_JSON_NULL : KOLK_JSON_NUMBER;
            first = 0;
        }
        if (c == '{' || c == '[') {
            if (outer + depth == KOLK_JSON_DEPTH_MAX) return kolk__json_fail("nested deeper than 64", p);
            if (c == '{') objects |= 1ull << depth; else objects &= ~(1ull << depth);
            depth++;
            p = kolk__json_ws(p + 1, e);
            if (p < e && *p == (c == '{' ? '}' : ']')) { p++; depth--; goto after_value; }
            if (c == '{') goto member;
            continue;
        }
        if (c == '"') p = kolk__json_str_end(p + 1, e);
        else if (c == 't') p = kolk__json_literal(p, e, "true", 4);
        else if (c == 'f') p = kolk__json_literal(p, e, "false", 5);
        else if (c == 'n') p = kolk__json_literal(p, e, "null", 4);
        else if (c == '-' || (c >= '0' && c <= '9')) p = kolk__json_number(p, e);
        else return kolk__json_fail("unexpected character", p);
        if (!p) return NULL;
    after_value:
        if (depth == 0) return p;
        p = kolk__json_ws(p, e);
        {
            int in_object = (int)(objects >> (depth - 1)) & 1;
            if (p < e && *p == ',') {
                p = kolk__json_ws(p + 1, e);
                if (in_object) goto member;
                continue;
            }
            if (p < e && *p == (in_object ? '}' : ']')) { p++; depth--; goto after_value; }
            return kolk__json_fail(p >= e ? "unterminated object or array" : in_object ? "expected , or }"
                                                                                  : "expected , or ]", p);
        }
    member:
        if (p >= e || *p != '"') return kolk__json_fail("expected a string key", p);
        if (!(p = kolk__json_str_end(p + 1, e))) return NULL;
        p = kolk__json_ws(p, e);
        if (p >= e || *p != ':') return kolk__json_fail("expected :", p);
        p = kolk__json_ws(p + 1, e);
    }
}
/* Check that the len bytes at json are one JSON value (whitespace around it allowed): 0 ok,
 * -1 not (error set). */
KOLK__API int kolk_json_check(const void *json, kolk_i32 len) {
    const kolk_u8 *p = (const kolk_u8 *)json, *e = p + (len > 0 ? len : 0);
    int type;
    kolk__json_base = p;
    if (!(p = kolk__json_skip(kolk__json_ws(p, e), e, &type, 0))) return -1;
    return kolk__json_ws(p, e) == e ? 0 : (kolk__json_fail("trailing data after the value", p), -1);
}
/* Iterate the members of a JSON object: kolk_json_begin 0 ok / -1 not an object; then
 * kolk_json_next gives 1 and a member (key: a string value), 0 at the end, -1 if malformed
 * (including anything but whitespace after the closing brace). Members come as written:
 * duplicate keys each come once. */
KOLK__API int kolk_json_begin(kolk_json_iter *it, const void *json, kolk_i32 len) {
    it->base = kolk__json_base = (const kolk_u8 *)json;
    it->e = it->base + (len > 0 ? len : 0);
    it->p = kolk__json_ws(it->base, it->e);
    it->state = 0;
    if (it->p >= it->e || *it->p != '{') {
        kolk__json_fail(len < 0 ? "null, not an object" : it->p >= it->e ? "empty, not an object" : "not an object",
                        it->p);
        return -1;
    }
    it->p = kolk__json_ws(it->p + 1, it->e);
    return 0;
}
KOLK__API int kolk_json_next(kolk_json_iter *it, kolk_json_value *key, kolk_json_value *value) {
    const kolk_u8 *p = it->p, *e = it->e, *end;
    if (it->state == 2) return 0;
    kolk__json_base = it->base;
    if (p < e && *p == '}') {
        const kolk_u8 *rest = kolk__json_ws(p + 1, e);
        if (rest != e) { kolk__json_fail("trailing data after the object", rest); return -1; }
        it->state = 2;
        return 0;
    }
    if (it->state == 1) {
        if (p >= e || *p != ',') { kolk__json_fail(p >= e ? "unterminated object" : "expected , or }", p); return -1; }
        p = kolk__json_ws(p + 1, e);
    }
    if (p >= e || *p != '"') { kolk__json_fail("expected a string key", p); return -1; }
    if (!(end = kolk__json_str_end(p + 1, e))) return -1;
    key->start = p; key->len = (kolk_i32)(end - p); key->type = KOLK_JSON_STRING;
    p = kolk__json_ws(end, e);
    if (p >= e || *p != ':') { kolk__json_fail("expected :", p); return -1; }
    p = kolk__json_ws(p + 1, e);
    if (!(end = kolk__json_skip(p, e, &value->type, 1))) return -1;  /* inside the object */
    value->start = p; value->len = (kolk_i32)(end - p);
    it->p = kolk__json_ws(end, e);
    it->state = 1;
    return 1;
}
/* Decode the escapes of a JSON string's content (without its quotes) into dst (len bytes
 * suffice); the decoded length, or -1 for a bad escape or a lone surrogate. \uXXXX becomes UTF-8. */
KOLK__API kolk_i32 kolk_json_unescape(const void *src, kolk_i32 len, char *dst) {
    const kolk_u8 *p = (const kolk_u8 *)src, *e = p + len;
    kolk_u8 *d = (kolk_u8 *)dst;
    while (p < e) {
        if (*p != '\\') { *d++ = *p++; continue; }
        if (e - p < 2) return -1;
        kolk_u8 c = p[1];
        kolk_i32 cp;
        p += 2;
        if (c == 'n') *d++ = '\n'; else if (c == 't') *d++ = '\t'; else if (c == 'r') *d++ = '\r';
        else if (c == 'b') *d++ = '\b'; else if (c == 'f') *d++ = '\f';
        else if (c == '"' || c == '\\' || c == '/') *d++ = c;
        else if (c != 'u' || e - p < 4 || (cp = kolk__hex4(p)) < 0) return -1;
        else {
            p += 4;
            if (cp >= 0xdc00 && cp < 0xe000) return -1;
            if (cp >= 0xd800 && cp < 0xdc00) {  /* a surrogate pair */
                kolk_i32 lo = e - p >= 6 && p[0] == '\\' && p[1] == 'u' ? kolk__hex4(p + 2) : -1;
                if (lo < 0xdc00 || lo >= 0xe000) return -1;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            if (cp < 0x80) *d++ = (kolk_u8)cp;
            else if (cp < 0x800) { *d++ = (kolk_u8)(0xc0 | cp >> 6); *d++ = (kolk_u8)(0x80 | (cp & 63)); }
            else if (cp < 0x10000) { *d++ = (kolk_u8)(0xe0 | cp >> 12); *d++ = (kolk_u8)(0x80 | (cp >> 6 & 63));
                                     *d++ = (kolk_u8)(0x80 | (cp & 63)); }
            else { *d++ = (kolk_u8)(0xf0 | cp >> 18); *d++ = (kolk_u8)(0x80 | (cp >> 12 & 63));
                   *d++ = (kolk_u8)(0x80 | (cp >> 6 & 63)); *d++ = (kolk_u8)(0x80 | (cp & 63)); }
        }
    }
    return (kolk_i32)(d - (kolk_u8 *)dst);
}
/* 1 if the key (a string value from kolk_json_next) is field (field_len -1: a C string), its
 * escapes decoded: "p\u0077" is the key pw. 0 if not, -1 if an escape is a lone surrogate
 * (error set): such a key is not text, and no field name can be compared with it. */
KOLK__API int kolk_json_key_is(const kolk_json_value *key, const char *field, kolk_i32 field_len) {
    const kolk_u8 *s = key->start + 1;
    kolk_i32 n = key->len - 2;
    if (field_len < 0) field_len = (kolk_i32)kolk_strlen(field);
    if (kolk_find(s, n, "\\", 1) < 0) return n == field_len && memcmp(s, field, (kolk_u32)n) == 0;
    char *d = (char *)kolk_arena_alloc((kolk_u32)n);
    if (!d) return kolk_fail("JSON: no memory to decode a key");
    kolk_i32 dn = kolk_json_unescape(s, n, d);
    if (dn < 0) { kolk__json_fail("lone surrogate escape in a key", key->start); return -1; }
    return dn == field_len && memcmp(d, field, (kolk_u32)dn) == 0;
}
/* Find the top-level field named field (field_len -1: a C string): 1 found, 0 not, -1 the
 * value is not one JSON object or has the field twice (error set). Reads the whole object. */
KOLK__API int kolk_json_find(const void *json, kolk_i32 len, const char *field, kolk_i32 field_len,
                             kolk_json_value *value) {
    kolk_json_iter it;
    kolk_json_value k, v;
    int rc, is, found = 0;
    if (field_len < 0) field_len = (kolk_i32)kolk_strlen(field);
    if (kolk_json_begin(&it, json, len) != 0) return -1;
    while ((rc = kolk_json_next(&it, &k, &v)) == 1) {
        if ((is = kolk_json_key_is(&k, field, field_len)) < 0) return -1;
        if (!is) continue;
        if (found) { kolk__error3("JSON: the field `", field, field_len, "` is there twice"); return -1; }
        *value = v;
        found = 1;
    }
    return rc < 0 ? -1 : found;
}

/* ------------------------------------------------------------------ records */
typedef struct {
    kolk_i64 offset, timestamp;           /* absolute */
    kolk_u32 offset_delta;                /* from the batch's base offset */
    kolk_i64 timestamp_delta;             /* from the batch's first timestamp */
    const kolk_u8 *key; kolk_i32 key_len;     /* key_len -1: a null key */
    const kolk_u8 *value; kolk_i32 value_len; /* value_len -1: a null value */
    kolk_u32 header_count;
    const kolk_u8 *headers; kolk_u32 headers_len; /* the encoded headers, after header_count */
    kolk_u32 index;                       /* 0-based, in the input batch */
    const kolk_u8 *raw; kolk_u32 raw_len; /* the whole encoded record */
} kolk_record;

typedef struct {
    const kolk_u8 *key; kolk_i32 key_len;     /* -1: null */
    const kolk_u8 *value; kolk_i32 value_len; /* -1: null */
    kolk_u32 header_count;
    const kolk_u8 *headers; kolk_u32 headers_len;
} kolk_output;

KOLK__API void kolk_set_key(kolk_output *o, const void *p, kolk_i32 n) { o->key = (const kolk_u8 *)p; o->key_len = n; }
KOLK__API void kolk_set_value(kolk_output *o, const void *p, kolk_i32 n) { o->value = (const kolk_u8 *)p; o->value_len = n; }

/* Header i of a record: 0 and its name and value (value_len -1: null), or -1 if out of range. */
KOLK__API int kolk_header_at(const kolk_u8 *headers, kolk_u32 count, kolk_u32 i, const char **name,
                             kolk_u32 *name_len, const kolk_u8 **value, kolk_i32 *value_len) {
    const kolk_u8 *p = headers;
    for (kolk_u32 h = 0; h < count; h++) {
        kolk_u32 nl = kolk_get_u32(p);
        kolk_i32 vl = kolk_get_i32(p + 4 + nl);
        if (h == i) {
            *name = (const char *)p + 4; *name_len = nl; *value = p + 8 + nl; *value_len = vl;
            return 0;
        }
        p += 8 + nl + (vl > 0 ? (kolk_u32)vl : 0);
    }
    return -1;
}
/* The value of the first header named name (a C string): 0 found, -1 not. */
KOLK__API int kolk_header(const kolk_record *r, const char *name, const kolk_u8 **value, kolk_i32 *value_len) {
    const char *n; kolk_u32 nl, want = kolk_strlen(name);
    for (kolk_u32 i = 0; kolk_header_at(r->headers, r->header_count, i, &n, &nl, value, value_len) == 0; i++)
        if (nl == want && memcmp(n, name, nl) == 0) return 0;
    return -1;
}
/* Add a header to an output (the new header list lives in the arena): 0 ok, -1 no memory. */
KOLK__API int kolk_add_header(kolk_output *o, const char *name, const void *value, kolk_i32 value_len) {
    kolk_u32 nl = kolk_strlen(name), vl = value_len > 0 ? (kolk_u32)value_len : 0;
    kolk_u8 *p = (kolk_u8 *)kolk_arena_alloc(o->headers_len + 8 + nl + vl);
    if (!p) return kolk_fail("kolk_add_header: out of memory (the host's memory cap)");
    memcpy(p, o->headers, o->headers_len);
    kolk_u8 *q = p + o->headers_len;
    kolk_put_u32(q, nl); memcpy(q + 4, name, nl);
    kolk_put_u32(q + 4 + nl, (kolk_u32)(value_len < 0 ? -1 : value_len)); memcpy(q + 8 + nl, value, vl);
    o->headers = p; o->headers_len += 8 + nl + vl; o->header_count++;
    return 0;
}

/* Parse the record at p; the position after it, or NULL if it is not well-formed. */
KOLK__API const kolk_u8 *kolk__read_record(const kolk_u8 *p, const kolk_u8 *end, kolk_record *r) {
    if (end - p < 29) return NULL;
    kolk_u32 length = kolk_get_u32(p);
    if (length < 25 || length > (kolk_u32)(end - p) - 4) return NULL;
    const kolk_u8 *q = p + 5, *rend = p + 4 + length;
    r->raw = p; r->raw_len = 4 + length;
    r->timestamp_delta = (kolk_i64)kolk_get_u64(q);
    r->offset_delta = kolk_get_u32(q + 8);
    r->key_len = kolk_get_i32(q + 12);
    q += 16;
    if (r->key_len < -1 || (r->key_len > 0 && (kolk_u32)r->key_len > (kolk_u32)(rend - q) - 8)) return NULL;
    r->key = q; q += r->key_len > 0 ? r->key_len : 0;
    r->value_len = kolk_get_i32(q);
    q += 4;
    if (r->value_len < -1 || (r->value_len > 0 && (kolk_u32)r->value_len > (kolk_u32)(rend - q) - 4)) return NULL;
    r->value = q; q += r->value_len > 0 ? r->value_len : 0;
    r->header_count = kolk_get_u32(q);
    q += 4;
    r->headers = q;
    for (kolk_u32 h = 0; h < r->header_count; h++) {
        if (rend - q < 8) return NULL;
        kolk_u32 nl = kolk_get_u32(q);
        if (nl > (kolk_u32)(rend - q) - 8) return NULL;
        kolk_i32 vl = kolk_get_i32(q + 4 + nl);
        q += 8 + nl;
        if (vl < -1 || (vl > 0 && (kolk_u32)vl > (kolk_u32)(rend - q))) return NULL;
        q += vl > 0 ? vl : 0;
    }
    if (q != rend) return NULL;
    r->headers_len = (kolk_u32)(rend - r->headers);
    return rend;
}

/* ------------------------------------------------------------------ output */
typedef struct { kolk_u8 *buf; kolk_u32 len, cap, count; const kolk_record *in; } kolk__out;
typedef kolk__out kolk_emitter;

KOLK__API int kolk__out_room(kolk__out *o, kolk_u64 n) {  /* 0 ok; grows by moving to the top */
    if (o->len + n <= o->cap) return 0;
    kolk_u64 cap = o->cap * 2ull > o->len + n ? o->cap * 2ull : o->len + n + 256;
    if (cap > 0x7fffffffull) return -1;
    kolk_u8 *b = (kolk_u8 *)kolk__alloc_keep((kolk_u32)cap);
    if (!b) return -1;
    memcpy(b, o->buf, o->len);
    o->buf = b; o->cap = (kolk_u32)cap;
    return 0;
}
/* Append a record with the input record's offset and timestamp deltas. */
KOLK__API kolk_i64 kolk__write(kolk__out *o, const kolk_output *r) {
    if (r->key_len < -1 || r->value_len < -1) {
        kolk_set_error("record "); kolk_error_append_i64(o->in->index);
        kolk_error_append(": an output key or value length is below -1", -1);
        return KOLK_ERR_BAD_OUTPUT;
    }
    kolk_u32 kl = r->key_len > 0 ? (kolk_u32)r->key_len : 0, vl = r->value_len > 0 ? (kolk_u32)r->value_len : 0;
    kolk_u64 size = 29ull + kl + vl + r->headers_len;
    if (kolk__out_room(o, size) != 0) {
        kolk_set_error("record "); kolk_error_append_i64(o->in->index);
        kolk_error_append(": out of memory for the output (the host's memory cap)", -1);
        return KOLK_ERR_NO_MEMORY;
    }
    kolk_u8 *p = o->buf + o->len;
    kolk_put_u32(p, (kolk_u32)size - 4);
    p[4] = 0;
    kolk_put_u64(p + 5, (kolk_u64)o->in->timestamp_delta);
    kolk_put_u32(p + 13, o->in->offset_delta);
    kolk_put_u32(p + 17, (kolk_u32)r->key_len);
    memcpy(p + 21, r->key, kl); p += 21 + kl;
    kolk_put_u32(p, (kolk_u32)r->value_len);
    memcpy(p + 4, r->value, vl); p += 4 + vl;
    kolk_put_u32(p, r->header_count);
    memcpy(p + 4, r->headers, r->headers_len);
    o->len += (kolk_u32)size; o->count++;
    return 0;
}
/* array_map: emit one record with the input's offset and headers. 0 ok, negative: return it. */
KOLK__API int kolk_emit(kolk_emitter *em, const void *key, kolk_i32 key_len, const void *value, kolk_i32 value_len) {
    kolk_output o = {(const kolk_u8 *)key, key_len, (const kolk_u8 *)value, value_len,
                     em->in->header_count, em->in->headers, em->in->headers_len};
    return kolk__write(em, &o) == 0 ? 0 : -1;  /* the message is set */
}
KOLK__API int kolk_emit_output(kolk_emitter *em, const kolk_output *o) { return kolk__write(em, o) == 0 ? 0 : -1; }

/* ------------------------------------------------------------------ the accumulator */
typedef struct { kolk_u8 *data; kolk_u32 len, cap; } kolk_acc;

KOLK__API int kolk_acc_reserve(kolk_acc *a, kolk_u32 cap) {  /* 0 ok, -1 no memory */
    if (cap <= a->cap) return 0;
    kolk_u32 c = a->cap * 2 > cap ? a->cap * 2 : cap + 64;
    kolk_u8 *b = (kolk_u8 *)kolk__alloc_keep(c);
    if (!b) return kolk_fail("the accumulator: out of memory (the host's memory cap)");
    memcpy(b, a->data, a->len);
    a->data = b; a->cap = c;
    return 0;
}
/* Replace `remove` bytes at pos by the insert_len bytes at insert (which may lie in the acc). */
KOLK__API int kolk_acc_splice(kolk_acc *a, kolk_u32 pos, kolk_u32 remove, const void *insert, kolk_u32 insert_len) {
    if (pos > a->len || remove > a->len - pos) return kolk_fail("kolk_acc_splice: the range is outside the accumulator");
    const kolk_u8 *ins = (const kolk_u8 *)insert;
    if (insert_len && ins >= a->data && ins < a->data + a->cap) {  /* copy first: the acc moves */
        kolk_u8 *t = (kolk_u8 *)kolk_arena_alloc(insert_len);
        if (!t) return kolk_fail("the accumulator: out of memory (the host's memory cap)");
        memcpy(t, ins, insert_len); ins = t;
    }
    kolk_u32 len = a->len - remove + insert_len;
    if (kolk_acc_reserve(a, len) != 0) return -1;
    memmove(a->data + pos + insert_len, a->data + pos + remove, a->len - pos - remove);
    memcpy(a->data + pos, ins, insert_len);
    a->len = len;
    return 0;
}
KOLK__API int kolk_acc_append(kolk_acc *a, const void *p, kolk_u32 n) { return kolk_acc_splice(a, a->len, 0, p, n); }

/* ------------------------------------------------------------------ parameters */
typedef struct { const char *key, *value; kolk_u32 key_len, value_len; } kolk__param;
static kolk__param kolk__params[KOLK_PARAMS_MAX];
static kolk_u32 kolk__param_count;

/* The value (NUL-terminated) of parameter key, its length in *len; NULL if not given. */
KOLK__API const char *kolk_param(const char *key, kolk_i32 *len) {
    kolk_u32 n = kolk_strlen(key);
    for (kolk_u32 i = 0; i < kolk__param_count; i++)
        if (kolk__params[i].key_len == n && memcmp(kolk__params[i].key, key, n) == 0) {
            if (len) *len = (kolk_i32)kolk__params[i].value_len;
            return kolk__params[i].value;
        }
    return NULL;
}
KOLK__API kolk_u32 kolk_param_count(void) { return kolk__param_count; }

/* Parameter helpers for init: each sets the error message (kolk_error) naming the parameter
 * when it refuses, so `return 1` from init tells the client which parameter was wrong. */

/* The value of a required parameter, or NULL with the message "missing parameter `key`". */
KOLK__API const char *kolk_param_required(const char *key, kolk_i32 *len) {
    const char *v = kolk_param(key, len);
    if (!v) kolk__error3("missing parameter `", key, -1, "`");
    return v;
}
/* An integer parameter in [min, max]: 1 given (*out set), 0 not given (*out unchanged: set
 * your default first), -1 not an integer or out of range (message set). */
KOLK__API int kolk_param_i64(const char *key, kolk_i64 min, kolk_i64 max, kolk_i64 *out) {
    kolk_i32 len;
    kolk_i64 v;
    const char *text = kolk_param(key, &len);
    if (!text) return 0;
    if (kolk_parse_i64(text, len, &v) != 0) {
        kolk__error3("parameter `", key, -1, "`: `"); kolk_error_append(text, len);
        kolk_error_append("` is not an integer", -1);
        return -1;
    }
    if (v < min || v > max) {
        kolk__error3("parameter `", key, -1, "`: "); kolk_error_append_i64(v);
        kolk_error_append(" is outside ", -1); kolk_error_append_i64(min);
        kolk_error_append("..", 2); kolk_error_append_i64(max);
        return -1;
    }
    *out = v;
    return 1;
}
/* A parameter that is "true" or "false": 1 given (*out 1 or 0), 0 not given, -1 otherwise. */
KOLK__API int kolk_param_bool(const char *key, int *out) {
    kolk_i32 len;
    const char *text = kolk_param(key, &len);
    if (!text) return 0;
    if (kolk_equal(text, len, "true", 4) || kolk_equal(text, len, "false", 5)) { *out = text[0] == 't'; return 1; }
    kolk__error3("parameter `", key, -1, "`: `"); kolk_error_append(text, len);
    kolk_error_append("` is not true or false", -1);
    return -1;
}
/* Refuse a parameter this module does not know, so a typo is not silently ignored: known is
 * a NULL-terminated list of names; `initial` (the host's, for an aggregate) is always known.
 * 0 ok, -1 with the message "unknown parameter `x` (this module takes: a, b)". */
KOLK__API int kolk_params_known(const char *const *known) {
    for (kolk_u32 i = 0; i < kolk__param_count; i++) {
        const kolk__param *pr = &kolk__params[i];
        int ok = kolk_equal(pr->key, (kolk_i32)pr->key_len, "initial", 7);
        for (const char *const *k = known; *k && !ok; k++) ok = kolk_equal(pr->key, (kolk_i32)pr->key_len, *k, (kolk_i32)kolk_strlen(*k));
        if (ok) continue;
        kolk__error3("unknown parameter `", pr->key, (kolk_i32)pr->key_len, "` (this module takes: ");
        for (const char *const *k = known; *k; k++) { if (k != known) kolk_error_append(", ", 2); kolk_error_append(*k, -1); }
        if (!*known) kolk_error_append("none", 4);
        kolk_error_append(")", 1);
        return -1;
    }
    return 0;
}

/* Copy the init input's parameters into memory the arena keeps for good: 0 ok, -1 not. */
KOLK__API int kolk__save_params(kolk_u32 ptr, kolk_u32 len) {
    const kolk_u8 *p = (const kolk_u8 *)(kolk_size)ptr, *end = p + len;
    if (len < 4) return kolk_fail("the host's parameters are shorter than their count");
    if (kolk_get_u32(p) > KOLK_PARAMS_MAX) return kolk_fail("more than 64 parameters");
    kolk_u32 count = kolk_get_u32(p);
    char *copy = (char *)kolk_arena_alloc(len + 2 * count);  /* room for the NULs */
    if (!copy) return kolk_fail("out of memory for the parameters (the host's memory cap)");
    p += 4;
    for (kolk_u32 i = 0; i < count; i++) {
        for (int part = 0; part < 2; part++) {
            if (end - p < 4 || kolk_get_u32(p) > (kolk_u32)(end - p) - 4)
                return kolk_fail("the host's parameters are not well-formed");
            kolk_u32 n = kolk_get_u32(p);
            memcpy(copy, p + 4, n); copy[n] = 0;
            if (part == 0) { kolk__params[i].key = copy; kolk__params[i].key_len = n; }
            else { kolk__params[i].value = copy; kolk__params[i].value_len = n; }
            copy += n + 1; p += 4 + n;
        }
    }
    kolk__param_count = count;
    kolk__floor = kolk__top;  /* the copy stays */
    return 0;
}

#define KOLK_INIT(fn) \
    KOLK__EXPORT("init") kolk_i32 kolk__export_init(kolk_i32 kolk__ptr, kolk_i32 kolk__len) { \
        if (kolk__save_params((kolk_u32)kolk__ptr, (kolk_u32)kolk__len) != 0) return KOLK_INIT_BAD_PARAMS; \
        return fn(); \
    }

/* ------------------------------------------------------------------ the kind call */
enum { KOLK__FILTER, KOLK__MAP, KOLK__FILTER_MAP, KOLK__ARRAY_MAP, KOLK__AGGREGATE };
typedef union {
    int (*filter)(const kolk_record *);
    int (*map)(const kolk_record *, kolk_output *);
    int (*array_map)(const kolk_record *, kolk_emitter *);
    int (*aggregate)(kolk_acc *, const kolk_record *, kolk_output *);
} kolk__fn;

static inline __attribute__((always_inline)) kolk_i64 kolk__run(kolk_u32 ptr, kolk_u32 len, int kind, kolk__fn fn) {
    const kolk_u8 *p = (const kolk_u8 *)(kolk_size)ptr, *end = p + len;
    kolk_acc acc = {0, 0, 0};
    kolk__out o = {0, 0, 0, 0, 0};
    if (len < 24) return kolk_fail("the host's input is shorter than its header"), KOLK_ERR_BAD_INPUT;
    kolk_u32 count = kolk_get_u32(p);
    kolk_i64 base_offset = (kolk_i64)kolk_get_u64(p + 8), first_ts = (kolk_i64)kolk_get_u64(p + 16);
    p += 24;
    if (kind == KOLK__AGGREGATE) {
        if (end - p < 4 || kolk_get_u32(p) > (kolk_u32)(end - p) - 4)
            return kolk_fail("the host's accumulator runs past its input"), KOLK_ERR_BAD_INPUT;
        acc.len = acc.cap = kolk_get_u32(p);
        acc.data = (kolk_u8 *)p + 4;
        p += 4 + acc.len;
    }
    /* A filter's output is never larger than its input; other kinds grow as they go. */
    o.cap = 4 + (kolk_u32)(end - p) + (kind == KOLK__FILTER ? 0 : 256);
    if (!(o.buf = (kolk_u8 *)kolk__alloc_keep(o.cap)))
        return kolk_fail("out of memory for the output (the host's memory cap)"), KOLK_ERR_NO_MEMORY;
    o.len = 4;
    kolk_record r;
    for (kolk_u32 i = 0; i < count; i++) {
        if (!(p = kolk__read_record(p, end, &r))) {
            kolk_set_error("the host's input: record "); kolk_error_append_i64(i);
            kolk_error_append(" is not well-formed", -1);
            return KOLK_ERR_BAD_INPUT;
        }
        r.index = i;
        kolk__error_len = 0;  /* a message belongs to the record that failed */
        r.offset = base_offset + r.offset_delta;
        r.timestamp = first_ts + r.timestamp_delta;
        o.in = &r;
        kolk_output out = {r.key, r.key_len, r.value, r.value_len, r.header_count, r.headers, r.headers_len};
        int rc;
        kolk_i64 w = 0;
        if (kind == KOLK__FILTER) {
            rc = fn.filter(&r);
            if (rc > 0) {
                memcpy(o.buf + o.len, r.raw, r.raw_len);
                o.len += r.raw_len; o.count++;
            }
        } else if (kind == KOLK__MAP || kind == KOLK__FILTER_MAP) {
            rc = fn.map(&r, &out);
            if (rc > 0 || (rc == 0 && kind == KOLK__MAP)) w = kolk__write(&o, &out);
        } else if (kind == KOLK__ARRAY_MAP) {
            rc = fn.array_map(&r, &o);
        } else {
            out.value_len = KOLK_VALUE_ACC;
            rc = fn.aggregate(&acc, &r, &out);
            if (out.value_len == KOLK_VALUE_ACC) { out.value = acc.data; out.value_len = (kolk_i32)acc.len; }
            if (rc >= 0) w = kolk__write(&o, &out);
        }
        if (rc < 0) return -1 - (kolk_i64)i;
        if (w < 0) return w;
        kolk__top = kolk__keep;  /* this record's scratch memory goes */
    }
    if (p != end) return kolk_fail("the host's input has bytes after its last record"), KOLK_ERR_BAD_INPUT;
    kolk_put_u32(o.buf, o.count);
    if (kind == KOLK__AGGREGATE) {  /* the output starts with the new accumulator */
        kolk_u8 *b = (kolk_u8 *)kolk_arena_alloc(4 + acc.len + o.len);
        if (!b) return kolk_fail("out of memory for the output (the host's memory cap)"), KOLK_ERR_NO_MEMORY;
        kolk_put_u32(b, acc.len);
        memcpy(b + 4, acc.data, acc.len);
        memcpy(b + 4 + acc.len, o.buf, o.len);
        o.buf = b; o.len += 4 + acc.len;
    }
    return ((kolk_i64)(kolk_size)o.buf << 32) | o.len;
}

#define KOLK__KIND(name, member, kind, fn) \
    KOLK__EXPORT(name) kolk_i64 kolk__export_kind(kolk_i32 kolk__ptr, kolk_i32 kolk__len) { \
        kolk__fn kolk__f; /* names of the kolk__ kind, so they never hide the author's */ \
        kolk__f.member = fn; \
        return kolk__run((kolk_u32)kolk__ptr, (kolk_u32)kolk__len, kind, kolk__f); \
    }
#define KOLK_FILTER(fn) KOLK__KIND("filter", filter, KOLK__FILTER, fn)
#define KOLK_MAP(fn) KOLK__KIND("map", map, KOLK__MAP, fn)
#define KOLK_FILTER_MAP(fn) KOLK__KIND("filter_map", map, KOLK__FILTER_MAP, fn)
#define KOLK_ARRAY_MAP(fn) KOLK__KIND("array_map", array_map, KOLK__ARRAY_MAP, fn)
#define KOLK_AGGREGATE(fn) KOLK__KIND("aggregate", aggregate, KOLK__AGGREGATE, fn)

#endif
