/* pcnsflt.dll: the LSA password filter (notification package) of pcns.
 *
 * LSASS calls PasswordChangeNotify after every password change on this DC, from many threads.
 * The new password is sealed (HPKE, src/seal.c) to pcns' hook key and written to the spool
 * (src/spool.c); pcns-sender.exe delivers it. This code runs inside LSASS, so it is boring on
 * purpose: no CRT, no network, no RPC, no waiting on other processes, nothing in DllMain,
 * bounded HeapAlloc only, every copy of the password zeroed, and every export returns success
 * whatever happens (a failure is an event in the Application log, never the password).
 */
#include <windows.h>
#include <ntsecapi.h>

#include "pcns_config.h"
#include "pcns_events.h"
#include "pcns_seal.h"
#include "pcns_spool.h"
#include "pcns_utf.h"

#define STATUS_OK ((NTSTATUS)0x00000000L)
#define USER_MAX PCNS_SPOOL_FIELD_MAX                          /* UTF-8 bytes */
#define PASSWORD_MAX (PCNS_SPOOL_FIELD_MAX - PCNS_SEAL_OVERHEAD) /* UTF-8 bytes */
#define INFO_MAX PCNS_SEAL_INFO_LEN(PCNS_CFG_NAME_MAX, PCNS_WEBHOOK_ID_LEN, USER_MAX, PCNS_CFG_NAME_MAX)
#define MSG_MAX 640 /* WCHARs of an event's text */
#define MSG_USER_MAX 256

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved);
BOOLEAN NTAPI InitializeChangeNotify(void);
BOOLEAN NTAPI PasswordFilter(PLSA_UNICODE_STRING AccountName, PLSA_UNICODE_STRING FullName,
                             PLSA_UNICODE_STRING Password, BOOLEAN SetOperation);
NTSTATUS NTAPI PasswordChangeNotify(PLSA_UNICODE_STRING UserName, ULONG RelativeId,
                                    PLSA_UNICODE_STRING NewPassword);

static volatile LONG not_configured_reported;
/* The sender's wake-up event, opened once it exists and kept: a handle held here keeps the
 * named object alive, so a restarted sender's CreateEvent gets this same event. */
static HANDLE volatile wake_event;
/* The last changed_at handed out: each one is later than the one before (see change_time). */
static volatile LONG64 last_changed_at;

/* ---- events (no CRT, so a tiny string builder) ------------------------------------------- */

typedef struct {
    WCHAR text[MSG_MAX + 1];
    ULONG n;
} message;

static void msg_add(message *m, const WCHAR *s)
{
    for (; *s != 0 && m->n < MSG_MAX; s++)
        m->text[m->n++] = *s;
    m->text[m->n] = 0;
}

/* A counted UTF-16 string (the user name), at most MSG_USER_MAX units, controls as '?'. */
static void msg_add_counted(message *m, const WCHAR *s, ULONG units)
{
    ULONG i;
    if (s == NULL)
        return;
    for (i = 0; i < units && i < MSG_USER_MAX && m->n < MSG_MAX; i++)
        m->text[m->n++] = s[i] < 0x20 ? L'?' : s[i];
    if (units > MSG_USER_MAX)
        msg_add(m, L"...");
    m->text[m->n] = 0;
}

static void msg_add_hex(message *m, DWORD v)
{
    static const WCHAR hex[] = L"0123456789ABCDEF";
    WCHAR digits[11];
    int i;
    digits[0] = L'0';
    digits[1] = L'x';
    for (i = 0; i < 8; i++)
        digits[2 + i] = hex[(v >> (28 - 4 * i)) & 0xF];
    digits[10] = 0;
    msg_add(m, digits);
}

static void msg_add_user(message *m, const LSA_UNICODE_STRING *user)
{
    msg_add(m, L" (user \"");
    if (user != NULL && user->Buffer != NULL)
        msg_add_counted(m, user->Buffer, user->Length / 2);
    msg_add(m, L"\")");
}

static void report_text(WORD type, DWORD id, const WCHAR *text)
{
    const WCHAR *strings[1] = {text};
    HANDLE source = RegisterEventSourceW(NULL, PCNS_EVENT_SOURCE);
    if (source == NULL)
        return;
    ReportEventW(source, type, 0, id, NULL, 1, 0, strings, NULL);
    DeregisterEventSource(source);
}

static void report(WORD type, DWORD id, const message *m)
{
    report_text(type, id, m->text);
}

static void report_failure(message *m, const LSA_UNICODE_STRING *user, const WCHAR *what,
                           const WCHAR *step, DWORD code)
{
    m->n = 0;
    msg_add(m, L"pcns: a password change could not be spooled and will not reach pcns");
    msg_add_user(m, user);
    msg_add(m, L": ");
    msg_add(m, what);
    if (step != NULL) {
        msg_add(m, L" at ");
        msg_add(m, step);
    }
    if (code != 0) {
        msg_add(m, L" (");
        msg_add_hex(m, code);
        msg_add(m, L")");
    }
    report(EVENTLOG_ERROR_TYPE, PCNS_EVENT_SPOOL_FAILED, m);
}

static void report_not_configured(message *m, const pcns_config *cfg, DWORD rc)
{
    static const struct {
        DWORD bit;
        const WCHAR *name;
    } needed[] = {{PCNS_CFG_SOURCE, PCNS_REG_SOURCE},
                  {PCNS_CFG_RECIPIENT_KEY_ID, PCNS_REG_RECIPIENT_KEY_ID},
                  {PCNS_CFG_RECIPIENT_PUBLIC_KEY, PCNS_REG_RECIPIENT_PUBLIC_KEY},
                  {PCNS_CFG_SPOOL_DIR, PCNS_REG_SPOOL_DIR}};
    ULONG i;

    if (InterlockedCompareExchange(&not_configured_reported, 1, 0) != 0)
        return;
    m->n = 0;
    msg_add(m, L"pcns: password changes are not being captured: HKLM\\" PCNS_REG_KEY);
    if (rc != ERROR_SUCCESS) {
        msg_add(m, L" does not exist");
    } else {
        msg_add(m, L" lacks a usable");
        for (i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
            BOOL bad = needed[i].bit == PCNS_CFG_SPOOL_DIR ? cfg->spool_dir_len == 0
                                                            : !(cfg->present & needed[i].bit);
            if (bad) {
                msg_add(m, L" ");
                msg_add(m, needed[i].name);
            }
        }
    }
    msg_add(m, L". Configure it with pcns-sender.exe configure. This is reported once.");
    report(EVENTLOG_WARNING_TYPE, PCNS_EVENT_NOT_CONFIGURED, m);
}

/* ---- the exports ------------------------------------------------------------------------- */

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)reserved;
    if (reason == DLL_PROCESS_ATTACH)
        DisableThreadLibraryCalls(instance);
    return TRUE;
}

BOOLEAN NTAPI InitializeChangeNotify(void)
{
    return TRUE;
}

/* pcns does not judge passwords: every password is acceptable to it. */
BOOLEAN NTAPI PasswordFilter(PLSA_UNICODE_STRING AccountName, PLSA_UNICODE_STRING FullName,
                             PLSA_UNICODE_STRING Password, BOOLEAN SetOperation)
{
    (void)AccountName;
    (void)FullName;
    (void)Password;
    (void)SetOperation;
    return TRUE;
}

/* The change's time, and the first part of its spool record's name: the system time, but always
 * later than the last one this process handed out. The sender delivers in name order, so two
 * changes in the same clock tick (on two threads, or one after the other) and a change after the
 * clock was set back still go out in the order LSASS reported them. Lock-free (one
 * compare-and-swap loop, no wait). */
static ULONGLONG change_time(void)
{
    FILETIME ft;
    LONG64 now, last, next;

    GetSystemTimeAsFileTime(&ft);
    now = (LONG64)((ULONGLONG)ft.dwHighDateTime << 32 | ft.dwLowDateTime);
    do {
        last = last_changed_at;
        next = now > last ? now : last + 1;
    } while (InterlockedCompareExchange64(&last_changed_at, next, last) != last);
    return (ULONGLONG)next;
}

/* Accounts whose passwords never leave the DC: krbtgt (RID 502) and the krbtgt_NNNNN accounts
 * of RODCs (their keys sign every ticket), and every name ending in '$': computer accounts,
 * interdomain trust accounts and managed service accounts, whose random passwords no application
 * pcns serves has any use for (the Samba hook does not send them either). Read by Length only. */
#ifndef DOMAIN_USER_RID_KRBTGT
#define DOMAIN_USER_RID_KRBTGT 0x1F6 /* 502, winnt.h */
#endif

static BOOL never_sent(const LSA_UNICODE_STRING *user, ULONG rid)
{
    static const WCHAR krbtgt[] = L"krbtgt";
    ULONG units, i;

    if (rid == DOMAIN_USER_RID_KRBTGT)
        return TRUE;
    if (user == NULL || user->Buffer == NULL)
        return FALSE;
    units = user->Length / sizeof(WCHAR);
    if (units == 0)
        return FALSE;
    if (user->Buffer[units - 1] == L'$')
        return TRUE;
    if (units < 6)
        return FALSE;
    for (i = 0; i < 6; i++) {
        WCHAR c = user->Buffer[i];
        if (c >= L'A' && c <= L'Z')
            c = (WCHAR)(c - L'A' + L'a');
        if (c != krbtgt[i])
            return FALSE;
    }
    return units == 6 || user->Buffer[6] == L'_';
}

/* Everything one notification needs, in one bounded allocation, zeroed before it is freed. */
typedef struct {
    pcns_config cfg;
    BYTE user[USER_MAX];
    BYTE password[PASSWORD_MAX];
    BYTE info[INFO_MAX];
    BYTE sealed[PASSWORD_MAX + PCNS_SEAL_OVERHEAD];
    BYTE webhook_id[PCNS_WEBHOOK_ID_LEN];
    message msg;
} notification;

static void hex_lower(BYTE *out, const BYTE *in, ULONG n)
{
    static const char hex[] = "0123456789abcdef";
    ULONG i;
    for (i = 0; i < n; i++) {
        out[2 * i] = (BYTE)hex[in[i] >> 4];
        out[2 * i + 1] = (BYTE)hex[in[i] & 0xF];
    }
}

/* The sender's event, or NULL while no sender has created it (tried again on the next change). */
static HANDLE sender_event(void)
{
    HANDLE mine, theirs;

    theirs = InterlockedCompareExchangePointer((PVOID volatile *)&wake_event, NULL, NULL);
    if (theirs != NULL)
        return theirs;
    mine = OpenEventW(EVENT_MODIFY_STATE, FALSE, PCNS_SPOOL_EVENT_NAME);
    if (mine == NULL)
        return NULL;
    theirs = InterlockedCompareExchangePointer((PVOID volatile *)&wake_event, mine, NULL);
    if (theirs != NULL) {
        CloseHandle(mine); /* another thread kept one first */
        return theirs;
    }
    return mine;
}

NTSTATUS NTAPI PasswordChangeNotify(PLSA_UNICODE_STRING UserName, ULONG RelativeId,
                                    PLSA_UNICODE_STRING NewPassword)
{
    HANDLE heap = GetProcessHeap();
    notification *w;
    pcns_spool_record rec;
    BYTE random[16];
    size_t user_len = 0, password_len = 0;
    ULONG info_len = 0, sealed_len = 0;
    const WCHAR *step = NULL;
    DWORD rc;
    NTSTATUS st;
    int utf;
    HANDLE spool_event;

    if (never_sent(UserName, RelativeId))
        return STATUS_OK;

    w = HeapAlloc(heap, HEAP_ZERO_MEMORY, sizeof(*w));
    if (w == NULL) {
        report_text(EVENTLOG_ERROR_TYPE, PCNS_EVENT_SPOOL_FAILED,
                    L"pcns: a password change could not be spooled and will not reach pcns: "
                    L"out of memory");
        return STATUS_OK;
    }

    rc = pcns_config_read_filter(&w->cfg);
    if (rc != ERROR_SUCCESS && rc != ERROR_FILE_NOT_FOUND) {
        /* The key is there but could not be read (out of memory, access denied): this change
         * is lost, so it is reported as such, every time, not folded into the one 1001. */
        report_failure(&w->msg, UserName, L"HKLM\\" PCNS_REG_KEY L" could not be read", NULL,
                       rc);
        goto out;
    }
    if (rc != ERROR_SUCCESS || !pcns_config_filter_ready(&w->cfg)) {
        report_not_configured(&w->msg, &w->cfg, rc);
        goto out;
    }

    if (UserName == NULL || NewPassword == NULL ||
        (UserName->Length != 0 && UserName->Buffer == NULL) ||
        (NewPassword->Length != 0 && NewPassword->Buffer == NULL)) {
        report_failure(&w->msg, UserName, L"LSA passed no user name or password", NULL, 0);
        goto out;
    }

    utf = pcns_utf16_to_utf8(UserName->Buffer, UserName->Length, w->user, sizeof(w->user),
                             &user_len);
    if (utf != PCNS_UTF_OK || user_len == 0) {
        report_failure(&w->msg, UserName,
                       utf == PCNS_UTF_NO_SPACE ? L"the user name is too long"
                                                : L"the user name is not valid UTF-16",
                       NULL, 0);
        goto out;
    }
    utf = pcns_utf16_to_utf8(NewPassword->Buffer, NewPassword->Length, w->password,
                             sizeof(w->password), &password_len);
    if (utf == PCNS_UTF_SURROGATE) {
        w->msg.n = 0;
        msg_add(&w->msg, L"pcns: a new password with an unpaired surrogate (not valid UTF-16, "
                         L"so it has no UTF-8 form) was not spooled");
        msg_add_user(&w->msg, UserName);
        msg_add(&w->msg, L".");
        report(EVENTLOG_WARNING_TYPE, PCNS_EVENT_UNPAIRED_SURROGATE, &w->msg);
        goto out;
    }
    if (utf != PCNS_UTF_OK) {
        report_failure(&w->msg, UserName,
                       utf == PCNS_UTF_NO_SPACE ? L"the new password is too long"
                                                : L"the new password's length is odd",
                       NULL, 0);
        goto out;
    }

    /* webhook-id "pcns_" + 32 hex */
    st = BCryptGenRandom(NULL, random, sizeof(random), BCRYPT_USE_SYSTEM_PREFERRED_RNG);
    if (!BCRYPT_SUCCESS(st)) {
        report_failure(&w->msg, UserName, L"BCryptGenRandom failed", NULL, (DWORD)st);
        goto out;
    }
    memcpy(w->webhook_id, "pcns_", 5);
    hex_lower(w->webhook_id + 5, random, sizeof(random));

    {
        const pcns_bytes source = {(const BYTE *)w->cfg.source, w->cfg.source_len};
        const pcns_bytes webhook_id = {w->webhook_id, PCNS_WEBHOOK_ID_LEN};
        const pcns_bytes user = {w->user, (ULONG)user_len};
        const pcns_bytes key_id = {(const BYTE *)w->cfg.key_id, w->cfg.key_id_len};

        st = pcns_seal_info(source, webhook_id, user, key_id, w->info, sizeof(w->info),
                            &info_len);
        if (!BCRYPT_SUCCESS(st)) {
            report_failure(&w->msg, UserName, L"building the seal's info failed", NULL,
                           (DWORD)st);
            goto out;
        }
        st = pcns_seal(w->cfg.recipient_public_key, w->info, info_len, w->password,
                       (ULONG)password_len, w->sealed, sizeof(w->sealed), &sealed_len);
        SecureZeroMemory(w->password, sizeof(w->password));
        if (!BCRYPT_SUCCESS(st)) {
            report_failure(&w->msg, UserName, L"sealing failed (CNG)", NULL, (DWORD)st);
            goto out;
        }

        rec.version = PCNS_SPOOL_VERSION;
        rec.flags = 0;
        rec.rid = RelativeId;
        rec.changed_at = change_time();
        rec.webhook_id = webhook_id;
        rec.source = source;
        rec.user = user;
        rec.key_id = key_id;
        rec.sealed.data = w->sealed;
        rec.sealed.len = sealed_len;
    }
    rc = pcns_spool_write(w->cfg.spool_dir, &rec, NULL, &step);
    if (rc != ERROR_SUCCESS) {
        report_failure(&w->msg, UserName, L"writing the spool record in SpoolDir failed", step,
                       rc);
        goto out;
    }

    /* Wake the sender if it is running; it also polls, so an absent event is fine. */
    spool_event = sender_event();
    if (spool_event != NULL)
        SetEvent(spool_event);

out:
    SecureZeroMemory(random, sizeof(random));
    SecureZeroMemory(w, sizeof(*w));
    HeapFree(heap, 0, w);
    return STATUS_OK;
}
