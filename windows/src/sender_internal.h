/* pcns-sender: the interfaces between sender.c, http.c, webhook.c, service.c and sender_*.c.
 * Private to the sender; the formats shared with the filter live in include/. */
#ifndef PCNS_SENDER_INTERNAL_H
#define PCNS_SENDER_INTERNAL_H

#include <winsock2.h>
#include <windows.h>
#include <winhttp.h>
#include <wincrypt.h>
#include <stddef.h>
#include <stdio.h>

#include "pcns_config.h"

/* ---- a growable byte buffer (the sender links the CRT; the filter never sees this) ---- */
typedef struct sender_buf {
    char *p;
    size_t len;
    size_t cap;
} sender_buf;

BOOL buf_reserve(sender_buf *b, size_t extra);
BOOL buf_append(sender_buf *b, const void *data, size_t n);
BOOL buf_appends(sender_buf *b, const char *s);
void buf_free(sender_buf *b); /* wipes before freeing */

/* ---- webhook.c: JSON, base64, time, Standard Webhooks signature ---- */
size_t b64_encoded_len(size_t n);
void b64_encode(const BYTE *in, size_t n, char *out); /* writes b64_encoded_len(n) chars + NUL */
/* Strict standard base64 (padding required, no whitespace); FALSE on anything else. */
BOOL b64_decode(const char *in, size_t n, BYTE *out, size_t cap, size_t *out_len);
BOOL json_append_string(sender_buf *b, const char *utf8, size_t n);
/* FILETIME (100 ns since 1601, UTC) -> "YYYY-MM-DDThh:mm:ss.fffffffZ" (28 chars + NUL). */
BOOL filetime_rfc3339(ULONGLONG ft, char out[32]);

typedef struct change_fields {
    const char *user;
    size_t user_len;
    const char *domain; /* UTF-8 or NULL */
    const char *sid;    /* "S-1-5-21-...-RID" or NULL */
    ULONGLONG changed_at;
    const char *key_id;
    size_t key_id_len;
    const BYTE *sealed;
    size_t sealed_len;
} change_fields;

BOOL build_change_body(const change_fields *c, sender_buf *out);
/* "v1," + base64(HMAC-SHA256(key, id "." ts "." body)) into out (at least 48 chars). */
BOOL webhook_sign(const BYTE *key, DWORD key_len, const char *webhook_id, ULONGLONG timestamp,
                  const BYTE *body, size_t body_len, char *out, size_t out_cap);
/* The "detail" string of a problem+json answer, unescaped to printable ASCII/UTF-8, or "". */
void problem_detail(const char *json, size_t n, char *out, size_t cap);

/* ---- http.c: one WinHTTP session and connection, reused for every record ---- */
typedef struct http_client {
    HINTERNET session;
    HINTERNET connect;
    BOOL secure;
    wchar_t host[256];
    INTERNET_PORT port;
    wchar_t path[1024]; /* base path + "/v1/password-changes" */
    DWORD timeout_ms;
    BOOL has_pin;
    BYTE pin[32];
    HCERTSTORE store;
    PCCERT_CONTEXT client_cert;
    BOOL wsa_started;
} http_client;

typedef struct http_result {
    DWORD status;      /* HTTP status, 0 on a transport error */
    DWORD error;       /* Win32/WinHTTP error on a transport error */
    DWORD retry_after; /* seconds from Retry-After, 0 when absent */
    BOOL pin_mismatch; /* the server certificate is not the pinned one (nothing was sent) */
    char body[2048];   /* the start of the answer (problem+json), NUL-terminated */
    DWORD body_len;
} http_result;

/* Parses the URL; http:// only to a loopback host. Returns 0 or a Win32 error (and a message). */
DWORD http_url_check(const wchar_t *url, wchar_t *msg, size_t msg_cap);
DWORD http_open(http_client *h, const wchar_t *url, DWORD timeout_ms, const BYTE *pin /* or NULL */,
                const BYTE *client_thumbprint /* 20 bytes or NULL */);
/* headers: CRLF-separated, without the trailing CRLF. */
BOOL http_post(http_client *h, const wchar_t *headers, const BYTE *body, DWORD body_len,
               http_result *r);
void http_close(http_client *h);
LONG http_nodelay_count(void); /* sockets given TCP_NODELAY (see http.c) */
BOOL host_is_loopback(const wchar_t *host);

/* ---- sender_config.c: HKLM\SOFTWARE\pcns\Sender ---- */
#define SENDER_KEY PCNS_REG_KEY

/* The registry as pcns_config_read() (include/pcns_config.h) reads it, checked for what the
 * sender needs (Url, Source, Secret). */
typedef pcns_config sender_config;

/* *out is malloc()ed; config_free() wipes and frees it. */
DWORD config_load(sender_config **out, wchar_t *msg, size_t msg_cap);
void config_free(sender_config *c);
BOOL config_changed_since(const FILETIME *seen, FILETIME *now);
DWORD secret_unprotect(const sender_config *c, DATA_BLOB *key);
void secret_wipe(DATA_BLOB *key);
void status_write(const wchar_t *name, const wchar_t *value);
BOOL status_read(const wchar_t *name, wchar_t *out, DWORD cap);
void default_spool_dir(wchar_t *out, DWORD cap);
BOOL hex_decode_w(const wchar_t *hex, BYTE *out, size_t n);
int configure_main(int argc, wchar_t **argv);

/* ---- sender_spool.c: one spool record, through include/pcns_spool.h ---- */
typedef struct sender_record {
    DWORD rid;
    ULONGLONG changed_at; /* FILETIME, UTC */
    char webhook_id[80];  /* NUL-terminated ASCII */
    const char *source;
    size_t source_len;
    const char *user; /* UTF-8 */
    size_t user_len;
    const char *key_id;
    size_t key_id_len;
    const BYTE *sealed;
    size_t sealed_len;
    BYTE *raw; /* the file; the pointers above point into it */
    DWORD raw_len;
} sender_record;

/* Reads and checks one record. FALSE with a one-line reason when it is unreadable or corrupt;
 * *io_error is TRUE when the file could not be read at all (sharing violation, gone). */
BOOL record_load(const wchar_t *path, sender_record *r, BOOL *io_error, wchar_t *reason,
                 size_t reason_cap);
void record_free(sender_record *r);

/* ---- sender_recover.c: records left as <name>.pcs.tmp (a crash before the rename) ---- */
#define RECOVER_MIN_AGE_S 60 /* a younger temp file may be a write in progress */

/* Moves an unreadable temp file out of the spool (bad\, event 3002); `path` is its full path,
 * `name` its file name. */
typedef BOOL (*recover_bad_fn)(void *ctx, const wchar_t *path, const wchar_t *name,
                               const wchar_t *reason);

/* Every temp file in `dir` with a record's name, last written more than RECOVER_MIN_AGE_S ago:
 * one that reads back as a valid record (record_load) is renamed to its record name
 * (MoveFileExW, write-through, no overwrite; one stderr line in console mode), one that does not
 * goes to bad(). Files that cannot be read at all are left for the next call. Returns how many
 * were renamed. */
ULONG spool_recover_temps(const wchar_t *dir, recover_bad_fn bad, void *ctx);

/* ---- sender.c ---- */
void say(FILE *f, const wchar_t *fmt, ...);
extern BOOL g_console;        /* also print events to stderr */
extern HANDLE g_stop_event;   /* manual-reset; set by Ctrl-C or SERVICE_CONTROL_STOP */
void sender_event(WORD type, DWORD id, const wchar_t *fmt, ...);
/* The delivery loop of `run` and of the service; returns when g_stop_event is set. */
int sender_run_loop(void);

/* ---- service.c ---- */
int service_main_dispatch(void);

#endif
