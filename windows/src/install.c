/* install.c: `pcns-sender.exe install` and `uninstall` (include/pcns_install.h).
 *
 * install, in this order, each step idempotent, stopping at the first failure:
 *   1. copy pcnsflt.dll to %SystemRoot%\System32 (a loaded copy is renamed aside first and
 *      deleted at the reboot);
 *   2. create the spool folder and its bad\ subfolder, DACL "D:P(A;OICI;FA;;;SY)" (SYSTEM only);
 *   3. register the event source "pcns" (EventMessageFile = this exe, TypesSupported 7);
 *   4. create or update the pcns-sender service (auto start, LocalSystem, restart on failure);
 *   5. append "pcnsflt" to LSA's Notification Packages, last, so a failure before it leaves LSA as
 *      it was; every existing entry and its order are kept, a duplicate is never added.
 * uninstall undoes them in this order: service, Notification Packages, event source, DLL, spool;
 * it attempts every step even after one fails, and keeps HKLM\SOFTWARE\pcns\Sender unless
 * --purge, and a spool that still holds changes (it says how many).
 *
 * Runs as an elevated administrator (by hand) or as SYSTEM (the MSI's deferred custom action).
 * The spool is SYSTEM-only, so an administrator reaches it through SeBackupPrivilege and
 * SeRestorePrivilege and handles opened with FILE_FLAG_BACKUP_SEMANTICS.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <sddl.h>
#include <stdarg.h>
#include <stdio.h>
#include <wchar.h>

#include "pcns_config.h"
#include "pcns_install.h"

#define PATH_CAP 1024
#define LSA_KEY L"SYSTEM\\CurrentControlSet\\Control\\Lsa"
#define NP_VALUE L"Notification Packages"
#define EVENTLOG_KEY                                                                               \
    L"SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\" PCNS_EVENT_SOURCE
#define SENDER_KEY PCNS_REG_KEY
#define PCNS_KEY L"SOFTWARE\\pcns"
#define SPOOL_SDDL L"D:P(A;OICI;FA;;;SY)"
#define SERVICE_DESCRIPTION_TEXT                                                                   \
    L"Delivers the password changes that pcnsflt.dll captures on this domain controller to pcns, " \
    L"oldest first, signed; keeps them in the spool until pcns has accepted them."
#define NP_MAX_BYTES (64u * 1024u) /* Notification Packages is a handful of names */
#define FILE_MAX_BYTES (64u * 1024u * 1024u)
#define STOP_WAIT_MS 30000u

/* ---- output ------------------------------------------------------------------------------ */

static void vemit(DWORD which, const wchar_t *fmt, va_list ap)
{
    wchar_t buf[2048];
    char utf8[3 * 2048];
    DWORD written = 0, mode = 0;
    HANDLE h;
    int n, m;

    n = _vsnwprintf(buf, ARRAYSIZE(buf) - 1, fmt, ap);
    if (n < 0 || n > (int)ARRAYSIZE(buf) - 1)
        n = (int)ARRAYSIZE(buf) - 1; /* truncated: print what fitted */
    buf[n] = L'\0';
    h = GetStdHandle(which);
    if (h == NULL || h == INVALID_HANDLE_VALUE)
        return; /* no console and no redirection (the MSI's custom action): nowhere to print */
    if (GetConsoleMode(h, &mode)) {
        if (!WriteConsoleW(h, buf, (DWORD)n, &written, NULL))
            return; /* nothing sensible to do when the console refuses output */
        return;
    }
    m = WideCharToMultiByte(CP_UTF8, 0, buf, n, utf8, (int)sizeof(utf8), NULL, NULL);
    if (m <= 0)
        return;
    if (!WriteFile(h, utf8, (DWORD)m, &written, NULL))
        return; /* a closed pipe: the caller is gone */
}

static void say(const wchar_t *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(STD_OUTPUT_HANDLE, fmt, ap);
    va_end(ap);
}

static void complain(const wchar_t *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(STD_ERROR_HANDLE, fmt, ap);
    va_end(ap);
}

/* "<what>: <system message> (error N)" on stderr; returns 1, the failing exit code. */
static int fail(const wchar_t *what, DWORD err)
{
    wchar_t msg[512];
    DWORD n = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, err,
                             0, msg, ARRAYSIZE(msg), NULL);
    while (n > 0 && (msg[n - 1] == L'\r' || msg[n - 1] == L'\n' || msg[n - 1] == L' ' ||
                     msg[n - 1] == L'.'))
        n--;
    msg[n] = L'\0';
    complain(L"pcns-sender: %ls: %ls (error %lu)\n", what, n ? msg : L"unknown error",
             (unsigned long)err);
    return 1;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static BOOL fmt(wchar_t *out, size_t cap, const wchar_t *format, ...)
{
    va_list ap;
    int n;
    va_start(ap, format);
    n = _vsnwprintf(out, cap, format, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            out[0] = L'\0';
        return FALSE;
    }
    out[n] = L'\0';
    return TRUE;
}

static BOOL same_name(const wchar_t *a, int alen, const wchar_t *b)
{
    return CompareStringOrdinal(a, alen, b, -1, TRUE) == CSTR_EQUAL;
}

/* Backup and restore privileges let an administrator list and delete inside the SYSTEM-only spool.
 * Best effort: without them (SYSTEM has them; a non-elevated user does not) the later opens fail
 * and report why. */
void pcns_enable_backup_privileges(void)
{
    static const wchar_t *names[] = {SE_BACKUP_NAME, SE_RESTORE_NAME};
    HANDLE token = NULL;
    size_t i;

    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY, &token))
        return;
    for (i = 0; i < ARRAYSIZE(names); i++) {
        TOKEN_PRIVILEGES tp;
        tp.PrivilegeCount = 1;
        tp.Privileges[0].Attributes = SE_PRIVILEGE_ENABLED;
        if (!LookupPrivilegeValueW(NULL, names[i], &tp.Privileges[0].Luid))
            continue;
        if (!AdjustTokenPrivileges(token, FALSE, &tp, sizeof(tp), NULL, NULL))
            continue; /* ERROR_NOT_ALL_ASSIGNED comes as success with a LastError: fine */
    }
    if (!CloseHandle(token))
        return;
}

static BOOL is_admin(void)
{
    SID_IDENTIFIER_AUTHORITY nt = {SECURITY_NT_AUTHORITY};
    PSID admins = NULL;
    BOOL member = FALSE;

    if (!AllocateAndInitializeSid(&nt, 2, SECURITY_BUILTIN_DOMAIN_RID, DOMAIN_ALIAS_RID_ADMINS, 0,
                                  0, 0, 0, 0, 0, &admins))
        return FALSE;
    if (!CheckTokenMembership(NULL, admins, &member))
        member = FALSE;
    FreeSid(admins);
    return member;
}

static int need_admin(void)
{
    if (is_admin())
        return 0;
    complain(L"pcns-sender: run this from an elevated (\"Run as administrator\") prompt on the "
             L"domain controller\n");
    return 1;
}

/* The directory this exe is in, with a trailing backslash; and the exe's own path. */
static int exe_paths(wchar_t *exe, wchar_t *dir)
{
    DWORD n = GetModuleFileNameW(NULL, exe, PATH_CAP);
    wchar_t *slash;

    if (n == 0)
        return fail(L"GetModuleFileNameW", GetLastError());
    if (n >= PATH_CAP)
        return fail(L"the path of pcns-sender.exe", ERROR_FILENAME_EXCED_RANGE);
    memcpy(dir, exe, (n + 1) * sizeof(wchar_t));
    slash = wcsrchr(dir, L'\\');
    if (slash == NULL)
        return fail(L"the path of pcns-sender.exe", ERROR_BAD_PATHNAME);
    slash[1] = L'\0';
    return 0;
}

/* HKLM\SOFTWARE\pcns\Sender as the filter and the sender read it (src/config.c). The caller
 * frees it with config_free(). */
static pcns_config *config_load(void)
{
    pcns_config *cfg = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof(*cfg));
    DWORD err;

    if (cfg == NULL) {
        fail(L"reading HKLM\\" PCNS_REG_KEY, ERROR_NOT_ENOUGH_MEMORY);
        return NULL;
    }
    err = pcns_config_read(cfg);
    if (err != ERROR_SUCCESS && err != ERROR_FILE_NOT_FOUND) {
        fail(L"reading HKLM\\" PCNS_REG_KEY, err);
        pcns_config_clear(cfg);
        HeapFree(GetProcessHeap(), 0, cfg);
        return NULL;
    }
    return cfg;
}

static void config_free(pcns_config *cfg)
{
    if (cfg == NULL)
        return;
    pcns_config_clear(cfg);
    HeapFree(GetProcessHeap(), 0, cfg);
}

/* The spool folder, as the filter and the sender find it: SpoolDir, or %ProgramData%\pcns\spool. */
static int spool_path(wchar_t *out, BOOL *is_default)
{
    pcns_config *cfg = config_load();
    int rc = 1;

    if (cfg == NULL)
        return 1;
    if (cfg->invalid & PCNS_CFG_SPOOL_DIR) {
        complain(L"pcns-sender: HKLM\\" PCNS_REG_KEY L"\\" PCNS_REG_SPOOL_DIR
                 L" is set but not usable (type, length or %%variables%%); fix it with "
                 L"pcns-sender.exe configure --spool\n");
        goto cleanup;
    }
    if (cfg->spool_dir_len == 0 || cfg->spool_dir_len >= PATH_CAP || cfg->spool_dir[0] == L'%') {
        fail(L"the spool folder (is %ProgramData% set?)", ERROR_BAD_PATHNAME);
        goto cleanup;
    }
    memcpy(out, cfg->spool_dir, (cfg->spool_dir_len + 1) * sizeof(wchar_t));
    *is_default = !(cfg->present & PCNS_CFG_SPOOL_DIR);
    rc = 0;
cleanup:
    config_free(cfg);
    return rc;
}

/* ---- 1. the DLL -------------------------------------------------------------------------- */

static HANDLE open_any(const wchar_t *path, DWORD access)
{
    return CreateFileW(path, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                       OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, NULL);
}

/* TRUE when both names are the same file (the MSI put the DLL in System32 already). */
static BOOL same_file(const wchar_t *a, const wchar_t *b)
{
    BY_HANDLE_FILE_INFORMATION ia, ib;
    HANDLE ha = open_any(a, FILE_READ_ATTRIBUTES), hb = INVALID_HANDLE_VALUE;
    BOOL same = FALSE;

    if (ha == INVALID_HANDLE_VALUE)
        goto cleanup;
    hb = open_any(b, FILE_READ_ATTRIBUTES);
    if (hb == INVALID_HANDLE_VALUE)
        goto cleanup;
    if (!GetFileInformationByHandle(ha, &ia) || !GetFileInformationByHandle(hb, &ib))
        goto cleanup;
    same = ia.dwVolumeSerialNumber == ib.dwVolumeSerialNumber &&
           ia.nFileIndexHigh == ib.nFileIndexHigh && ia.nFileIndexLow == ib.nFileIndexLow;
cleanup:
    if (hb != INVALID_HANDLE_VALUE)
        CloseHandle(hb);
    if (ha != INVALID_HANDLE_VALUE)
        CloseHandle(ha);
    return same;
}

static DWORD read_file(const wchar_t *path, BYTE **data, DWORD *len)
{
    HANDLE h = CreateFileW(path, GENERIC_READ,
                           FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                           OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    LARGE_INTEGER size;
    DWORD err = ERROR_SUCCESS, got = 0;
    BYTE *buf = NULL;

    *data = NULL;
    *len = 0;
    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!GetFileSizeEx(h, &size)) {
        err = GetLastError();
        goto cleanup;
    }
    if (size.QuadPart < 0 || size.QuadPart > FILE_MAX_BYTES) {
        err = ERROR_FILE_TOO_LARGE;
        goto cleanup;
    }
    buf = HeapAlloc(GetProcessHeap(), 0, (SIZE_T)size.QuadPart + 1);
    if (buf == NULL) {
        err = ERROR_NOT_ENOUGH_MEMORY;
        goto cleanup;
    }
    if (!ReadFile(h, buf, (DWORD)size.QuadPart, &got, NULL)) {
        err = GetLastError();
        goto cleanup;
    }
    if (got != (DWORD)size.QuadPart) {
        err = ERROR_HANDLE_EOF;
        goto cleanup;
    }
    *data = buf;
    *len = got;
    buf = NULL;
cleanup:
    if (buf != NULL)
        HeapFree(GetProcessHeap(), 0, buf);
    CloseHandle(h);
    return err;
}

/* TRUE when both files hold the same bytes (a rerun of install: nothing to copy). */
static BOOL same_content(const wchar_t *a, const wchar_t *b)
{
    BYTE *da = NULL, *db = NULL;
    DWORD la = 0, lb = 0;
    BOOL same = FALSE;

    if (read_file(a, &da, &la) != ERROR_SUCCESS || read_file(b, &db, &lb) != ERROR_SUCCESS)
        goto cleanup;
    same = la == lb && memcmp(da, db, la) == 0;
cleanup:
    if (db != NULL)
        HeapFree(GetProcessHeap(), 0, db);
    if (da != NULL)
        HeapFree(GetProcessHeap(), 0, da);
    return same;
}

static int dll_target(wchar_t *dst)
{
    wchar_t sys[PATH_CAP];
    UINT n = GetSystemDirectoryW(sys, PATH_CAP);

    if (n == 0)
        return fail(L"GetSystemDirectoryW", GetLastError());
    if (n >= PATH_CAP || !fmt(dst, PATH_CAP, L"%ls\\%ls", sys, PCNS_FILTER_DLL))
        return fail(L"the System32 path", ERROR_FILENAME_EXCED_RANGE);
    return 0;
}

/* The errors a file held open or mapped by another process (LSASS) gives. */
static BOOL in_use(DWORD err)
{
    return err == ERROR_SHARING_VIOLATION || err == ERROR_ACCESS_DENIED ||
           err == ERROR_USER_MAPPED_FILE;
}

/* A loaded DLL can be neither overwritten nor deleted, but it can be renamed. Renamed aside, with
 * the renamed file deleted at the reboot, the name is free at once and the pending deletion can
 * never hit a newer copy (the way Windows Installer treats files in use). */
static int move_aside(const wchar_t *dst, wchar_t *aside)
{
    ULONGLONG now = GetTickCount64();

    if (!fmt(aside, PATH_CAP, L"%ls.pcns-old-%08lx", dst, (unsigned long)(now & 0xffffffffu)))
        return fail(L"the renamed DLL's path", ERROR_FILENAME_EXCED_RANGE);
    if (!MoveFileExW(dst, aside, 0))
        return fail(L"renaming the loaded pcnsflt.dll aside", GetLastError());
    if (!MoveFileExW(aside, NULL, MOVEFILE_DELAY_UNTIL_REBOOT))
        complain(L"pcns-sender: %ls could not be scheduled for deletion at the reboot (error %lu); "
                 L"delete it after the reboot\n",
                 aside, (unsigned long)GetLastError());
    return 0;
}

static int install_dll(const wchar_t *src_opt, const wchar_t *exe_dir)
{
    wchar_t given[PATH_CAP], src[PATH_CAP], dst[PATH_CAP], aside[PATH_CAP];
    DWORD n, attrs, err;

    if (src_opt != NULL) {
        if (!fmt(given, PATH_CAP, L"%ls", src_opt))
            return fail(L"--dll", ERROR_FILENAME_EXCED_RANGE);
    } else if (!fmt(given, PATH_CAP, L"%ls%ls", exe_dir, PCNS_FILTER_DLL)) {
        return fail(L"the path of pcnsflt.dll", ERROR_FILENAME_EXCED_RANGE);
    }
    n = GetFullPathNameW(given, PATH_CAP, src, NULL);
    if (n == 0)
        return fail(L"GetFullPathNameW(--dll)", GetLastError());
    if (n >= PATH_CAP)
        return fail(L"--dll", ERROR_FILENAME_EXCED_RANGE);
    attrs = GetFileAttributesW(src);
    if (attrs == INVALID_FILE_ATTRIBUTES || (attrs & FILE_ATTRIBUTE_DIRECTORY)) {
        complain(L"pcns-sender: %ls not found; put pcnsflt.dll beside pcns-sender.exe or name it "
                 L"with --dll PATH\n", src);
        return 1;
    }
    if (dll_target(dst))
        return 1;
    if (same_file(src, dst)) {
        say(L"filter DLL:      %ls (already in place)\n", dst);
        return 0;
    }
    if (GetFileAttributesW(dst) != INVALID_FILE_ATTRIBUTES && same_content(src, dst)) {
        say(L"filter DLL:      %ls (up to date)\n", dst);
        return 0;
    }
    if (CopyFileW(src, dst, FALSE)) {
        say(L"filter DLL:      copied %ls to %ls\n", src, dst);
        return 0;
    }
    err = GetLastError();
    if (!in_use(err))
        return fail(L"copying pcnsflt.dll to System32", err);
    /* LSASS has the old one loaded: rename it aside, then copy the new one to the free name. */
    if (move_aside(dst, aside))
        return 1;
    if (!CopyFileW(src, dst, FALSE)) {
        err = GetLastError();
        if (!MoveFileExW(aside, dst, 0))
            complain(L"pcns-sender: and %ls could not be renamed back to %ls (error %lu)\n",
                     aside, dst, (unsigned long)GetLastError());
        return fail(L"copying pcnsflt.dll to System32", err);
    }
    say(L"filter DLL:      copied %ls to %ls; the copy LSASS has loaded was renamed to %ls and is "
        L"deleted at the reboot\n",
        src, dst, aside);
    return 0;
}

static int uninstall_dll(void)
{
    wchar_t dst[PATH_CAP], aside[PATH_CAP];
    DWORD err;

    if (dll_target(dst))
        return 1;
    if (DeleteFileW(dst)) {
        say(L"filter DLL:      deleted %ls\n", dst);
        return 0;
    }
    err = GetLastError();
    if (err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND) {
        say(L"filter DLL:      %ls was not there\n", dst);
        return 0;
    }
    if (!in_use(err))
        return fail(L"deleting pcnsflt.dll", err);
    /* LSASS holds it until the reboot: rename it aside (deleted at the reboot), or, when even
     * that fails, have the name itself deleted at the reboot. */
    if (move_aside(dst, aside) == 0) {
        say(L"filter DLL:      %ls is in use; renamed to %ls, deleted at the reboot\n", dst, aside);
        return 0;
    }
    if (!MoveFileExW(dst, NULL, MOVEFILE_DELAY_UNTIL_REBOOT))
        return fail(L"scheduling pcnsflt.dll's deletion for the reboot", GetLastError());
    say(L"filter DLL:      %ls is in use; it is deleted at the reboot\n", dst);
    return 0;
}

/* ---- 5. LSA's Notification Packages (REG_MULTI_SZ) --------------------------------------- */

struct entry {
    size_t off, len; /* in WCHARs, into the value's data */
};

struct packages {
    wchar_t *data;      /* the value as read, plus two NULs of our own */
    size_t units;       /* WCHARs of data that were the value's */
    struct entry *list; /* the entries LSA sees, in order */
    size_t count;
    BOOL absent, unterminated;
    size_t ignored; /* WCHARs after the list's end that are not NUL (LSA ignores them too) */
};

static void packages_free(struct packages *p)
{
    if (p->list != NULL)
        HeapFree(GetProcessHeap(), 0, p->list);
    if (p->data != NULL)
        HeapFree(GetProcessHeap(), 0, p->data);
    ZeroMemory(p, sizeof(*p));
}

/* Split the data by its length, never trusting a terminator: each entry runs to the next NUL or
 * to the end of the data; an empty string ends the list, as it ends LSA's reading of it. */
static void packages_parse(struct packages *p)
{
    size_t i = 0, k;

    p->count = 0;
    while (i < p->units) {
        size_t start = i;
        while (i < p->units && p->data[i] != L'\0')
            i++;
        if (i == start)
            break; /* the empty string: the list's end */
        p->list[p->count].off = start;
        p->list[p->count].len = i - start;
        p->count++;
        if (i < p->units)
            i++; /* the entry's NUL */
    }
    p->unterminated = p->units > 0 && i >= p->units; /* no empty string before the data ran out */
    p->ignored = 0;
    for (k = i; k < p->units; k++)
        if (p->data[k] != L'\0')
            p->ignored++;
}

static int packages_read(HKEY lsa, struct packages *p)
{
    DWORD type = 0, cb = 0, attempt;
    LSTATUS st;

    ZeroMemory(p, sizeof(*p));
    for (attempt = 0; attempt < 4; attempt++) {
        st = RegQueryValueExW(lsa, NP_VALUE, NULL, &type, NULL, &cb);
        if (st == ERROR_FILE_NOT_FOUND) {
            p->absent = TRUE;
            return 0;
        }
        if (st != ERROR_SUCCESS)
            return fail(L"reading Notification Packages", (DWORD)st);
        if (type != REG_MULTI_SZ) {
            complain(L"pcns-sender: HKLM\\" LSA_KEY L"\\" NP_VALUE L" has registry type %lu, not "
                     L"REG_MULTI_SZ; left unchanged: fix it by hand, then run this again\n",
                     (unsigned long)type);
            return 1;
        }
        if (cb > NP_MAX_BYTES)
            return fail(L"Notification Packages is implausibly large; left unchanged",
                        ERROR_FILE_TOO_LARGE);
        if (p->data != NULL)
            HeapFree(GetProcessHeap(), 0, p->data);
        /* room for the data, rounded up to whole WCHARs, and two NULs that are ours */
        p->data = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, cb + 2 * sizeof(wchar_t) + 1);
        if (p->data == NULL)
            return fail(L"reading Notification Packages", ERROR_NOT_ENOUGH_MEMORY);
        st = RegQueryValueExW(lsa, NP_VALUE, NULL, &type, (BYTE *)p->data, &cb);
        if (st == ERROR_MORE_DATA)
            continue; /* it grew between the two calls */
        if (st != ERROR_SUCCESS)
            return fail(L"reading Notification Packages", (DWORD)st);
        if (type != REG_MULTI_SZ)
            continue; /* changed under us: check the type again */
        p->units = cb / sizeof(wchar_t); /* an odd last byte is not a WCHAR: ignored */
        p->list = HeapAlloc(GetProcessHeap(), 0, (p->units / 2 + 1) * sizeof(struct entry));
        if (p->list == NULL)
            return fail(L"reading Notification Packages", ERROR_NOT_ENOUGH_MEMORY);
        packages_parse(p);
        return 0;
    }
    return fail(L"reading Notification Packages (it kept changing)", ERROR_RETRY);
}

/* "scecli, rassfm" for the messages. */
static void packages_text(const struct packages *p, const wchar_t *skip, const wchar_t *add,
                          wchar_t *out, size_t cap)
{
    size_t used = 0, i;
    BOOL first = TRUE;

    out[0] = L'\0';
    for (i = 0; i <= p->count; i++) {
        const wchar_t *s;
        size_t len;
        if (i < p->count) {
            s = p->data + p->list[i].off;
            len = p->list[i].len;
            if (skip != NULL && same_name(s, (int)len, skip))
                continue;
        } else if (add != NULL) {
            s = add;
            len = wcslen(add);
        } else {
            break;
        }
        if (used + len + 3 >= cap) {
            if (cap > 4)
                wcscpy(out + (used < cap - 4 ? used : cap - 4), L"...");
            return;
        }
        if (!first) {
            out[used++] = L',';
            out[used++] = L' ';
        }
        memcpy(out + used, s, len * sizeof(wchar_t));
        used += len;
        out[used] = L'\0';
        first = FALSE;
    }
    if (first && cap > 7)
        wcscpy(out, L"(none)");
}

/* Write the entries (minus `skip`, plus `add`), each NUL-terminated, then the list's final NUL. */
static int packages_write(HKEY lsa, const struct packages *p, const wchar_t *skip,
                          const wchar_t *add)
{
    size_t units = 1, i, at = 0, addlen = add ? wcslen(add) : 0;
    wchar_t *out = NULL;
    LSTATUS st;
    int rc = 1;

    for (i = 0; i < p->count; i++)
        units += p->list[i].len + 1;
    if (add)
        units += addlen + 1;
    if (units * sizeof(wchar_t) > NP_MAX_BYTES)
        return fail(L"writing Notification Packages", ERROR_FILE_TOO_LARGE);
    out = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, units * sizeof(wchar_t));
    if (out == NULL)
        return fail(L"writing Notification Packages", ERROR_NOT_ENOUGH_MEMORY);
    for (i = 0; i < p->count; i++) {
        const wchar_t *s = p->data + p->list[i].off;
        if (skip != NULL && same_name(s, (int)p->list[i].len, skip))
            continue;
        memcpy(out + at, s, p->list[i].len * sizeof(wchar_t));
        at += p->list[i].len + 1; /* the NUL is already there (zeroed) */
    }
    if (add) {
        memcpy(out + at, add, addlen * sizeof(wchar_t));
        at += addlen + 1;
    }
    at += 1; /* the list's final NUL */
    st = RegSetValueExW(lsa, NP_VALUE, 0, REG_MULTI_SZ, (const BYTE *)out,
                        (DWORD)(at * sizeof(wchar_t)));
    if (st != ERROR_SUCCESS) {
        fail(L"writing Notification Packages", (DWORD)st);
        goto cleanup;
    }
    rc = 0;
cleanup:
    HeapFree(GetProcessHeap(), 0, out);
    return rc;
}

static BOOL packages_has(const struct packages *p, const wchar_t *name)
{
    size_t i;
    for (i = 0; i < p->count; i++)
        if (same_name(p->data + p->list[i].off, (int)p->list[i].len, name))
            return TRUE;
    return FALSE;
}

static void packages_notes(const struct packages *p)
{
    if (p->absent)
        say(L"                 (the value was absent; created)\n");
    if (p->unterminated && !p->absent)
        say(L"                 (the value lacked its final NUL; written well-formed)\n");
    if (p->ignored)
        say(L"                 (%lu characters after the list's empty-string end were dropped; "
            L"LSA ignores them too)\n",
            (unsigned long)p->ignored);
}

static int packages_edit(BOOL adding)
{
    HKEY lsa = NULL;
    struct packages p;
    wchar_t before[512], after[512];
    LSTATUS st;
    int rc = 1;

    ZeroMemory(&p, sizeof(p));
    if (adding)
        st = RegCreateKeyExW(HKEY_LOCAL_MACHINE, LSA_KEY, 0, NULL, 0,
                             KEY_QUERY_VALUE | KEY_SET_VALUE, NULL, &lsa, NULL);
    else
        st = RegOpenKeyExW(HKEY_LOCAL_MACHINE, LSA_KEY, 0, KEY_QUERY_VALUE | KEY_SET_VALUE, &lsa);
    if (st == ERROR_FILE_NOT_FOUND && !adding) {
        say(L"LSA packages:    %ls was not listed\n", PCNS_FILTER_PACKAGE);
        return 0;
    }
    if (st != ERROR_SUCCESS)
        return fail(L"opening HKLM\\" LSA_KEY, (DWORD)st);
    if (packages_read(lsa, &p))
        goto cleanup;
    packages_text(&p, NULL, NULL, before, ARRAYSIZE(before));
    if (adding) {
        if (packages_has(&p, PCNS_FILTER_PACKAGE)) {
            say(L"LSA packages:    %ls (%ls already listed)\n", before, PCNS_FILTER_PACKAGE);
            rc = 0;
            goto cleanup;
        }
        if (packages_write(lsa, &p, NULL, PCNS_FILTER_PACKAGE))
            goto cleanup;
        packages_text(&p, NULL, PCNS_FILTER_PACKAGE, after, ARRAYSIZE(after));
    } else {
        if (!packages_has(&p, PCNS_FILTER_PACKAGE)) {
            say(L"LSA packages:    %ls (%ls was not listed)\n", before, PCNS_FILTER_PACKAGE);
            rc = 0;
            goto cleanup;
        }
        if (packages_write(lsa, &p, PCNS_FILTER_PACKAGE, NULL))
            goto cleanup;
        packages_text(&p, PCNS_FILTER_PACKAGE, NULL, after, ARRAYSIZE(after));
    }
    say(L"LSA packages:    Notification Packages %ls -> %ls\n", p.absent ? L"(absent)" : before,
        after);
    packages_notes(&p);
    rc = 0;
cleanup:
    packages_free(&p);
    RegCloseKey(lsa);
    return rc;
}

/* ---- 2. the spool ------------------------------------------------------------------------ */

/* Whether `path` is a folder, asked with backup semantics: an administrator may not read the
 * attributes of a SYSTEM-only folder otherwise. */
static BOOL is_dir(const wchar_t *path)
{
    BY_HANDLE_FILE_INFORMATION info;
    HANDLE h = open_any(path, FILE_READ_ATTRIBUTES);
    BOOL dir = FALSE;

    if (h == INVALID_HANDLE_VALUE)
        return FALSE;
    if (GetFileInformationByHandle(h, &info))
        dir = (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) != 0;
    CloseHandle(h);
    return dir;
}

/* Create every missing folder of `path` (its parents inherit their ACLs as usual). */
static int make_dirs(const wchar_t *path)
{
    wchar_t buf[PATH_CAP];
    size_t i, len = wcslen(path);
    DWORD err;

    if (len == 0 || len >= PATH_CAP)
        return fail(L"the spool path", ERROR_BAD_PATHNAME);
    memcpy(buf, path, (len + 1) * sizeof(wchar_t));
    /* start after "C:\" or "\\server\share\" */
    i = 0;
    if (len >= 2 && buf[0] == L'\\' && buf[1] == L'\\') {
        int seps = 0;
        for (i = 2; i < len && seps < 2; i++)
            if (buf[i] == L'\\')
                seps++;
    } else if (len >= 3 && buf[1] == L':') {
        i = 3;
    }
    for (; i <= len; i++) {
        if (buf[i] != L'\\' && buf[i] != L'/' && buf[i] != L'\0')
            continue;
        if (i == 0 || buf[i - 1] == L'\\' || buf[i - 1] == L'/')
            continue;
        buf[i] = L'\0';
        if (!is_dir(buf) && !CreateDirectoryW(buf, NULL)) {
            err = GetLastError();
            if (err != ERROR_ALREADY_EXISTS)
                return fail(buf, err);
        }
        if (i < len)
            buf[i] = path[i];
    }
    return 0;
}

/* Set a protected DACL from SDDL on a folder, and read it back as SDDL into `now`. */
static int protect_dir(const wchar_t *path, const wchar_t *sddl, wchar_t *now, size_t cap)
{
    PSECURITY_DESCRIPTOR sd = NULL, got = NULL;
    wchar_t *text = NULL;
    HANDLE h = INVALID_HANDLE_VALUE;
    DWORD need = 0;
    int rc = 1;

    now[0] = L'\0';
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, NULL))
        return fail(L"ConvertStringSecurityDescriptorToSecurityDescriptorW", GetLastError());
    h = open_any(path, READ_CONTROL | WRITE_DAC);
    if (h == INVALID_HANDLE_VALUE) {
        fail(path, GetLastError());
        goto cleanup;
    }
    /* The kernel call, not SetSecurityInfo: it sets this folder's DACL without walking its
     * children (which an administrator may no longer open), as WireGuard's data directory does. */
    if (!SetKernelObjectSecurity(h, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                                 sd)) {
        fail(L"setting the spool folder's DACL", GetLastError());
        goto cleanup;
    }
    if (GetKernelObjectSecurity(h, DACL_SECURITY_INFORMATION, NULL, 0, &need) ||
        GetLastError() != ERROR_INSUFFICIENT_BUFFER) {
        fail(L"reading the spool folder's DACL back", GetLastError());
        goto cleanup;
    }
    got = HeapAlloc(GetProcessHeap(), 0, need);
    if (got == NULL) {
        fail(L"reading the spool folder's DACL back", ERROR_NOT_ENOUGH_MEMORY);
        goto cleanup;
    }
    if (!GetKernelObjectSecurity(h, DACL_SECURITY_INFORMATION, got, need, &need)) {
        fail(L"reading the spool folder's DACL back", GetLastError());
        goto cleanup;
    }
    if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(got, SDDL_REVISION_1,
                                                              DACL_SECURITY_INFORMATION, &text,
                                                              NULL)) {
        fail(L"ConvertSecurityDescriptorToStringSecurityDescriptorW", GetLastError());
        goto cleanup;
    }
    if (!fmt(now, cap, L"%ls", text))
        now[0] = L'\0';
    rc = 0;
cleanup:
    if (text != NULL)
        LocalFree(text);
    if (got != NULL)
        HeapFree(GetProcessHeap(), 0, got);
    if (h != INVALID_HANDLE_VALUE)
        CloseHandle(h);
    LocalFree(sd);
    return rc;
}

static int install_spool(void)
{
    wchar_t spool[PATH_CAP], bad[PATH_CAP], sddl[256];
    BOOL is_default = FALSE;

    if (spool_path(spool, &is_default))
        return 1;
    if (!fmt(bad, PATH_CAP, L"%ls\\bad", spool))
        return fail(L"the spool path", ERROR_FILENAME_EXCED_RANGE);
    /* Both exist before either is closed to administrators, so a first install never has to
     * create anything inside a SYSTEM-only folder. */
    if (make_dirs(spool) || make_dirs(bad))
        return 1;
    if (protect_dir(bad, SPOOL_SDDL, sddl, ARRAYSIZE(sddl)))
        return 1;
    if (protect_dir(spool, SPOOL_SDDL, sddl, ARRAYSIZE(sddl)))
        return 1;
    say(L"spool:           %ls and bad\\, DACL %ls\n", spool, sddl);
    return 0;
}

struct spool_count {
    DWORD records; /* *.pcs: changes waiting */
    DWORD bad;     /* anything in bad\ */
    DWORD other;   /* *.tmp and the like */
};

static DWORD count_dir(const wchar_t *dir, BOOL in_bad, struct spool_count *c)
{
    /* DWORD-aligned, as FILE_ID_BOTH_DIR_INFO needs */
    DWORD buf[16 * 1024 / sizeof(DWORD)];
    HANDLE h = open_any(dir, FILE_LIST_DIRECTORY | SYNCHRONIZE);
    DWORD err = ERROR_SUCCESS;

    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    for (;;) {
        FILE_ID_BOTH_DIR_INFO *e = (FILE_ID_BOTH_DIR_INFO *)buf;
        if (!GetFileInformationByHandleEx(h, FileIdBothDirectoryInfo, buf, sizeof(buf))) {
            err = GetLastError();
            if (err == ERROR_NO_MORE_FILES)
                err = ERROR_SUCCESS;
            break;
        }
        for (;;) {
            const wchar_t *name = e->FileName;
            int len = (int)(e->FileNameLength / sizeof(wchar_t));
            BOOL dot = (len == 1 && name[0] == L'.') ||
                       (len == 2 && name[0] == L'.' && name[1] == L'.');
            if (dot) {
                /* . and .. */
            } else if (e->FileAttributes & FILE_ATTRIBUTE_DIRECTORY) {
                if (!in_bad && same_name(name, len, L"bad")) {
                    wchar_t sub[PATH_CAP];
                    if (!fmt(sub, PATH_CAP, L"%ls\\bad", dir)) {
                        err = ERROR_FILENAME_EXCED_RANGE;
                        goto cleanup;
                    }
                    err = count_dir(sub, TRUE, c);
                    if (err != ERROR_SUCCESS)
                        goto cleanup;
                } else if (in_bad) {
                    c->bad++;
                } else {
                    c->other++;
                }
            } else if (in_bad) {
                c->bad++;
            } else if (len > 4 && same_name(name + len - 4, 4, L".pcs")) {
                c->records++;
            } else {
                c->other++;
            }
            if (e->NextEntryOffset == 0)
                break;
            e = (FILE_ID_BOTH_DIR_INFO *)((BYTE *)e + e->NextEntryOffset);
        }
    }
cleanup:
    CloseHandle(h);
    return err;
}

static DWORD delete_dir(const wchar_t *dir)
{
    FILE_DISPOSITION_INFO del = {TRUE};
    HANDLE h = open_any(dir, DELETE);
    DWORD err = ERROR_SUCCESS;

    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!SetFileInformationByHandle(h, FileDispositionInfo, &del, sizeof(del)))
        err = GetLastError();
    CloseHandle(h);
    return err;
}

static int uninstall_spool(BOOL keep)
{
    wchar_t spool[PATH_CAP], bad[PATH_CAP], parent[PATH_CAP], *slash;
    struct spool_count c = {0, 0, 0};
    BOOL is_default = FALSE;
    DWORD err;

    if (spool_path(spool, &is_default))
        return 1;
    err = count_dir(spool, FALSE, &c);
    if (err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND) {
        say(L"spool:           %ls was not there\n", spool);
        return 0;
    }
    if (err != ERROR_SUCCESS)
        return fail(spool, err);
    if (c.records || c.bad || c.other) {
        say(L"spool:           kept %ls: %lu %ls still waiting for delivery", spool,
            (unsigned long)c.records, c.records == 1 ? L"change is" : L"changes are");
        if (c.bad)
            say(L", %lu unreadable in bad\\", (unsigned long)c.bad);
        if (c.other)
            say(L", %lu other %ls", (unsigned long)c.other, c.other == 1 ? L"file" : L"files");
        say(L".\n                 Reinstall and the sender delivers them (the configuration is "
            L"kept unless --purge); delete the folder yourself if they are not wanted.\n");
        return 0;
    }
    if (keep) {
        say(L"spool:           kept %ls (empty; --keep-spool)\n", spool);
        return 0;
    }
    if (!fmt(bad, PATH_CAP, L"%ls\\bad", spool))
        return fail(L"the spool path", ERROR_FILENAME_EXCED_RANGE);
    err = delete_dir(bad);
    if (err != ERROR_SUCCESS && err != ERROR_FILE_NOT_FOUND && err != ERROR_PATH_NOT_FOUND)
        return fail(bad, err);
    err = delete_dir(spool);
    if (err == ERROR_DIR_NOT_EMPTY) {
        say(L"spool:           kept %ls: a change arrived while uninstalling\n", spool);
        return 0;
    }
    if (err != ERROR_SUCCESS)
        return fail(spool, err);
    say(L"spool:           removed %ls (it was empty)\n", spool);
    /* %ProgramData%\pcns too, when it is ours and now empty */
    if (is_default && fmt(parent, PATH_CAP, L"%ls", spool) &&
        (slash = wcsrchr(parent, L'\\')) != NULL) {
        *slash = L'\0';
        if (!RemoveDirectoryW(parent)) {
            err = GetLastError();
            if (err != ERROR_DIR_NOT_EMPTY && err != ERROR_FILE_NOT_FOUND &&
                err != ERROR_PATH_NOT_FOUND)
                return fail(parent, err);
        }
    }
    return 0;
}

/* ---- 3. the event source ----------------------------------------------------------------- */

static int install_event_source(const wchar_t *exe)
{
    HKEY key = NULL;
    DWORD types = EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE;
    LSTATUS st;
    int rc = 1;

    st = RegCreateKeyExW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY, 0, NULL, 0, KEY_SET_VALUE, NULL, &key,
                         NULL);
    if (st != ERROR_SUCCESS)
        return fail(L"creating HKLM\\" EVENTLOG_KEY, (DWORD)st);
    st = RegSetValueExW(key, L"EventMessageFile", 0, REG_EXPAND_SZ, (const BYTE *)exe,
                        (DWORD)((wcslen(exe) + 1) * sizeof(wchar_t)));
    if (st != ERROR_SUCCESS) {
        fail(L"writing EventMessageFile", (DWORD)st);
        goto cleanup;
    }
    st = RegSetValueExW(key, L"TypesSupported", 0, REG_DWORD, (const BYTE *)&types, sizeof(types));
    if (st != ERROR_SUCCESS) {
        fail(L"writing TypesSupported", (DWORD)st);
        goto cleanup;
    }
    say(L"event source:    %ls in the Application log (messages from %ls)\n", PCNS_EVENT_SOURCE,
        exe);
    rc = 0;
cleanup:
    RegCloseKey(key);
    return rc;
}

static int uninstall_event_source(void)
{
    LSTATUS st = RegDeleteTreeW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY);
    if (st == ERROR_FILE_NOT_FOUND) {
        say(L"event source:    %ls was not registered\n", PCNS_EVENT_SOURCE);
        return 0;
    }
    if (st != ERROR_SUCCESS)
        return fail(L"deleting HKLM\\" EVENTLOG_KEY, (DWORD)st);
    say(L"event source:    %ls removed\n", PCNS_EVENT_SOURCE);
    return 0;
}

/* ---- 4. the service ---------------------------------------------------------------------- */

/* Url and Source set: `configure` has run, so the sender has something to do. */
static BOOL sender_configured(void)
{
    pcns_config *cfg = config_load();
    BOOL ready = cfg != NULL && (cfg->present & (PCNS_CFG_URL | PCNS_CFG_SOURCE)) ==
                                    (PCNS_CFG_URL | PCNS_CFG_SOURCE);
    config_free(cfg);
    return ready;
}

static BOOL service_state(SC_HANDLE svc, SERVICE_STATUS_PROCESS *status)
{
    DWORD need = 0;
    return QueryServiceStatusEx(svc, SC_STATUS_PROCESS_INFO, (BYTE *)status, sizeof(*status),
                                &need);
}

/* Read the failure actions back: TRUE when the service manager kept the three restarts. */
static BOOL failure_actions_kept(SC_HANDLE svc)
{
    DWORD buf[256]; /* DWORD-aligned for the structure */
    SERVICE_FAILURE_ACTIONSW *got = (SERVICE_FAILURE_ACTIONSW *)buf;
    DWORD need = 0;

    if (!QueryServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, (BYTE *)buf, sizeof(buf), &need))
        return FALSE;
    return got->cActions == 3 && got->lpsaActions != NULL && got->dwResetPeriod == 24 * 60 * 60 &&
           got->lpsaActions[0].Type == SC_ACTION_RESTART && got->lpsaActions[0].Delay == 5000 &&
           got->lpsaActions[1].Type == SC_ACTION_RESTART && got->lpsaActions[1].Delay == 30000 &&
           got->lpsaActions[2].Type == SC_ACTION_RESTART && got->lpsaActions[2].Delay == 60000;
}

static int install_service(const wchar_t *exe)
{
    SC_HANDLE scm = NULL, svc = NULL;
    wchar_t binpath[PATH_CAP + 16];
    SERVICE_DESCRIPTIONW desc;
    SC_ACTION actions[3];
    SERVICE_FAILURE_ACTIONSW failure;
    SERVICE_FAILURE_ACTIONS_FLAG flag;
    SERVICE_STATUS_PROCESS status;
    DWORD err;
    BOOL created = TRUE, kept, flag_ok = TRUE;
    int rc = 1;

    if (!fmt(binpath, ARRAYSIZE(binpath), L"\"%ls\" service", exe))
        return fail(L"the service's command line", ERROR_FILENAME_EXCED_RANGE);
    scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT | SC_MANAGER_CREATE_SERVICE);
    if (scm == NULL)
        return fail(L"OpenSCManagerW", GetLastError());
    svc = CreateServiceW(scm, PCNS_SERVICE_NAME, PCNS_SERVICE_DISPLAY, SERVICE_ALL_ACCESS,
                         SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START, SERVICE_ERROR_NORMAL,
                         binpath, NULL, NULL, NULL, NULL /* LocalSystem */, NULL);
    if (svc == NULL) {
        err = GetLastError();
        if (err != ERROR_SERVICE_EXISTS) {
            fail(L"CreateServiceW(" PCNS_SERVICE_NAME L")", err);
            goto cleanup;
        }
        created = FALSE;
        svc = OpenServiceW(scm, PCNS_SERVICE_NAME, SERVICE_ALL_ACCESS);
        if (svc == NULL) {
            fail(L"OpenServiceW(" PCNS_SERVICE_NAME L")", GetLastError());
            goto cleanup;
        }
        if (!ChangeServiceConfigW(svc, SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START,
                                  SERVICE_ERROR_NORMAL, binpath, NULL, NULL, L"\0", L"LocalSystem",
                                  L"", PCNS_SERVICE_DISPLAY)) {
            fail(L"ChangeServiceConfigW(" PCNS_SERVICE_NAME L")", GetLastError());
            goto cleanup;
        }
    }
    desc.lpDescription = (LPWSTR)SERVICE_DESCRIPTION_TEXT;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_DESCRIPTION, &desc)) {
        fail(L"setting the service's description", GetLastError());
        goto cleanup;
    }
    actions[0].Type = SC_ACTION_RESTART;
    actions[0].Delay = 5000;
    actions[1].Type = SC_ACTION_RESTART;
    actions[1].Delay = 30000;
    actions[2].Type = SC_ACTION_RESTART;
    actions[2].Delay = 60000;
    failure.dwResetPeriod = 24 * 60 * 60;
    failure.lpRebootMsg = NULL;
    failure.lpCommand = NULL;
    failure.cActions = ARRAYSIZE(actions);
    failure.lpsaActions = actions;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, &failure)) {
        fail(L"setting the service's failure actions", GetLastError());
        goto cleanup;
    }
    kept = failure_actions_kept(svc);
    /* restart also when the sender stops itself with an error, not only when it crashes */
    flag.fFailureActionsOnNonCrashFailures = TRUE;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &flag)) {
        err = GetLastError();
        if (err != ERROR_INVALID_LEVEL) {
            fail(L"setting the service's failure actions flag", err);
            goto cleanup;
        }
        flag_ok = FALSE; /* Windows has had this level since Vista; Wine does not implement it */
    }
    say(L"service:         %ls %ls: %ls, automatic start, LocalSystem, restart after 5 s, 30 s, "
        L"60 s (reset after 1 day)\n",
        PCNS_SERVICE_NAME, created ? L"created" : L"updated", binpath);
    if (!flag_ok)
        say(L"                 (this system has no SERVICE_CONFIG_FAILURE_ACTIONS_FLAG; restarts "
            L"follow crashes only)\n");
    if (!kept)
        say(L"                 (the service manager accepted the failure actions but does not "
            L"report them back; check with `sc qfailure %ls`)\n",
            PCNS_SERVICE_NAME);
    if (!sender_configured()) {
        rc = 0;
        goto cleanup;
    }
    /* configured already (an upgrade): have it running again */
    if (!service_state(svc, &status)) {
        fail(L"QueryServiceStatusEx(" PCNS_SERVICE_NAME L")", GetLastError());
        goto cleanup;
    }
    if (status.dwCurrentState == SERVICE_STOPPED) {
        if (!StartServiceW(svc, 0, NULL)) {
            err = GetLastError();
            if (err != ERROR_SERVICE_ALREADY_RUNNING) {
                fail(L"StartServiceW(" PCNS_SERVICE_NAME L"); all else is installed, start it "
                     L"with `net start " PCNS_SERVICE_NAME L"`",
                     err);
                goto cleanup;
            }
        }
        say(L"                 the sender is configured: started\n");
    }
    rc = 0;
cleanup:
    if (svc != NULL)
        CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}

static int uninstall_service(void)
{
    SC_HANDLE scm = NULL, svc = NULL;
    SERVICE_STATUS_PROCESS status;
    SERVICE_STATUS plain;
    DWORD waited = 0, err;
    int rc = 1;

    scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
    if (scm == NULL)
        return fail(L"OpenSCManagerW", GetLastError());
    svc = OpenServiceW(scm, PCNS_SERVICE_NAME, SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE);
    if (svc == NULL) {
        err = GetLastError();
        if (err == ERROR_SERVICE_DOES_NOT_EXIST) {
            say(L"service:         %ls was not installed\n", PCNS_SERVICE_NAME);
            rc = 0;
        } else {
            fail(L"OpenServiceW(" PCNS_SERVICE_NAME L")", err);
        }
        goto cleanup;
    }
    if (!service_state(svc, &status)) {
        fail(L"QueryServiceStatusEx(" PCNS_SERVICE_NAME L")", GetLastError());
        goto cleanup;
    }
    if (status.dwCurrentState != SERVICE_STOPPED) {
        if (!ControlService(svc, SERVICE_CONTROL_STOP, &plain)) {
            err = GetLastError();
            if (err != ERROR_SERVICE_NOT_ACTIVE) {
                fail(L"stopping " PCNS_SERVICE_NAME, err);
                goto cleanup;
            }
        }
        for (;;) {
            if (!service_state(svc, &status)) {
                fail(L"QueryServiceStatusEx(" PCNS_SERVICE_NAME L")", GetLastError());
                goto cleanup;
            }
            if (status.dwCurrentState == SERVICE_STOPPED)
                break;
            if (waited >= STOP_WAIT_MS) {
                fail(L"stopping " PCNS_SERVICE_NAME L" (still running after 30 s)",
                     ERROR_SERVICE_REQUEST_TIMEOUT);
                goto cleanup;
            }
            Sleep(250);
            waited += 250;
        }
        say(L"service:         %ls stopped\n", PCNS_SERVICE_NAME);
    }
    if (!DeleteService(svc)) {
        err = GetLastError();
        if (err != ERROR_SERVICE_MARKED_FOR_DELETE) {
            fail(L"DeleteService(" PCNS_SERVICE_NAME L")", err);
            goto cleanup;
        }
    }
    say(L"service:         %ls deleted\n", PCNS_SERVICE_NAME);
    rc = 0;
cleanup:
    if (svc != NULL)
        CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}

/* ---- the configuration key (--purge) ----------------------------------------------------- */

static int purge_config(BOOL purge)
{
    LSTATUS st;

    if (!purge) {
        if (RegGetValueW(HKEY_LOCAL_MACHINE, SENDER_KEY, L"Source", RRF_RT_ANY, NULL, NULL,
                         NULL) == ERROR_SUCCESS)
            say(L"configuration:   HKLM\\%ls kept (--purge deletes it)\n", SENDER_KEY);
        return 0;
    }
    st = RegDeleteTreeW(HKEY_LOCAL_MACHINE, SENDER_KEY);
    if (st != ERROR_SUCCESS && st != ERROR_FILE_NOT_FOUND)
        return fail(L"deleting HKLM\\" SENDER_KEY, (DWORD)st);
    st = RegDeleteKeyW(HKEY_LOCAL_MACHINE, PCNS_KEY); /* only when nothing else is left in it */
    if (st != ERROR_SUCCESS && st != ERROR_FILE_NOT_FOUND && st != ERROR_ACCESS_DENIED)
        return fail(L"deleting HKLM\\" PCNS_KEY, (DWORD)st);
    say(L"configuration:   HKLM\\%ls deleted (the DPAPI-protected secret with it)\n", SENDER_KEY);
    return 0;
}

/* ---- the verbs --------------------------------------------------------------------------- */

/* Where the options start: after the verb when the caller passed it (or the exe and the verb). */
static int first_option(int argc, wchar_t **argv, const wchar_t *verb)
{
    int i;
    for (i = 0; i < argc && i < 2; i++)
        if (argv[i] != NULL && _wcsicmp(argv[i], verb) == 0)
            return i + 1;
    return 0;
}

static void install_usage(void)
{
    complain(L"usage: pcns-sender.exe install [--dll PATH] [--no-reboot-note]\n"
             L"  copies pcnsflt.dll (default: beside pcns-sender.exe) to System32, creates the\n"
             L"  spool, the event source and the pcns-sender service, and adds pcnsflt to LSA's\n"
             L"  Notification Packages. Run it elevated; running it again is safe.\n");
}

static void uninstall_usage(void)
{
    complain(L"usage: pcns-sender.exe uninstall [--keep-spool] [--purge]\n"
             L"  deletes the pcns-sender service, removes pcnsflt from LSA's Notification\n"
             L"  Packages, the event source, and pcnsflt.dll (at the reboot when LSASS holds it).\n"
             L"  The spool is removed only when empty (--keep-spool keeps it anyway); --purge\n"
             L"  also deletes HKLM\\SOFTWARE\\pcns\\Sender.\n");
}

int pcns_install(int argc, wchar_t **argv)
{
    wchar_t exe[PATH_CAP], dir[PATH_CAP];
    const wchar_t *dll = NULL;
    BOOL reboot_note = TRUE;
    int i;

    for (i = first_option(argc, argv, L"install"); i < argc; i++) {
        if (wcscmp(argv[i], L"--dll") == 0 && i + 1 < argc) {
            dll = argv[++i];
        } else if (wcscmp(argv[i], L"--no-reboot-note") == 0) {
            reboot_note = FALSE;
        } else if (wcscmp(argv[i], L"--help") == 0 || wcscmp(argv[i], L"-h") == 0) {
            install_usage();
            return 0;
        } else {
            complain(L"pcns-sender install: unknown or incomplete option %ls\n", argv[i]);
            install_usage();
            return 2;
        }
    }
    if (need_admin() || exe_paths(exe, dir))
        return 1;
    pcns_enable_backup_privileges();
    if (install_dll(dll, dir) || install_spool() || install_event_source(exe) ||
        install_service(exe) || packages_edit(TRUE)) {
        complain(L"pcns-sender install: stopped; fix the cause above and run it again\n");
        return 1;
    }
    if (!sender_configured())
        say(L"next:            pcns-sender.exe configure --url ... --source ... --secret-file ... "
            L"--recipient-key-id ... --recipient-key-file ...\n");
    if (reboot_note)
        say(L"reboot this domain controller for LSA to load pcnsflt.dll\n");
    return 0;
}

int pcns_uninstall(int argc, wchar_t **argv)
{
    BOOL keep_spool = FALSE, purge = FALSE;
    int i, failed = 0;

    for (i = first_option(argc, argv, L"uninstall"); i < argc; i++) {
        if (wcscmp(argv[i], L"--keep-spool") == 0) {
            keep_spool = TRUE;
        } else if (wcscmp(argv[i], L"--purge") == 0) {
            purge = TRUE;
        } else if (wcscmp(argv[i], L"--help") == 0 || wcscmp(argv[i], L"-h") == 0) {
            uninstall_usage();
            return 0;
        } else {
            complain(L"pcns-sender uninstall: unknown option %ls\n", argv[i]);
            uninstall_usage();
            return 2;
        }
    }
    if (need_admin())
        return 1;
    pcns_enable_backup_privileges();
    /* every step is tried, so one failure does not leave the rest behind */
    failed |= uninstall_service();
    failed |= packages_edit(FALSE);
    failed |= uninstall_event_source();
    failed |= uninstall_dll();
    failed |= uninstall_spool(keep_spool);
    failed |= purge_config(purge);
    if (failed) {
        complain(L"pcns-sender uninstall: a step failed (above); fix it and run uninstall again\n");
        return 1;
    }
    say(L"reboot this domain controller to unload pcnsflt.dll from LSASS\n");
    return 0;
}
