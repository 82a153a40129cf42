/* pcns-sender.exe: delivers the spool the filter writes to pcns, oldest first, signed.
 *
 *   pcns-sender configure --url URL --source ID --secret-file FILE --recipient-key-id KID
 *                         --recipient-key-file FILE [--domain NAME] [--domain-sid SID]
 *                         [--spool DIR] [--server-cert-sha256 HEX] [--client-cert-thumbprint HEX]
 *                         [--alert-age SECONDS] [--timeout-ms N]
 *   pcns-sender run [--once [--stats]]
 *   pcns-sender service                  (the SCM's entry point)
 *   pcns-sender status
 *   pcns-sender install | uninstall ...  (src/install.c)
 *
 * Delivery follows docs/hooks.md: a record is deleted only after a 202; 400 drops it (event
 * 3001); 401/403/404/413/415 keep it and back off (event 3004); a transport error, 429 or 5xx
 * keeps it and backs off with full jitter, 0.5 s doubling to 60 s, at least Retry-After (event
 * 3005, once per failure streak and then every five minutes); nothing newer is sent past a
 * record that is kept. Each pass first recovers the records a crash left as temp files
 * (src/sender_recover.c). Never logged: the body, the signature, the secret. */
#include "sender_internal.h"

#include <ntsecapi.h>
#include <sddl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "pcns_events.h"
#include "pcns_install.h"
#include "pcns_spool.h"

#define SPOOL_EVENT_NAME PCNS_SPOOL_EVENT_NAME
#define RESCAN_MS 60000u        /* the timer: rescan the spool even when nobody signalled */
#define BACKOFF_BASE_MS 500u
#define BACKOFF_CAP_MS 60000u
#define REPEAT_EVENT_MS 300000u /* 3004/3005 again while the failure lasts */
#define REPEAT_ALERT_MS 900000u /* 3003 again while the oldest change stays old */

#define FILETIME_UNIX_EPOCH 116444736000000000ULL

BOOL g_console = TRUE;
HANDLE g_stop_event;
static HANDLE g_loop_done;
static HANDLE g_event_source;

/* ------------------------------------------------------------------ output */

static char *to_utf8(const wchar_t *w)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
    char *s;
    if (n <= 0)
        return NULL;
    s = malloc((size_t)n);
    if (s && WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL) <= 0) {
        free(s);
        s = NULL;
    }
    return s;
}

/* A formatted line to stdout/stderr as UTF-8 (the CRT's wide output would lose non-ASCII). */
void say(FILE *f, const wchar_t *fmt, ...)
{
    wchar_t line[2048];
    va_list ap;
    char *u;

    va_start(ap, fmt);
    vswprintf(line, ARRAYSIZE(line), fmt, ap);
    va_end(ap);
    line[ARRAYSIZE(line) - 1] = 0;
    u = to_utf8(line);
    if (u) {
        fputs(u, f);
        free(u);
    }
    fflush(f);
}

static const wchar_t *type_name(WORD type)
{
    switch (type) {
    case EVENTLOG_ERROR_TYPE:
        return L"error";
    case EVENTLOG_WARNING_TYPE:
        return L"warning";
    default:
        return L"info";
    }
}

void sender_event(WORD type, DWORD id, const wchar_t *fmt, ...)
{
    wchar_t msg[1024];
    const wchar_t *strings[1];
    va_list ap;

    va_start(ap, fmt);
    vswprintf(msg, ARRAYSIZE(msg), fmt, ap);
    va_end(ap);
    msg[ARRAYSIZE(msg) - 1] = 0;
    if (!g_event_source)
        g_event_source = RegisterEventSourceW(NULL, PCNS_EVENT_SOURCE);
    if (g_event_source) {
        strings[0] = msg;
        /* Wine stores nothing; Windows shows the string with the source's message file. */
        ReportEventW(g_event_source, type, 0, id, NULL, 1, 0, strings, NULL);
    }
    if (g_console)
        say(stderr, L"pcns-sender: event %lu (%ls): %ls\n", (unsigned long)(id & 0xFFFF),
            type_name(type), msg);
}

/* ------------------------------------------------------------------ time, random */

static ULONGLONG now_filetime(void)
{
    FILETIME ft;
    GetSystemTimeAsFileTime(&ft);
    return (ULONGLONG)ft.dwHighDateTime << 32 | ft.dwLowDateTime;
}

static ULONGLONG unix_now(void)
{
    return (now_filetime() - FILETIME_UNIX_EPOCH) / 10000000ULL;
}

static void rfc3339_now(wchar_t out[40])
{
    char a[32];
    if (!filetime_rfc3339(now_filetime(), a))
        strcpy(a, "?");
    swprintf(out, 40, L"%hs", a);
}

static DWORD random_below(DWORD n)
{
    DWORD r = 0;
    if (n == 0)
        return 0;
    if (BCryptGenRandom(NULL, (PUCHAR)&r, sizeof r, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
        r = GetTickCount() * 2654435761u;
    return r % n;
}

/* ------------------------------------------------------------------ the spool directory */

typedef struct spool_list {
    wchar_t **names;
    size_t count;
    size_t cap;
} spool_list;

static void list_free(spool_list *l)
{
    size_t i;
    for (i = 0; i < l->count; i++)
        free(l->names[i]);
    free(l->names);
    memset(l, 0, sizeof *l);
}

static int name_cmp(const void *a, const void *b)
{
    return _wcsicmp(*(wchar_t *const *)a, *(wchar_t *const *)b);
}

static BOOL ends_with_pcs(const wchar_t *name)
{
    size_t n = wcslen(name);
    return n > 4 && _wcsicmp(name + n - 4, L".pcs") == 0;
}

/* Every *.pcs in dir, sorted by name (= by change). FALSE with GetLastError() on failure. */
static BOOL list_spool(const wchar_t *dir, spool_list *l)
{
    wchar_t pattern[MAX_PATH + 8];
    WIN32_FIND_DATAW fd;
    HANDLE h;

    memset(l, 0, sizeof *l);
    swprintf(pattern, ARRAYSIZE(pattern), L"%ls\\*.pcs", dir);
    h = FindFirstFileExW(pattern, FindExInfoBasic, &fd, FindExSearchNameMatch, NULL, 0);
    if (h == INVALID_HANDLE_VALUE) {
        DWORD e = GetLastError();
        if (e == ERROR_FILE_NOT_FOUND || e == ERROR_NO_MORE_FILES)
            return TRUE;
        return FALSE;
    }
    do {
        if (fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY || !ends_with_pcs(fd.cFileName))
            continue;
        if (!pcns_spool_parse_name(fd.cFileName, NULL))
            continue; /* not a record's name (the filter's own .tmp files never match) */
        if (l->count == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 64;
            wchar_t **n = realloc(l->names, cap * sizeof *n);
            if (!n)
                goto oom;
            l->names = n;
            l->cap = cap;
        }
        l->names[l->count] = _wcsdup(fd.cFileName);
        if (!l->names[l->count])
            goto oom;
        l->count++;
    } while (FindNextFileW(h, &fd));
    FindClose(h);
    if (l->count > 1)
        qsort(l->names, l->count, sizeof *l->names, name_cmp);
    return TRUE;
oom:
    FindClose(h);
    list_free(l);
    SetLastError(ERROR_OUTOFMEMORY);
    return FALSE;
}

static ULONGLONG file_age_seconds(const wchar_t *dir, const wchar_t *name)
{
    wchar_t path[MAX_PATH + 80];
    WIN32_FILE_ATTRIBUTE_DATA a;
    ULONGLONG ft = 0, now = now_filetime();

    if (!pcns_spool_parse_name(name, &ft)) {
        swprintf(path, ARRAYSIZE(path), L"%ls\\%ls", dir, name);
        if (GetFileAttributesExW(path, GetFileExInfoStandard, &a))
            ft = (ULONGLONG)a.ftLastWriteTime.dwHighDateTime << 32 | a.ftLastWriteTime.dwLowDateTime;
    }
    return ft && now > ft ? (now - ft) / 10000000ULL : 0;
}

/* Every file in `dir`, whatever its name (bad\ also holds temp records set aside). */
static size_t count_files(const wchar_t *dir)
{
    wchar_t pattern[MAX_PATH + 8];
    WIN32_FIND_DATAW fd;
    HANDLE h;
    size_t n = 0;

    if (swprintf(pattern, ARRAYSIZE(pattern), L"%ls\\*", dir) < 0)
        return 0;
    h = FindFirstFileExW(pattern, FindExInfoBasic, &fd, FindExSearchNameMatch, NULL, 0);
    if (h == INVALID_HANDLE_VALUE)
        return 0;
    do {
        if (!(fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY))
            n++;
    } while (FindNextFileW(h, &fd));
    FindClose(h);
    return n;
}

/* --------------------------------------------------------------- delivery */

typedef enum pass_result {
    PASS_EMPTY,    /* nothing left in the spool */
    PASS_RETRY,    /* the oldest record is kept; try again after ctx->delay_ms */
    PASS_NOCONFIG, /* the configuration cannot be read */
    PASS_STOPPED,  /* g_stop_event was set */
} pass_result;

typedef enum failure_kind {
    FAIL_NONE,
    FAIL_TRANSIENT, /* 3005 */
    FAIL_CONFIG,    /* 3004 */
} failure_kind;

typedef struct deliver_ctx {
    BOOL loaded;
    sender_config *cfg;
    FILETIME cfg_stamp;
    http_client http;
    char domain[520];
    char domain_sid[200];
    sender_buf body;
    unsigned attempt;
    DWORD delay_ms;
    failure_kind failing;
    ULONGLONG last_fail_event; /* GetTickCount64 of the last 3004/3005 */
    ULONGLONG last_alert;      /* of the last 3003, 0 when not alerting */
    ULONGLONG delivered;
    ULONGLONG dropped;
    ULONGLONG set_aside;
    ULONGLONG temps_recovered; /* temp files renamed to their record name (sender_recover.c) */
    ULONG stuck; /* unreadable records of this walk that could be neither moved nor deleted */
    const wchar_t *state; /* the State last written by this process */
} deliver_ctx;

/* Status\State: ok, retrying or misconfigured (written when it changes). */
static void set_state(deliver_ctx *c, const wchar_t *state)
{
    if (!c->state || wcscmp(c->state, state) != 0) {
        status_write(L"State", state);
        c->state = state;
    }
}

static void ctx_unload(deliver_ctx *c)
{
    if (c->loaded) {
        http_close(&c->http);
        config_free(c->cfg);
        c->cfg = NULL;
    }
    c->loaded = FALSE;
}

static void lookup_domain_sid(wchar_t *out, size_t cap)
{
    LSA_OBJECT_ATTRIBUTES oa;
    LSA_HANDLE policy = NULL;
    POLICY_ACCOUNT_DOMAIN_INFO *info = NULL;
    wchar_t *s = NULL;
    NTSTATUS st;

    out[0] = 0;
    memset(&oa, 0, sizeof oa);
    st = LsaOpenPolicy(NULL, &oa, POLICY_VIEW_LOCAL_INFORMATION, &policy);
    if (st != 0)
        return;
    st = LsaQueryInformationPolicy(policy, PolicyAccountDomainInformation, (PVOID *)&info);
    if (st == 0 && info && info->DomainSid && ConvertSidToStringSidW(info->DomainSid, &s)) {
        wcsncpy(out, s, cap - 1);
        out[cap - 1] = 0;
        LocalFree(s);
    }
    if (info)
        LsaFreeMemory(info);
    LsaClose(policy);
}

static BOOL wide_to_utf8_buf(const wchar_t *w, char *out, int cap)
{
    out[0] = 0;
    if (!w[0])
        return TRUE;
    return WideCharToMultiByte(CP_UTF8, 0, w, -1, out, cap, NULL, NULL) > 0;
}

/* (Re)load the registry when it changed since the last load. */
static BOOL ctx_load(deliver_ctx *c)
{
    wchar_t msg[512], sid[200];
    FILETIME stamp = {0, 0};
    DWORD err;

    if (c->loaded && !config_changed_since(&c->cfg_stamp, NULL))
        return TRUE;
    ctx_unload(c);
    config_changed_since(&stamp, &stamp);
    err = config_load(&c->cfg, msg, ARRAYSIZE(msg));
    if (err) {
        sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_NOT_AUTHORIZED, L"not configured: %ls", msg);
        status_write(L"LastError", msg);
        return FALSE;
    }
    err = http_open(&c->http, c->cfg->url, c->cfg->timeout_ms,
                    c->cfg->present & PCNS_CFG_SERVER_CERT_SHA256 ? c->cfg->server_cert_sha256 : NULL,
                    c->cfg->present & PCNS_CFG_CLIENT_CERT_THUMBPRINT ? c->cfg->client_cert_thumbprint
                                                                      : NULL);
    if (err) {
        /* Not the Url itself: this is where one with user:password@ in it is refused. */
        swprintf(msg, ARRAYSIZE(msg), L"cannot set up HTTP to the configured Url (error %lu)%ls",
                 err,
                 err == (DWORD)CRYPT_E_NOT_FOUND ? L": ClientCertThumbprint is not in LocalMachine\\My"
                                          : L"");
        sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_NOT_AUTHORIZED, L"%ls", msg);
        status_write(L"LastError", msg);
        config_free(c->cfg);
        c->cfg = NULL;
        return FALSE;
    }
    if (c->cfg->domain_sid_len) {
        memcpy(c->domain_sid, c->cfg->domain_sid, c->cfg->domain_sid_len + 1);
    } else {
        lookup_domain_sid(sid, ARRAYSIZE(sid));
        if (!wide_to_utf8_buf(sid, c->domain_sid, sizeof c->domain_sid))
            c->domain_sid[0] = 0;
    }
    memcpy(c->domain, c->cfg->domain, c->cfg->domain_len + 1);
    c->cfg_stamp = stamp;
    c->loaded = TRUE;
    return TRUE;
}

static void next_delay(deliver_ctx *c, DWORD retry_after_s)
{
    DWORD cap = BACKOFF_CAP_MS;
    if (c->attempt < 7)
        cap = BACKOFF_BASE_MS << c->attempt;
    if (cap > BACKOFF_CAP_MS)
        cap = BACKOFF_CAP_MS;
    c->delay_ms = random_below(cap + 1);
    if (retry_after_s && retry_after_s * 1000u > c->delay_ms)
        c->delay_ms = retry_after_s > 3600 ? 3600000u : retry_after_s * 1000u;
    if (c->attempt < 31)
        c->attempt++;
}

static void fail(deliver_ctx *c, failure_kind kind, DWORD retry_after_s, const wchar_t *fmt, ...)
{
    wchar_t msg[1024], when[40];
    va_list ap;
    ULONGLONG now = GetTickCount64();

    va_start(ap, fmt);
    vswprintf(msg, ARRAYSIZE(msg), fmt, ap);
    va_end(ap);
    msg[ARRAYSIZE(msg) - 1] = 0;
    next_delay(c, retry_after_s);
    if (c->failing != kind || now - c->last_fail_event >= REPEAT_EVENT_MS) {
        if (kind == FAIL_CONFIG)
            sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_NOT_AUTHORIZED,
                         L"%ls; the change is kept, the configuration needs fixing", msg);
        else
            sender_event(EVENTLOG_WARNING_TYPE, PCNS_EVENT_DELIVERY_FAILED,
                         L"%ls; the change is kept, retrying", msg);
        c->last_fail_event = now;
        status_write(L"LastError", msg);
        rfc3339_now(when);
        status_write(L"LastErrorAt", when);
    }
    set_state(c, kind == FAIL_CONFIG ? L"misconfigured" : L"retrying");
    c->failing = kind;
}

static void recovered(deliver_ctx *c)
{
    if (c->failing != FAIL_NONE && g_console)
        say(stderr, L"pcns-sender: delivering again\n");
    set_state(c, L"ok");
    c->failing = FAIL_NONE;
    c->attempt = 0;
}

static BOOL ensure_bad_dir(const wchar_t *spool, wchar_t *bad, size_t cap)
{
    swprintf(bad, cap, L"%ls\\bad", spool);
    return CreateDirectoryW(bad, NULL) || GetLastError() == ERROR_ALREADY_EXISTS;
}

/* TRUE when the record has left the spool (moved to bad\, or deleted); FALSE when it is still
 * there, counted in c->stuck so that the pass ends with a backoff instead of finding it again. */
static BOOL set_aside(deliver_ctx *c, const wchar_t *path, const wchar_t *name,
                      const wchar_t *reason)
{
    wchar_t bad[MAX_PATH + 8], dest[MAX_PATH + 96];

    if (!ensure_bad_dir(c->cfg->spool_dir, bad, ARRAYSIZE(bad)) ||
        (swprintf(dest, ARRAYSIZE(dest), L"%ls\\%ls", bad, name),
         !MoveFileExW(path, dest, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))) {
        DWORD e = GetLastError();
        sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_BAD_RECORD,
                     L"spool record %ls is unreadable (%ls) and could not be moved to bad\\ "
                     L"(error %lu); deleting it",
                     name, reason, e);
        if (!DeleteFileW(path) && (e = GetLastError()) != ERROR_FILE_NOT_FOUND) {
            sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_BAD_RECORD,
                         L"spool record %ls could not be deleted either (error %lu)", name, e);
            c->stuck++;
            return FALSE;
        }
        return TRUE;
    }
    c->set_aside++;
    sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_BAD_RECORD,
                 L"spool record %ls is unreadable (%ls): moved to %ls", name, reason, bad);
    return TRUE;
}

static BOOL set_aside_temp(void *ctx, const wchar_t *path, const wchar_t *name,
                           const wchar_t *reason)
{
    return set_aside(ctx, path, name, reason);
}

/* The user name for logs: UTF-8 to UTF-16, control characters shown as '?'. */
static void log_user(const sender_record *r, wchar_t *out, size_t cap)
{
    int n = 0;
    wchar_t *p;

    if (r->user_len && r->user_len < 0x7fffffff)
        n = MultiByteToWideChar(CP_UTF8, 0, r->user, (int)r->user_len, out, (int)cap - 1);
    if (n <= 0 && r->user_len) {
        wcscpy(out, L"?");
        return;
    }
    out[n] = 0;
    for (p = out; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            *p = L'?';
}

static void alert_age(deliver_ctx *c, const sender_record *r, const wchar_t *name, size_t waiting)
{
    ULONGLONG now = now_filetime(), age;
    ULONGLONG tick = GetTickCount64();
    ULONGLONG ft = r ? r->changed_at : 0;
    wchar_t user[260];

    if (!ft && name)
        pcns_spool_parse_name(name, &ft);
    age = ft && now > ft ? (now - ft) / 10000000ULL : 0;
    if (!waiting || age <= c->cfg->alert_age_seconds) {
        c->last_alert = 0;
        return;
    }
    if (c->last_alert && tick - c->last_alert < REPEAT_ALERT_MS)
        return;
    c->last_alert = tick ? tick : 1;
    if (r)
        log_user(r, user, ARRAYSIZE(user));
    else
        wcscpy(user, L"?");
    sender_event(EVENTLOG_WARNING_TYPE, PCNS_EVENT_SPOOL_OLD,
                 L"the oldest spooled change (user %ls, webhook-id %hs) is %llu s old, older than "
                 L"AlertAgeSeconds (%lu); %llu change(s) waiting",
                 user, r ? r->webhook_id : "?", (unsigned long long)age,
                 (unsigned long)c->cfg->alert_age_seconds, (unsigned long long)waiting);
}

static const wchar_t *winhttp_error_text(DWORD e)
{
    switch (e) {
    case ERROR_WINHTTP_CANNOT_CONNECT:
        return L": cannot connect";
    case ERROR_WINHTTP_TIMEOUT:
        return L": timed out";
    case ERROR_WINHTTP_CONNECTION_ERROR:
        return L": connection reset";
    case ERROR_WINHTTP_NAME_NOT_RESOLVED:
        return L": name not resolved";
    case ERROR_WINHTTP_SECURE_FAILURE:
        return L": TLS certificate not trusted or invalid";
    case ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED:
        return L": the server wants a client certificate";
    case ERROR_WINHTTP_INVALID_SERVER_RESPONSE:
        return L": invalid answer";
    default:
        return L"";
    }
}

/* One record: TRUE when the walk may go on to the next one. */
static BOOL deliver_one(deliver_ctx *c, const DATA_BLOB *key, const wchar_t *name,
                        size_t waiting)
{
    wchar_t path[MAX_PATH + 96], reason[256], headers[1024], user[260], detail_w[600];
    char sid[240], sig[80], detail[600];
    sender_record r;
    change_fields f;
    http_result res;
    BOOL io_error = FALSE, go_on = FALSE;

    swprintf(path, ARRAYSIZE(path), L"%ls\\%ls", c->cfg->spool_dir, name);
    reason[0] = 0;
    if (!record_load(path, &r, &io_error, reason, ARRAYSIZE(reason))) {
        if (io_error) {
            if (GetFileAttributesW(path) == INVALID_FILE_ATTRIBUTES &&
                (GetLastError() == ERROR_FILE_NOT_FOUND || GetLastError() == ERROR_PATH_NOT_FOUND))
                return TRUE; /* gone meanwhile */
            fail(c, FAIL_TRANSIENT, 0, L"spool record %ls cannot be read (%ls)", name, reason);
            return FALSE;
        }
        set_aside(c, path, name, reason);
        return TRUE;
    }
    if (r.source_len != c->cfg->source_len || memcmp(r.source, c->cfg->source, r.source_len)) {
        set_aside(c, path, name, L"spooled for another source than the configured one");
        record_free(&r);
        return TRUE;
    }
    log_user(&r, user, ARRAYSIZE(user));

    sid[0] = 0;
    if (r.rid && c->domain_sid[0])
        snprintf(sid, sizeof sid, "%s-%lu", c->domain_sid, (unsigned long)r.rid);
    memset(&f, 0, sizeof f);
    f.user = r.user;
    f.user_len = r.user_len;
    f.domain = c->domain[0] ? c->domain : NULL;
    f.sid = sid[0] ? sid : NULL;
    f.changed_at = r.changed_at;
    f.key_id = r.key_id;
    f.key_id_len = r.key_id_len;
    f.sealed = r.sealed;
    f.sealed_len = r.sealed_len;
    if (!build_change_body(&f, &c->body) || c->body.len > MAXDWORD) {
        set_aside(c, path, name, L"the request body cannot be built");
        record_free(&r);
        return TRUE;
    }
    {
        ULONGLONG ts = unix_now(); /* each attempt is signed anew with the current time */
        if (!webhook_sign(key->pbData, key->cbData, r.webhook_id, ts, (const BYTE *)c->body.p,
                          c->body.len, sig, sizeof sig)) {
            fail(c, FAIL_TRANSIENT, 0, L"HMAC-SHA256 failed for %hs", r.webhook_id);
            record_free(&r);
            return FALSE;
        }
        swprintf(headers, ARRAYSIZE(headers),
                 L"Content-Type: application/json\r\npcns-source: %hs\r\nwebhook-id: %hs\r\n"
                 L"webhook-timestamp: %llu\r\nwebhook-signature: %hs",
                 c->cfg->source, r.webhook_id, (unsigned long long)ts, sig);
    }
    SecureZeroMemory(sig, sizeof sig);

    if (!http_post(&c->http, headers, (const BYTE *)c->body.p, (DWORD)c->body.len, &res)) {
        SecureZeroMemory(headers, sizeof headers);
        if (res.pin_mismatch)
            fail(c, FAIL_CONFIG, 0,
                 L"the certificate of %ls does not match ServerCertSha256 (change %hs of %ls)",
                 c->http.host, r.webhook_id, user);
        else
            fail(c, FAIL_TRANSIENT, 0, L"cannot reach pcns at %ls (error %lu%ls) for change %hs of %ls",
                 c->cfg->url, res.error, winhttp_error_text(res.error), r.webhook_id, user);
        alert_age(c, &r, name, waiting);
        record_free(&r);
        return FALSE;
    }
    SecureZeroMemory(headers, sizeof headers);
    problem_detail(res.body, res.body_len, detail, sizeof detail);
    if (!MultiByteToWideChar(CP_UTF8, 0, detail, -1, detail_w, ARRAYSIZE(detail_w)))
        wcscpy(detail_w, L"?");

    switch (res.status) {
    case 202:
        if (!DeleteFileW(path)) {
            fail(c, FAIL_TRANSIENT, 0,
                 L"change %hs of %ls was accepted but its spool record %ls cannot be deleted "
                 L"(error %lu)",
                 r.webhook_id, user, name, GetLastError());
            break;
        }
        c->delivered++;
        recovered(c);
        go_on = TRUE;
        break;
    case 400:
        sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_REFUSED,
                     L"pcns refused the change of user %ls (webhook-id %hs) with 400: %ls; "
                     L"dropped",
                     user, r.webhook_id, detail_w[0] ? detail_w : L"(no detail)");
        if (!DeleteFileW(path) && GetLastError() != ERROR_FILE_NOT_FOUND) {
            fail(c, FAIL_TRANSIENT, 0, L"the refused spool record %ls cannot be deleted (error %lu)",
                 name, GetLastError());
            break;
        }
        c->dropped++;
        go_on = TRUE;
        break;
    case 401:
    case 403:
    case 404:
    case 413:
    case 415:
        fail(c, FAIL_CONFIG, 0, L"pcns answered %lu for change %hs of %ls: %ls",
             (unsigned long)res.status, r.webhook_id, user, detail_w[0] ? detail_w : L"(no detail)");
        break;
    default:
        if (res.status == 408 || res.status == 429 || res.status >= 500)
            fail(c, FAIL_TRANSIENT, res.retry_after, L"pcns answered %lu for change %hs of %ls",
                 (unsigned long)res.status, r.webhook_id, user);
        else /* an answer pcns does not give: the URL points somewhere else */
            fail(c, FAIL_CONFIG, res.retry_after,
                 L"unexpected answer %lu from %ls for change %hs of %ls", (unsigned long)res.status,
                 c->cfg->url, r.webhook_id, user);
        break;
    }
    if (!go_on)
        alert_age(c, &r, name, waiting);
    record_free(&r);
    return go_on;
}

/* Walk the spool until it is empty or its oldest record is kept. */
static pass_result deliver_pass(deliver_ctx *c)
{
    spool_list l;
    DATA_BLOB key = {0, NULL};
    pass_result result = PASS_EMPTY;
    DWORD err;
    size_t i;
    BOOL any;

    if (!ctx_load(c)) {
        c->delay_ms = RESCAN_MS;
        return PASS_NOCONFIG;
    }
    /* Records a crash left as temp files join the spool before it is listed. */
    c->temps_recovered += spool_recover_temps(c->cfg->spool_dir, set_aside_temp, c);
    for (;;) {
        c->stuck = 0;
        if (!list_spool(c->cfg->spool_dir, &l)) {
            fail(c, FAIL_CONFIG, 0, L"cannot list the spool %ls (error %lu)", c->cfg->spool_dir,
                 GetLastError());
            result = PASS_RETRY;
            break;
        }
        if (!l.count) {
            list_free(&l);
            result = PASS_EMPTY;
            break;
        }
        if (!key.pbData && (err = secret_unprotect(c->cfg, &key)) != 0) {
            list_free(&l);
            fail(c, FAIL_CONFIG, 0, L"the Secret cannot be unprotected (error %lu): run configure",
                 err);
            result = PASS_RETRY;
            break;
        }
        any = TRUE;
        for (i = 0; i < l.count; i++) {
            if (WaitForSingleObject(g_stop_event, 0) == WAIT_OBJECT_0) {
                result = PASS_STOPPED;
                any = FALSE;
                break;
            }
            if (!deliver_one(c, &key, l.names[i], l.count - i)) {
                result = PASS_RETRY;
                any = FALSE;
                break;
            }
        }
        list_free(&l);
        if (!any)
            break;
        if (c->stuck) {
            /* Listing again would find them again at once: back off instead. */
            fail(c, FAIL_CONFIG, 0,
                 L"%lu unreadable spool record(s) could be neither moved to bad\\ nor deleted",
                 (unsigned long)c->stuck);
            result = PASS_RETRY;
            break;
        }
        /* Went through the whole list: look again for what arrived meanwhile. */
    }
    secret_wipe(&key);
    if (result == PASS_EMPTY) {
        c->last_alert = 0;
        recovered(c);
    }
    return result;
}

static void write_delivery_status(deliver_ctx *c, ULONGLONG before)
{
    wchar_t when[40];
    if (c->delivered != before) {
        rfc3339_now(when);
        status_write(L"LastDeliveryAt", when);
    }
}

/* ------------------------------------------------------------------ run */

static BOOL WINAPI console_handler(DWORD type)
{
    SetEvent(g_stop_event);
    if (type == CTRL_CLOSE_EVENT || type == CTRL_LOGOFF_EVENT || type == CTRL_SHUTDOWN_EVENT)
        WaitForSingleObject(g_loop_done, 10000);
    return TRUE;
}

int sender_run_loop(void)
{
    deliver_ctx c;
    HANDLE spool_event = NULL, handles[2];
    SECURITY_ATTRIBUTES sa;
    PSECURITY_DESCRIPTOR sd = NULL;
    int rc = 0;

    memset(&c, 0, sizeof c);
    /* SYSTEM (the filter in LSASS, the service) and Administrators may signal it. */
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(
            L"D:(A;;GA;;;SY)(A;;GA;;;BA)", SDDL_REVISION_1, &sd, NULL)) {
        sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_NOT_AUTHORIZED,
                     L"cannot build the spool event's security descriptor (error %lu)",
                     GetLastError());
        return 1;
    }
    sa.nLength = sizeof sa;
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    spool_event = CreateEventW(&sa, FALSE, FALSE, SPOOL_EVENT_NAME);
    if (!spool_event) {
        sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_NOT_AUTHORIZED,
                     L"cannot create the event %ls (error %lu)", SPOOL_EVENT_NAME,
                     GetLastError());
        rc = 1;
        goto out;
    }
    handles[0] = g_stop_event;
    handles[1] = spool_event;
    for (;;) {
        ULONGLONG before = c.delivered;
        pass_result r = deliver_pass(&c);
        DWORD wait_ms, n, w;

        write_delivery_status(&c, before);
        if (r == PASS_STOPPED)
            break;
        if (r == PASS_EMPTY) {
            wait_ms = RESCAN_MS;
            n = 2; /* a new change wakes us */
        } else {
            wait_ms = c.delay_ms;
            n = 1; /* backing off: new changes wait behind the oldest */
        }
        w = WaitForMultipleObjects(n, handles, FALSE, wait_ms);
        if (w == WAIT_OBJECT_0)
            break;
        if (w == WAIT_FAILED) {
            sender_event(EVENTLOG_ERROR_TYPE, PCNS_EVENT_NOT_AUTHORIZED,
                         L"WaitForMultipleObjects failed (error %lu)", GetLastError());
            rc = 1;
            break;
        }
    }
out:
    ctx_unload(&c);
    buf_free(&c.body);
    if (spool_event)
        CloseHandle(spool_event);
    if (sd)
        LocalFree(sd);
    return rc;
}

static int run_main(int argc, wchar_t **argv)
{
    BOOL once = FALSE, stats = FALSE;
    int i, rc;

    for (i = 0; i < argc; i++) {
        if (!wcscmp(argv[i], L"--once"))
            once = TRUE;
        else if (!wcscmp(argv[i], L"--stats"))
            stats = TRUE;
        else {
            say(stderr, L"pcns-sender run: unknown option %ls\n", argv[i]);
            return 2;
        }
    }
    if (stats && !once) {
        say(stderr, L"pcns-sender run: --stats goes with --once\n");
        return 2;
    }
    if (once) {
        deliver_ctx c;
        ULONGLONG t0 = GetTickCount64();
        pass_result r;
        size_t left = 1;
        spool_list rest;

        memset(&c, 0, sizeof c);
        r = deliver_pass(&c);
        write_delivery_status(&c, 0);
        /* What is left; a spool that cannot be listed is not an empty one. */
        if (c.loaded && list_spool(c.cfg->spool_dir, &rest)) {
            left = rest.count;
            list_free(&rest);
        }
        if (stats)
            say(stdout, L"delivered: %llu\ndropped: %llu\nset_aside: %llu\nrecovered: %llu\n"
                        L"remaining: %llu\nelapsed_ms: %llu\nnodelay_sockets: %ld\n",
                (unsigned long long)c.delivered, (unsigned long long)c.dropped,
                (unsigned long long)c.set_aside, (unsigned long long)c.temps_recovered,
                (unsigned long long)left,
                (unsigned long long)(GetTickCount64() - t0), http_nodelay_count());
        ctx_unload(&c);
        buf_free(&c.body);
        if (r != PASS_EMPTY)
            return 1;
        return left == 0 ? 0 : 1;
    }
    g_loop_done = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!g_loop_done || !SetConsoleCtrlHandler(console_handler, TRUE)) {
        say(stderr, L"pcns-sender run: cannot set up Ctrl-C handling (error %lu)\n",
            GetLastError());
        return 1;
    }
    say(stderr, L"pcns-sender: running; Ctrl-C stops\n");
    rc = sender_run_loop();
    SetEvent(g_loop_done);
    say(stderr, L"pcns-sender: stopped\n");
    return rc;
}

/* ------------------------------------------------------------------ status */

static int status_main(void)
{
    sender_config *cfg = NULL;
    wchar_t msg[512], v[1024], spool[MAX_PATH], bad[MAX_PATH + 8];
    spool_list l;
    int rc = 0;

    /* The spool is SYSTEM-only: an elevated administrator lists it with SeBackupPrivilege. */
    pcns_enable_backup_privileges();
    if (config_load(&cfg, msg, ARRAYSIZE(msg)) == 0) {
        wcsncpy(spool, cfg->spool_dir, ARRAYSIZE(spool) - 1);
        spool[ARRAYSIZE(spool) - 1] = 0;
        say(stdout, L"url: %ls\nsource: %hs\n", cfg->url, cfg->source);
        config_free(cfg);
    } else {
        /* Still the configured SpoolDir, when the rest of the configuration is what is wrong. */
        pcns_config *raw = calloc(1, sizeof *raw);
        say(stdout, L"configured: no (%ls)\n", msg);
        if (raw != NULL) {
            pcns_config_read(raw); /* fills the default SpoolDir when it has none */
            wcsncpy(spool, raw->spool_dir, ARRAYSIZE(spool) - 1);
            spool[ARRAYSIZE(spool) - 1] = 0;
            pcns_config_clear(raw);
            free(raw);
        }
        if (raw == NULL || spool[0] == 0)
            default_spool_dir(spool, ARRAYSIZE(spool));
        rc = 1;
    }
    say(stdout, L"spool: %ls\n", spool);
    if (!list_spool(spool, &l)) {
        say(stdout, L"depth: unknown (error %lu)\n", GetLastError());
        rc = 1;
    } else {
        say(stdout, L"depth: %llu\n", (unsigned long long)l.count);
        if (l.count)
            say(stdout, L"oldest_age_seconds: %llu\n",
                (unsigned long long)file_age_seconds(spool, l.names[0]));
        else
            say(stdout, L"oldest_age_seconds: 0\n");
        list_free(&l);
    }
    swprintf(bad, ARRAYSIZE(bad), L"%ls\\bad", spool);
    say(stdout, L"bad: %llu\n", (unsigned long long)count_files(bad));
    say(stdout, L"state: %ls\n", status_read(L"State", v, ARRAYSIZE(v)) ? v : L"ok");
    say(stdout, L"last_error: %ls\n", status_read(L"LastError", v, ARRAYSIZE(v)) ? v : L"none");
    if (status_read(L"LastErrorAt", v, ARRAYSIZE(v)))
        say(stdout, L"last_error_at: %ls\n", v);
    say(stdout, L"last_delivery_at: %ls\n",
        status_read(L"LastDeliveryAt", v, ARRAYSIZE(v)) ? v : L"never");
    return rc;
}

/* ------------------------------------------------------------------ main */

static int usage(FILE *f)
{
    say(f, L"usage: pcns-sender configure --url URL --source ID --secret-file FILE "
           L"--recipient-key-id KID --recipient-key-file FILE [--domain NAME] [--domain-sid SID] "
           L"[--spool DIR] [--server-cert-sha256 HEX] [--client-cert-thumbprint HEX] "
           L"[--alert-age SECONDS] [--timeout-ms N]\n"
           L"       pcns-sender run [--once [--stats]]\n"
           L"       pcns-sender service\n"
           L"       pcns-sender status\n"
           L"       pcns-sender install | uninstall [options]\n");
    return f == stdout ? 0 : 2;
}

int wmain(int argc, wchar_t **argv)
{
    const wchar_t *verb;
    int rc;

    if (argc < 2)
        return usage(stderr);
    verb = argv[1];
    g_stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (!g_stop_event) {
        say(stderr, L"pcns-sender: CreateEvent failed (error %lu)\n", GetLastError());
        return 1;
    }
    if (!wcscmp(verb, L"configure"))
        rc = configure_main(argc - 2, argv + 2);
    else if (!wcscmp(verb, L"run"))
        rc = run_main(argc - 2, argv + 2);
    else if (!wcscmp(verb, L"service"))
        rc = service_main_dispatch();
    else if (!wcscmp(verb, L"status"))
        rc = status_main();
    else if (!wcscmp(verb, L"install") || !wcscmp(verb, L"uninstall")) {
        rc = !wcscmp(verb, L"install") ? pcns_install(argc - 1, argv + 1)
                                       : pcns_uninstall(argc - 1, argv + 1);
    } else if (!wcscmp(verb, L"help") || !wcscmp(verb, L"--help") || !wcscmp(verb, L"-h"))
        rc = usage(stdout);
    else
        rc = usage(stderr);
    if (g_event_source)
        DeregisterEventSource(g_event_source);
    CloseHandle(g_stop_event);
    return rc;
}
