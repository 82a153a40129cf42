/* pcns-sender: the request body (README "The request the sender makes") and its Standard
 * Webhooks signature (docs/hooks.md): base64, JSON strings, RFC 3339 times, HMAC-SHA256 by CNG. */
#include "sender_internal.h"
/* after it: sender_internal.h brings winsock2.h, which must precede windows.h */
#include "pcns_cng.h"

#include <bcrypt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef NT_SUCCESS
#define NT_SUCCESS(s) (((NTSTATUS)(s)) >= 0)
#endif

/* ---------------------------------------------------------------- buffers */

BOOL buf_reserve(sender_buf *b, size_t extra)
{
    size_t want, cap;
    char *p;

    if (extra > SIZE_MAX - b->len - 1)
        return FALSE;
    want = b->len + extra + 1;
    if (want <= b->cap)
        return TRUE;
    cap = b->cap ? b->cap : 256;
    while (cap < want) {
        if (cap > SIZE_MAX / 2)
            return FALSE;
        cap *= 2;
    }
    p = malloc(cap);
    if (!p)
        return FALSE;
    if (b->p) {
        memcpy(p, b->p, b->len);
        SecureZeroMemory(b->p, b->cap);
        free(b->p);
    }
    b->p = p;
    b->cap = cap;
    b->p[b->len] = 0;
    return TRUE;
}

BOOL buf_append(sender_buf *b, const void *data, size_t n)
{
    if (!buf_reserve(b, n))
        return FALSE;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return TRUE;
}

BOOL buf_appends(sender_buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

void buf_free(sender_buf *b)
{
    if (b->p) {
        SecureZeroMemory(b->p, b->cap);
        free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---------------------------------------------------------------- base64 */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void b64_encode(const BYTE *in, size_t n, char *out)
{
    size_t i = 0;
    char *o = out;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = B64[v >> 18 & 63];
        *o++ = B64[v >> 12 & 63];
        *o++ = B64[v >> 6 & 63];
        *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = B64[v >> 18 & 63];
        *o++ = B64[v >> 12 & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = B64[v >> 18 & 63];
        *o++ = B64[v >> 12 & 63];
        *o++ = B64[v >> 6 & 63];
        *o++ = '=';
    }
    *o = 0;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

BOOL b64_decode(const char *in, size_t n, BYTE *out, size_t cap, size_t *out_len)
{
    size_t i, o = 0;

    *out_len = 0;
    if (n == 0 || n % 4 != 0)
        return FALSE;
    for (i = 0; i < n; i += 4) {
        int v[4], k, pad = 0;
        for (k = 0; k < 4; k++) {
            char c = in[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad) /* "=" followed by data */
                return FALSE;
            v[k] = b64_value(c);
            if (v[k] < 0)
                return FALSE;
        }
        {
            uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
            size_t emit = 3 - (size_t)pad;
            if (o + emit > cap)
                return FALSE;
            out[o++] = (BYTE)(w >> 16);
            if (emit > 1)
                out[o++] = (BYTE)(w >> 8);
            if (emit > 2)
                out[o++] = (BYTE)w;
        }
    }
    *out_len = o;
    return TRUE;
}

/* ---------------------------------------------------------------- JSON */

BOOL json_append_string(sender_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;

    if (!buf_append(b, "\"", 1))
        return FALSE;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t elen = 0;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (elen) {
            if (run && !buf_append(b, s + i - run, run))
                return FALSE;
            run = 0;
            if (!buf_append(b, esc, elen))
                return FALSE;
        } else {
            run++; /* UTF-8 passes through as it is */
        }
    }
    if (run && !buf_append(b, s + n - run, run))
        return FALSE;
    return buf_append(b, "\"", 1);
}

#define FILETIME_UNIX_EPOCH 116444736000000000ULL

BOOL filetime_rfc3339(ULONGLONG ft, char out[32])
{
    FILETIME f;
    SYSTEMTIME st;

    f.dwLowDateTime = (DWORD)ft;
    f.dwHighDateTime = (DWORD)(ft >> 32);
    if (!FileTimeToSystemTime(&f, &st))
        return FALSE;
    snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02u.%07uZ", st.wYear, st.wMonth, st.wDay,
             st.wHour, st.wMinute, st.wSecond, (unsigned)(ft % 10000000ULL));
    return TRUE;
}

BOOL build_change_body(const change_fields *c, sender_buf *out)
{
    char when[32];
    size_t b64n;

    if (!filetime_rfc3339(c->changed_at, when))
        return FALSE;
    if (c->sealed_len > (SIZE_MAX / 4) * 3 - 3)
        return FALSE;
    b64n = b64_encoded_len(c->sealed_len);
    out->len = 0;
    if (!buf_appends(out, "{\"user\": ") || !json_append_string(out, c->user, c->user_len))
        return FALSE;
    if (c->domain && c->domain[0]) {
        if (!buf_appends(out, ", \"domain\": ") ||
            !json_append_string(out, c->domain, strlen(c->domain)))
            return FALSE;
    }
    if (c->sid && c->sid[0]) {
        if (!buf_appends(out, ", \"sid\": ") || !json_append_string(out, c->sid, strlen(c->sid)))
            return FALSE;
    }
    if (!buf_appends(out, ", \"changed_at\": \"") || !buf_appends(out, when) ||
        !buf_appends(out, "\", \"sealed\": {\"key_id\": ") ||
        !json_append_string(out, c->key_id, c->key_id_len) ||
        !buf_appends(out, ", \"ciphertext\": \"") || !buf_reserve(out, b64n + 4))
        return FALSE;
    b64_encode(c->sealed, c->sealed_len, out->p + out->len);
    out->len += b64n;
    return buf_appends(out, "\"}}");
}

/* ---------------------------------------------------------------- signature */

BOOL webhook_sign(const BYTE *key, DWORD key_len, const char *webhook_id, ULONGLONG timestamp,
                  const BYTE *body, size_t body_len, char *out, size_t out_cap)
{
    BCRYPT_ALG_HANDLE alg = NULL;
    BCRYPT_HASH_HANDLE hash = NULL;
    BYTE mac[32];
    char ts[24];
    int tsn;
    BOOL ok = FALSE;
    NTSTATUS st;

    if (out_cap < 3 + b64_encoded_len(sizeof mac) + 1 || body_len > MAXDWORD)
        return FALSE;
    tsn = snprintf(ts, sizeof ts, ".%llu.", (unsigned long long)timestamp);
    if (tsn <= 0)
        return FALSE;
    st = pcns_alg(PCNS_ALG_HMAC_SHA256, &alg); /* shared: opened once per process */
    if (!NT_SUCCESS(st))
        goto out;
    st = BCryptCreateHash(alg, &hash, NULL, 0, (PUCHAR)key, key_len, 0);
    if (!NT_SUCCESS(st))
        goto out;
    st = BCryptHashData(hash, (PUCHAR)webhook_id, (ULONG)strlen(webhook_id), 0);
    if (!NT_SUCCESS(st))
        goto out;
    st = BCryptHashData(hash, (PUCHAR)ts, (ULONG)tsn, 0);
    if (!NT_SUCCESS(st))
        goto out;
    st = BCryptHashData(hash, (PUCHAR)body, (ULONG)body_len, 0);
    if (!NT_SUCCESS(st))
        goto out;
    st = BCryptFinishHash(hash, mac, sizeof mac, 0);
    if (!NT_SUCCESS(st))
        goto out;
    memcpy(out, "v1,", 3);
    b64_encode(mac, sizeof mac, out + 3);
    ok = TRUE;
out:
    SecureZeroMemory(mac, sizeof mac);
    if (hash)
        BCryptDestroyHash(hash);
    return ok;
}

/* ---------------------------------------------------------------- problem+json */

/* Finds "detail": "..." at the top level well enough for pcns' own answers, and keeps only
 * printable characters (pcns never echoes request values in it, but we log it). */
void problem_detail(const char *json, size_t n, char *out, size_t cap)
{
    const char *key = "\"detail\"";
    size_t klen = strlen(key), i, o = 0;

    if (!cap)
        return;
    out[0] = 0;
    for (i = 0; i + klen <= n; i++) {
        if (memcmp(json + i, key, klen) != 0)
            continue;
        i += klen;
        while (i < n && (json[i] == ' ' || json[i] == ':' || json[i] == '\t'))
            i++;
        if (i >= n || json[i] != '"')
            return;
        for (i++; i < n && json[i] != '"' && o + 1 < cap; i++) {
            unsigned char c = (unsigned char)json[i];
            if (c == '\\' && i + 1 < n) {
                i++;
                c = (unsigned char)json[i];
                if (c == 'u') { /* keep it simple: an escaped code point becomes '?' */
                    i += 4;
                    c = '?';
                } else if (c == 'n' || c == 't' || c == 'r' || c == 'b' || c == 'f') {
                    c = ' ';
                }
            }
            if (c < 0x20 || c == 0x7f)
                c = ' ';
            out[o++] = (char)c;
        }
        out[o] = 0;
        return;
    }
}
