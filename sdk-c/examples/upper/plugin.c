/*
 * c-upper: a Patchbay transform written in C against the `transform` world of wit/.
 *
 * It upper-cases the ASCII letters of UTF-8 text payloads and puts an optional prefix before
 * them. A payload that is not UTF-8, or is longer than `max_bytes`, fails with `invalid-data`
 * (the host sends it to the dead-letter channel); an empty one is dropped when `drop_empty`
 * is true; one that would not change is kept (`keep`: nothing is copied back to the host).
 *
 * `transform.h` and `transform.c` come from `wit-bindgen c --world transform wit/`
 * (sdk-c/README.md gives the commands). Memory, as wit-bindgen's C bindings define it:
 * - the arguments of an exported function belong to this code, which frees them;
 * - what it returns is freed by the bindings with free() once the host has copied it, so
 *   every string and list returned is malloc'd (or NULL with length 0);
 * - the arguments of an imported function (logging here) stay this code's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transform.h"

typedef transform_string_t string_t;
typedef patchbay_connector_types_message_t message_t;
typedef patchbay_connector_types_outcome_t outcome_t;
typedef patchbay_connector_types_error_t error_t;

#define MAX_BYTES_LIMIT (1024u * 1024u * 1024u)

/* The configuration `init` sets. One instance of the component serves one plugin instance. */
static struct {
    uint8_t *prefix;
    size_t prefix_len;
    uint64_t max_bytes;
    bool drop_empty;
} config = {NULL, 0, 1024u * 1024u, false};

/* A malloc'd copy of `len` bytes of `s` as a WIT string (NULL when empty: nothing to free). */
static string_t string_copy(const char *s, size_t len) {
    string_t out = {NULL, len};
    if (len > 0) {
        out.ptr = malloc(len);
        if (out.ptr == NULL) abort(); /* out of memory: a trap, the host starts afresh */
        memcpy(out.ptr, s, len);
    }
    return out;
}

static string_t string_of(const char *s) { return string_copy(s, strlen(s)); }

static error_t error_of(patchbay_connector_types_error_kind_t kind, const char *text) {
    error_t e = {kind, string_of(text)};
    return e;
}

static patchbay_connector_types_config_key_t key_of(const char *name, const char *description,
                                                     const char *default_value) {
    patchbay_connector_types_config_key_t key;
    key.name = string_of(name);
    key.description = string_of(description);
    key.required = false;
    key.default_value.is_some = true;
    key.default_value.val = string_of(default_value);
    return key;
}

void exports_patchbay_connector_plugin_describe(exports_patchbay_connector_plugin_metadata_t *ret) {
    ret->name = string_of("c-upper");
    ret->version = string_of("0.1.0");
    ret->description = string_of(
        "Upper-cases the ASCII letters of UTF-8 text payloads, with an optional prefix "
        "(written in C).");
    size_t n = 3;
    ret->config_keys.ptr = malloc(n * sizeof(patchbay_connector_types_config_key_t));
    if (ret->config_keys.ptr == NULL) abort();
    ret->config_keys.len = n;
    ret->config_keys.ptr[0] = key_of("prefix", "Text put before every changed payload.", "");
    ret->config_keys.ptr[1] = key_of(
        "max_bytes", "Longest payload accepted, in bytes (1 to 1073741824); longer ones fail.",
        "1048576");
    ret->config_keys.ptr[2] =
        key_of("drop_empty", "Drop empty payloads (true) or pass them on (false).", "false");
}

/* Whether `s` is the decimal text of a whole number from 1 to MAX_BYTES_LIMIT. */
static bool parse_max_bytes(const string_t *s, uint64_t *out) {
    if (s->len == 0 || s->len > 10) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s->len; i++) {
        if (s->ptr[i] < '0' || s->ptr[i] > '9') return false;
        v = v * 10 + (uint64_t)(s->ptr[i] - '0');
    }
    if (v < 1 || v > MAX_BYTES_LIMIT) return false;
    *out = v;
    return true;
}

static bool equals(const string_t *s, const char *text) {
    return s->len == strlen(text) && memcmp(s->ptr, text, s->len) == 0;
}

/* A fatal error naming the key, what a valid value looks like, and the value found. */
static error_t bad_value(const char *key, const char *expected, const string_t *found) {
    char text[256];
    int shown = found->len > 64 ? 64 : (int)found->len;
    snprintf(text, sizeof text, "config key `%s`: expected %s, got `%.*s`", key, expected, shown,
             (const char *)found->ptr);
    return error_of(PATCHBAY_CONNECTOR_TYPES_ERROR_KIND_FATAL, text);
}

bool exports_patchbay_connector_plugin_init(exports_patchbay_connector_plugin_list_config_entry_t *entries,
                                            exports_patchbay_connector_plugin_error_t *err) {
    bool ok = true;
    for (size_t i = 0; i < entries->len && ok; i++) {
        const string_t *key = &entries->ptr[i].key;
        const string_t *value = &entries->ptr[i].value;
        if (equals(key, "prefix")) {
            free(config.prefix);
            config.prefix = NULL;
            config.prefix_len = value->len;
            if (value->len > 0) {
                config.prefix = malloc(value->len);
                if (config.prefix == NULL) abort();
                memcpy(config.prefix, value->ptr, value->len);
            }
        } else if (equals(key, "max_bytes")) {
            if (!parse_max_bytes(value, &config.max_bytes)) {
                *err = bad_value("max_bytes", "a whole number of bytes from 1 to 1073741824",
                                 value);
                ok = false;
            }
        } else if (equals(key, "drop_empty")) {
            if (equals(value, "true") || equals(value, "false")) {
                config.drop_empty = equals(value, "true");
            } else {
                *err = bad_value("drop_empty", "true or false", value);
                ok = false;
            }
        } else {
            *err = bad_value("(unknown)", "one of prefix, max_bytes, drop_empty", key);
            ok = false;
        }
    }
    exports_patchbay_connector_plugin_list_config_entry_free(entries);
    if (ok) {
        string_t line = {(uint8_t *)"c-upper: ready", 14};
        patchbay_connector_logging_log(PATCHBAY_CONNECTOR_LOGGING_LEVEL_DEBUG, &line);
    }
    return ok;
}

/* The offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or `len` when all of it is. */
static size_t utf8_error_at(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint8_t lo = 0x80, hi = 0xBF; /* the range of the second byte */
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) { n = 2; lo = 0xA0; }
        else if (c == 0xED) { n = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) n = 2;
        else if (c == 0xF0) { n = 3; lo = 0x90; }
        else if (c == 0xF4) { n = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else return i;
        if (len - i <= n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += n + 1;
    }
    return len;
}

static outcome_t fail(const char *text) {
    outcome_t o;
    o.tag = PATCHBAY_CONNECTOR_TYPES_OUTCOME_FAIL;
    o.val.fail = error_of(PATCHBAY_CONNECTOR_TYPES_ERROR_KIND_INVALID_DATA, text);
    return o;
}

/* The outcome for one message. A replacement takes the input's key, headers and timestamp
 * (moved, not copied: they are emptied in `in`, which the caller frees). */
static outcome_t upper(message_t *in) {
    outcome_t o;
    char text[160];
    size_t len = in->payload.len;
    if (len > config.max_bytes) {
        snprintf(text, sizeof text, "payload is %zu bytes, more than max_bytes (%llu)", len,
                 (unsigned long long)config.max_bytes);
        return fail(text);
    }
    if (len == 0 && config.drop_empty) {
        o.tag = PATCHBAY_CONNECTOR_TYPES_OUTCOME_DROP;
        return o;
    }
    size_t bad = utf8_error_at(in->payload.ptr, len);
    if (bad < len) {
        snprintf(text, sizeof text, "payload is not UTF-8 text (byte 0x%02x at offset %zu)",
                 in->payload.ptr[bad], bad);
        return fail(text);
    }
    bool lower = false;
    for (size_t i = 0; i < len && !lower; i++)
        lower = in->payload.ptr[i] >= 'a' && in->payload.ptr[i] <= 'z';
    if (!lower && config.prefix_len == 0) {
        o.tag = PATCHBAY_CONNECTOR_TYPES_OUTCOME_KEEP;
        return o;
    }
    message_t *out = malloc(sizeof(message_t));
    if (out == NULL) abort();
    size_t out_len = config.prefix_len + len;
    out->payload.len = out_len;
    out->payload.ptr = out_len > 0 ? malloc(out_len) : NULL;
    if (out_len > 0 && out->payload.ptr == NULL) abort();
    if (config.prefix_len > 0) memcpy(out->payload.ptr, config.prefix, config.prefix_len);
    for (size_t i = 0; i < len; i++) {
        uint8_t c = in->payload.ptr[i];
        out->payload.ptr[config.prefix_len + i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 32) : c;
    }
    out->key = in->key;
    out->headers = in->headers;
    out->timestamp = in->timestamp;
    in->key.is_some = false;
    in->headers.ptr = NULL;
    in->headers.len = 0;
    o.tag = PATCHBAY_CONNECTOR_TYPES_OUTCOME_REPLACE;
    o.val.replace.ptr = out;
    o.val.replace.len = 1;
    return o;
}

void exports_patchbay_connector_transform_api_process(
    exports_patchbay_connector_transform_api_list_message_t *batch,
    exports_patchbay_connector_transform_api_list_outcome_t *ret) {
    ret->len = batch->len;
    ret->ptr = NULL;
    if (batch->len > 0) {
        ret->ptr = malloc(batch->len * sizeof(outcome_t));
        if (ret->ptr == NULL) abort();
    }
    for (size_t i = 0; i < batch->len; i++) ret->ptr[i] = upper(&batch->ptr[i]);
    exports_patchbay_connector_transform_api_list_message_free(batch);
}
