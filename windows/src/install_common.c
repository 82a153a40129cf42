/* install_common.c: what every step of install and uninstall uses (install_internal.h): the
 * output on stdout and stderr, bounded formatting, and the configuration as the filter reads it.
 */
#include "install_internal.h"

#include <stdarg.h>
#include <stdio.h>

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

void inst_say(const wchar_t *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(STD_OUTPUT_HANDLE, fmt, ap);
    va_end(ap);
}

void inst_complain(const wchar_t *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vemit(STD_ERROR_HANDLE, fmt, ap);
    va_end(ap);
}

/* "<what>: <system message> (error N)" on stderr; returns 1, the failing exit code. */
int inst_fail(const wchar_t *what, DWORD err)
{
    wchar_t msg[512];
    DWORD n = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, err,
                             0, msg, ARRAYSIZE(msg), NULL);
    while (n > 0 && (msg[n - 1] == L'\r' || msg[n - 1] == L'\n' || msg[n - 1] == L' ' ||
                     msg[n - 1] == L'.'))
        n--;
    msg[n] = L'\0';
    inst_complain(L"pcns-sender: %ls: %ls (error %lu)\n", what, n ? msg : L"unknown error",
                  (unsigned long)err);
    return 1;
}

/* ---- small helpers ----------------------------------------------------------------------- */

BOOL inst_fmt(wchar_t *out, size_t cap, const wchar_t *format, ...)
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

BOOL inst_same_name(const wchar_t *a, int alen, const wchar_t *b)
{
    return CompareStringOrdinal(a, alen, b, -1, TRUE) == CSTR_EQUAL;
}

HANDLE inst_open_any(const wchar_t *path, DWORD access)
{
    return CreateFileW(path, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                       OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, NULL);
}

/* HKLM\SOFTWARE\pcns\Sender as the filter and the sender read it (src/config.c). The caller
 * frees it with inst_config_free(). */
pcns_config *inst_config_load(void)
{
    pcns_config *cfg = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof(*cfg));
    DWORD err;

    if (cfg == NULL) {
        inst_fail(L"reading HKLM\\" PCNS_REG_KEY, ERROR_NOT_ENOUGH_MEMORY);
        return NULL;
    }
    err = pcns_config_read(cfg);
    if (err != ERROR_SUCCESS && err != ERROR_FILE_NOT_FOUND) {
        inst_fail(L"reading HKLM\\" PCNS_REG_KEY, err);
        pcns_config_clear(cfg);
        HeapFree(GetProcessHeap(), 0, cfg);
        return NULL;
    }
    return cfg;
}

void inst_config_free(pcns_config *cfg)
{
    if (cfg == NULL)
        return;
    pcns_config_clear(cfg);
    HeapFree(GetProcessHeap(), 0, cfg);
}
